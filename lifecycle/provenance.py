"""Where a result came from: the project's git commit and the versions of the libraries that made it."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

TRACKED_LIBRARIES = (
    "lifecycle",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "llmcompressor",
    "compressed-tensors",
    "lm-eval",
    "mlflow",
    "skypilot",
)


def library_versions(names: tuple[str, ...] = TRACKED_LIBRARIES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_commit(cwd: Path) -> str:
    """HEAD's sha, with '+dirty' when tracked files changed; 'unknown' outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")
