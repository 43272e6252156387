"""Real pieces for promotion tests (fixtures registered by conftest.py): an MLflow sqlite store with versions
registered the way the register stage registers them (its lineage tags and description), a git repository with
a bare remote, and a stand-in for GitHub's pull-request endpoint that checks what the client sends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lifecycle import manifest
from lifecycle.registry.models import Registry, VersionRecord
from lifecycle.registry.tracking import Tracker
from lifecycle.results import Baseline, Cost, DataStats, RuleResult, Verdict

REPO = Path(__file__).parents[2]
TOKEN = "ghp_test_token"
OWNER_REPO = "acme/models"


# ------------------------------------------------------------------------------------------------ registry


def tiny_artifact(folder: Path, seed: int, *, adapter: bool = False) -> str:
    """A model (or LoRA adapter) folder with a manifest; returns its digest."""
    folder.mkdir(parents=True)
    if adapter:
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
        (folder / "adapter_model.safetensors").write_bytes(bytes(range(seed, seed + 200)) * 8)
    else:
        (folder / "config.json").write_text('{"quantization_config": {"quant_method": "compressed-tensors"}}')
        (folder / "model.safetensors").write_bytes(bytes((seed * 7 + i) % 256 for i in range(4096)))
    return manifest.write(folder).digest


def registration(
    digest: str, *, passed: bool, base_digest: str, scheme: str = "W8A8", run_id: str = "run-1"
) -> tuple[dict[str, str], str]:
    """Tags and description exactly as the register stage makes them (lineage_tags, describe)."""
    from lifecycle.registry.stage import describe, lineage_tags

    rule = RuleResult(
        task="support-tickets",
        rule="improve",
        metric="exact_match",
        reference="baseline",
        higher_is_better=True,
        n=40,
        candidate=0.8 if passed else 0.3,
        baseline=0.3,
        delta=0.5 if passed else 0.0,
        ci_low=0.35,
        ci_high=0.65,
        confidence=0.95,
        p_value=0.0001,
        wins=20,
        losses=0,
        threshold=0.05,
        status="pass" if passed else "fail",
        reason="improved" if passed else "no improvement",
    )
    verdict = Verdict(passed=passed, rules=[rule], seed=0)
    gate = SimpleNamespace(verdict=verdict, passed=passed, baseline=Baseline(kind="base", model_dir="/m"))
    trained = SimpleNamespace(
        base_model_dir="/models/tiny-llama",
        base_manifest_digest=base_digest,
        method="lora",
        manifest_digest="e" * 64,
        cost=Cost(),
        launch={"kind": "local"},
        data={"train": DataStats(path="train.jsonl", sha256="f" * 64, rows=100)},
        steps=200,
        eval_accuracy=0.8,
        base_eval_accuracy=0.3,
    )
    quantized = SimpleNamespace(
        manifest_digest=digest, scheme=scheme, config_sha256="c" * 64, bytes_after=4096
    )
    info = SimpleNamespace(run_id=run_id, recipe_name="demo-tickets", recipe_sha256="d" * 64)
    run_dir = SimpleNamespace(info=lambda: info)
    tags = lineage_tags(run_dir, trained, quantized, gate, "vllm 0.0-test")  # type: ignore[arg-type]
    tags["lifecycle.git_commit"] = "0" * 40
    return tags, describe("demo-tickets", "support tickets", trained, quantized, gate)  # type: ignore[arg-type]


@dataclass
class Store:
    uri: str
    registry: Registry
    base_digest: str
    versions: dict[str, VersionRecord] = field(default_factory=dict)

    def register(self, name: str, folder: Path, tags: dict[str, str], description: str) -> VersionRecord:
        run_id = self.registry.tracker.start_run("promote-tests", name, {})
        record = self.registry.register(name, run_id, folder, tags, description, "candidate")
        self.versions[f"{name} v{record.version}"] = record
        return record


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """support v1, v2 (passed), v3 (failed its gate); nogate v1 (no lineage); flipped v1 (a byte changed in the
    store after registering); tickets-lora v1 (a passing LoRA adapter on the base weights)."""
    root = tmp_path_factory.mktemp("promote-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry = Registry(Tracker(uri, root / "artifacts"))
    base_digest = tiny_artifact(root / "base", 99)
    s = Store(uri=uri, registry=registry, base_digest=base_digest)
    for i, passed in ((1, True), (2, True), (3, False)):
        digest = tiny_artifact(root / f"support-{i}", i)
        s.register(
            "support", root / f"support-{i}", *registration(digest, passed=passed, base_digest=base_digest)
        )
    s.register("nogate", root / "support-1", {"lifecycle.note": "registered by hand"}, "")
    digest = tiny_artifact(root / "flipped", 4)
    record = s.register(
        "flipped", root / "flipped", *registration(digest, passed=True, base_digest=base_digest)
    )
    stored = Path(record.source.removeprefix("file://")) / "model.safetensors"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0x01
    stored.write_bytes(bytes(data))
    digest = tiny_artifact(root / "lora", 5, adapter=True)
    s.register("tickets-lora", root / "lora", *registration(digest, passed=True, base_digest=base_digest))
    return s


# ------------------------------------------------------------------------------------------------ git


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@dataclass(frozen=True)
class Checkout:
    work: Path
    remote: Path

    @property
    def pool(self) -> Path:
        return self.work / "serving" / "pool.yaml"

    def remote_ref(self, branch: str) -> str | None:
        done = subprocess.run(
            [
                "git",
                "--git-dir",
                str(self.remote),
                "rev-parse",
                "--verify",
                "--quiet",
                f"refs/heads/{branch}",
            ],
            capture_output=True,
            text=True,
        )
        return done.stdout.strip() or None


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    """A clone with the shipped serving/pool.yaml committed on main, and its bare remote `origin`."""
    remote = tmp_path / "remote.git"
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    git(work, "config", "user.name", "Test Person")
    git(work, "config", "user.email", "person@example.com")
    (work / "serving").mkdir()
    shutil.copy(REPO / "serving" / "pool.yaml", work / "serving" / "pool.yaml")
    (work / "README.md").write_text("models\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "start")
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "-q", "origin", "main")
    return Checkout(work=work, remote=remote)


# ------------------------------------------------------------------------------------------------ GitHub


@dataclass
class GitHubStandIn:
    url: str
    pulls: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    """POST /repos/{owner}/{repo}/pulls as GitHub answers it: 401 without the token, 422 for missing fields or
    a second pull request from the same head, else 201 with the pull request."""
    state = GitHubStandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            state.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw})
            if self.path != f"/repos/{OWNER_REPO}/pulls":
                return self._send(404, {"message": "Not Found"})
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._send(401, {"message": "Bad credentials"})
            if self.headers.get("Accept") != "application/vnd.github+json":
                return self._send(415, {"message": "Unsupported Media Type"})
            try:
                body = json.loads(raw)
            except ValueError:
                return self._send(400, {"message": "Problems parsing JSON"})
            missing = [
                k for k in ("head", "base", "title") if not isinstance(body.get(k), str) or not body[k]
            ]
            if missing:
                errors = [{"resource": "PullRequest", "field": k, "code": "missing_field"} for k in missing]
                return self._send(422, {"message": "Validation Failed", "errors": errors})
            if any(p["head"]["ref"] == body["head"] for p in state.pulls):
                owner = OWNER_REPO.split("/")[0]
                error = {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"A pull request already exists for {owner}:{body['head']}.",
                }
                return self._send(422, {"message": "Validation Failed", "errors": [error]})
            number = len(state.pulls) + 1
            pull = {
                "number": number,
                "state": "open",
                "html_url": f"https://github.com/{OWNER_REPO}/pull/{number}",
                "title": body["title"],
                "body": body.get("body"),
                "head": {"ref": body["head"]},
                "base": {"ref": body["base"]},
            }
            state.pulls.append(pull)
            self._send(201, pull)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def cli_env(store: Store, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    return {**env, "MLFLOW_TRACKING_URI": store.uri, "MLFLOW_DISABLE_TELEMETRY": "true", **more}
