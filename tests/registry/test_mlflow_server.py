"""The registry client against a real `mlflow server` (what a team runs, with Postgres behind it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from lifecycle import manifest
from lifecycle.registry.models import Registry
from lifecycle.registry.tracking import Tracker

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'store.db'}",
            "--artifacts-destination",
            str(root / "art"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("mlflow server exited:\n" + (root / "server.log").read_text()[-3000:])
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        os.killpg(proc.pid, 9)
        pytest.fail("mlflow server did not answer /health in 180 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_register_alias_and_download_through_a_server(mlflow_server: str, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"quantization_config": {"quant_method": "compressed-tensors"}}')
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    written = manifest.write(model)

    tracker = Tracker(mlflow_server)
    registry = Registry(tracker)
    run_id = tracker.start_run("server-test", "r1", {"lifecycle.recipe": "t"})
    version = registry.register(
        "server-model", run_id, model, {"lifecycle.gate": "passed"}, "desc", "candidate"
    )
    assert version.version == "1"
    assert registry.by_alias("server-model", "candidate") is not None
    assert registry.by_alias("server-model", "production") is None
    fetched = registry.download("server-model", "candidate", tmp_path / "fetched")
    assert manifest.verify(fetched).digest == written.digest
    assert registry.get("server-model", "1").tags["lifecycle.gate"] == "passed"
