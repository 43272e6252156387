"""Reading a vLLM server's log: the first real error (not a "see above" wrapper) and its likely cause.

vLLM's processes (API server, EngineCore, workers) write into one log, with prefixes, and an error usually
surfaces three times: the root cause in a worker, then wrappers that only say "see the root cause above".
"""

from __future__ import annotations

import os
import re
from pathlib import Path

TAIL_LINES = 30

# Known failures, matched against the error lines of a server log: (pattern, what to tell the user).
_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), hint)
    for pattern, hint in (
        (r"Address already in use", "the port was taken by another process"),
        (r"No module named ['\"]?vllm", "the given Python has no vLLM installed"),
        (
            r"config\.json.*(not found|no such file|does not appear)|can't load the configuration|"
            r"Invalid repository ID or local directory",
            "the model folder is not a Hugging Face model folder (config.json missing or unreadable)",
        ),
        (
            r"Cannot find any model weights|No model weights|safetensors.*(not found|no such file)",
            "the model folder holds no weights (*.safetensors)",
        ),
        (
            r"Unknown quantization method|quantization.*(not supported|unsupported)|Unsupported quantization|"
            r"does not support.*quantiz|compressed.tensors.*(not supported|unsupported)",
            "the model's quantization scheme is not supported by this vLLM build",
        ),
        (
            r"Unsupported CPU attention configuration|head.?(size|dim).*not supported",
            "the model's attention head size is not supported (vLLM's CPU attention takes head sizes "
            "32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)",
        ),
        (
            r"less than requested memory for kv|VLLM_CPU_KVCACHE_SPACE|No available memory for the cache|"
            r"larger than the available KV cache|KV cache is needed",
            "not enough memory for the KV cache: lower kv_cache_gib or max_model_len",
        ),
        (
            r"out of memory|OutOfMemoryError|Cannot allocate memory|MemoryError|exit code: -9\b",
            "out of memory (a process was killed or an allocation failed)",
        ),
        (
            r"exit code: -4\b|Illegal instruction",
            "a worker crashed on an illegal instruction (a kernel this CPU or VM does not allow)",
        ),
        (
            r"error: (unrecognized arguments|argument|the following arguments)|invalid choice",
            "vLLM rejected a command-line argument",
        ),
        (r"lora", "a LoRA adapter or LoRA setting was rejected"),
        (r"died unexpectedly", "a vLLM process died without an error message (a crash, or the OOM killer)"),
    )
)
# A vLLM log line's "(Worker pid=1) ERROR 11-28 02:48:50 [file.py:953] " prefix; exception lines; and the
# exceptions that only say "see the root cause above".
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\) )?((DEBUG|INFO|WARNING|ERROR|CRITICAL) [^\[]*\[[^\]]*\] )?")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): .+|^\S+\.py: error: .+")
_WRAPPER_ERRORS = re.compile(
    r"Engine core initialization failed|EngineCore encountered an issue|^RuntimeError: cancelled$|"
    r"EngineDeadError|Worker failed with error"
)
_ERROR_WORDS = re.compile(r"error|exception|died|killed|fatal|illegal|address already", re.IGNORECASE)


def diagnose_log(text: str) -> tuple[str | None, str | None]:
    """The first real error in a vLLM log (not a "see above" wrapper), and its likely cause if known."""
    lines = [_LOG_PREFIX.sub("", line.rstrip()) for line in text.splitlines()]
    root = None
    for i, line in enumerate(lines):
        if _EXCEPTION_LINE.match(line) and not _WRAPPER_ERRORS.search(line):
            root = line
            if " validation error for " in line:  # pydantic puts the message on the next line
                root += ": " + next((later.strip() for later in lines[i + 1 :] if later.strip()), "")
            break
    if root is None:  # a crash leaves no exception, only a note that a worker died
        root = next((line for line in lines if "died unexpectedly" in line), None)
    evidence = ([root] if root else []) + [
        line for line in lines if _ERROR_WORDS.search(line) and "ulimit" not in line
    ]
    cause = next((hint for pattern, hint in _FAILURES if any(pattern.search(e) for e in evidence)), None)
    return root, cause


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log, indented for quoting in an error message."""
    text = read_log(path, 256 * 1024)
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"


def read_log(path: Path, max_bytes: int = 4 * 1024 * 1024) -> str:
    """The end of a log: all of it, unless it is huge."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
