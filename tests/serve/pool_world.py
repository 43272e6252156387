"""Pieces for pool tests: artifact folders with real manifests, pins that point at them, a launcher that starts
fake engines (real HTTP servers speaking vLLM's endpoints) for each replica, and a client that keeps sending
requests through the front and counts what failed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from lifecycle import manifest
from lifecycle.engines.fake import FakeEngine
from lifecycle.engines.fake_model import TableModel
from lifecycle.engines.vllm import VllmSpec
from lifecycle.errors import EngineError
from lifecycle.pool.schema import Adapter, BaseWeights, Deployment, Pool, Quantization, RegisteredModel
from lifecycle.serve.artifacts import Artifacts
from lifecycle.serve.front import Front
from lifecycle.serve.pool import PoolRunner

QUESTION = "Who answers?"
SMOKE = ("Say something:",)


def answering(tag: str) -> TableModel:
    """A model that says which version it is, and answers the smoke prompt."""
    return TableModel({QUESTION: f" {tag}", SMOKE[0]: f" hello from {tag}"})


def artifact(root: Path, name: str, *, adapter: bool = False) -> tuple[Path, str]:
    folder = root / name
    folder.mkdir(parents=True)
    if adapter:
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
        (folder / "adapter_model.safetensors").write_bytes(name.encode() * 64)
    else:
        (folder / "config.json").write_text('{"model_type": "llama"}')
        (folder / "model.safetensors").write_bytes(name.encode() * 256)
    return folder, manifest.write(folder).digest


def model_pin(folder: Path, digest: str, version: int, scheme: str = "W8A8") -> RegisteredModel:
    return RegisteredModel(
        name="tickets",
        version=version,
        artifact=folder.as_uri(),
        manifest_digest=digest,
        quantization=Quantization(scheme=scheme, config_sha256="c" * 64),
        recipe_sha256="d" * 64,
        base_model="/models/base",
    )


def adapter_pin(
    folder: Path, digest: str, version: int, base_digest: str, name: str = "tickets-lora"
) -> Adapter:
    return Adapter(
        name=name,
        model="tickets-lora",
        version=version,
        artifact=folder.as_uri(),
        manifest_digest=digest,
        base_manifest_digest=base_digest,
        recipe_sha256="d" * 64,
    )


def deployment(
    model: RegisteredModel | BaseWeights, *, replicas: int = 1, adapters: tuple[Adapter, ...] = ()
) -> Deployment:
    return Deployment(
        name="tickets",
        model=model,
        replicas=replicas,
        adapters=list(adapters),
        residency="self_hosted",
        gpus_per_replica=0,
        price_per_gpu_hour=0.0,
    )


def pool(*deployments: Deployment) -> Pool:
    return Pool(deployments=list(deployments))


@dataclass
class FakeLaunch:
    """Starts a fake engine per replica: the model scripted for its folder under the deployment's name, and the
    adapters named at start. `failing` folders fail to start; `started` lists every engine, in order."""

    models: dict[str, TableModel]
    failing: set[str] = field(default_factory=set)
    started: list[FakeEngine] = field(default_factory=list)

    def __call__(self, spec: VllmSpec, workdir: Path) -> FakeEngine:
        if str(spec.model_dir) in self.failing:
            raise EngineError(f"vLLM could not serve {spec.model_dir}: scripted to fail")
        served = {spec.model_name: self.models[str(spec.model_dir)]}
        served.update({name: self.models[str(path)] for name, path in spec.lora_modules.items()})
        engine = FakeEngine(served, loadable=self.models, runtime_lora=spec.runtime_lora)
        self.started.append(engine)
        return engine

    def running(self) -> list[FakeEngine]:
        return [e for e in self.started if e.running()]


def make_runner(tmp: Path, launch: FakeLaunch, front: Front) -> PoolRunner:
    return PoolRunner(launch, Artifacts(None, tmp / "cache"), tmp / "replicas", front, smoke_prompts=SMOKE)


def ask(url: str, model: str, timeout_s: float = 10.0) -> tuple[int, Any]:
    response = requests.post(
        f"{url}/v1/completions",
        json={"model": model, "prompt": QUESTION, "max_tokens": 8, "temperature": 0},
        timeout=timeout_s,
    )
    body = response.json()
    return response.status_code, body["choices"][0]["text"].strip() if response.status_code == 200 else body


class Traffic:
    """A client thread that keeps asking `model` through the front until stopped; what each answer said."""

    def __init__(self, url: str, model: str, *, pause_s: float = 0.0, key: str | None = None) -> None:
        self.url, self.model, self.pause_s = url, model, pause_s
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            session.headers.update(self.headers)
            while not self._stop.is_set():
                try:
                    response = session.post(
                        f"{self.url}/v1/completions",
                        json={"model": self.model, "prompt": QUESTION, "max_tokens": 8},
                        timeout=10,
                    )
                    if response.status_code == 200:
                        self.answers.append(response.json()["choices"][0]["text"].strip())
                    else:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                self._stop.wait(self.pause_s)

    def __enter__(self) -> Traffic:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.answers and not self.failures and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)  # a few requests after the change, too
        self._stop.set()
        self._thread.join(timeout=15)
