"""Settings read once, at the CLI edge, and passed down. Nothing below the CLI reads the environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path  # where generated state lives: MLflow store, run directories, model cache
    tracking_uri: str  # MLflow; default: sqlite inside `home`, artifacts beside it
    runs_dir: Path
    cache_dir: Path
    serve_python: Path  # the interpreter of the serving environment (vLLM)
    hf_token: str | None = None  # forwarded to cloud training nodes (gated hub models); never logged
    github_token: str | None = None  # opens promotion pull requests; never logged
    github_api_url: str = "https://api.github.com"  # GitHub Enterprise: https://HOST/api/v3
    github_repository: str | None = None  # owner/name; default: read from the git remote's URL

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"


def load_settings(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Resolve settings from the environment (LIFECYCLE_HOME, MLFLOW_TRACKING_URI, LIFECYCLE_SERVE_PYTHON, HF_TOKEN,
    GITHUB_TOKEN, GITHUB_API_URL, GITHUB_REPOSITORY)."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    home = Path(env.get("LIFECYCLE_HOME", cwd / "mlruns")).resolve()
    tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    serve_python = Path(env.get("LIFECYCLE_SERVE_PYTHON", cwd / ".venv-serve" / "bin" / "python"))
    if not serve_python.is_absolute():
        serve_python = (cwd / serve_python).absolute()
    return Settings(
        home=home,
        tracking_uri=tracking,
        runs_dir=home / "runs",
        cache_dir=home / "cache",
        serve_python=serve_python,
        hf_token=env.get("HF_TOKEN") or None,
        github_token=env.get("GITHUB_TOKEN") or None,
        github_api_url=env.get("GITHUB_API_URL") or "https://api.github.com",
        github_repository=env.get("GITHUB_REPOSITORY") or None,
    )


def main_python() -> Path:
    return Path(sys.executable)
