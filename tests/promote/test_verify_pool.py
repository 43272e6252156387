"""`lifecycle verify serving/pool.yaml` (CI on a promotion's pull request) against a real MLflow store: every
problem names the deployment and the line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from promote_world import Store, cli_env

from lifecycle.pool import pins
from lifecycle.pool.load import parse_pool
from lifecycle.pool.verify import verify_pool
from lifecycle.promote import edit
from lifecycle.promote.versions import RegisteredVersions

REPO = Path(__file__).parents[2]


def deployment(name: str, pin: dict[str, object], residency: str = "self_hosted") -> dict[str, object]:
    extra = {"region": "eu-west-1"} if residency == "rented" else {}
    return {"name": name, "model": pin, "residency": residency, **extra, "price_per_gpu_hour": 1.0}


def write_pool(path: Path, deployments: list[dict[str, object]]) -> Path:
    data = edit.yaml().load("# pool under test\ndeployments: []\n")
    for d in deployments:
        edit.add_deployment(data, d)
    path.write_text(edit.dump(data))
    return path


def pin(store: Store, key: str, **changes: object) -> dict[str, object]:
    values = pins.model_pin(store.versions[key]).model_dump(mode="json")
    values.update(changes)
    return values


def verify(store: Store, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifecycle.cli.app", "verify", str(path)],
        capture_output=True,
        text=True,
        env=cli_env(store),
        cwd=REPO,
    )


def test_verify_passes_a_good_pool_and_names_every_bad_pin_by_line(store: Store, tmp_path: Path) -> None:
    good = write_pool(tmp_path / "good.yaml", [deployment("support", pin(store, "support v2"))])
    out = verify(store, good)
    assert out.returncode == 0, out.stderr
    assert f"ok {good}: every pinned version (1) matches {store.uri}" in out.stdout

    bad = write_pool(
        tmp_path / "bad.yaml",
        [
            deployment("support", pin(store, "support v2")),
            deployment("wrong-digest", pin(store, "support v1", manifest_digest="0" * 64)),
            deployment("failed", pin(store, "support v3")),
            deployment("missing", pin(store, "support v1", version=99)),
            deployment("flipped", pin(store, "flipped v1")),
        ],
    )
    lines = bad.read_text().splitlines()

    def line_of(text: str, after: str) -> int:
        start = lines.index(f"  - name: {after}")
        return next(i for i in range(start, len(lines)) if lines[i].strip().startswith(text)) + 1

    out = verify(store, bad)
    assert out.returncode == 2, out.stdout
    problems = out.stderr.splitlines()
    digest = store.versions["support v1"].tags[pins.DIGEST]
    assert problems[0] == (
        f"{bad}:{line_of('manifest_digest:', 'wrong-digest')}: deployments.1.model.manifest_digest: deployment "
        f"'wrong-digest': pinned '{'0' * 64}', but support v1 has '{digest}'"
    )
    assert problems[1].startswith(
        f"{bad}:{line_of('version:', 'failed')}: deployments.2.model.version: deployment 'failed': support v3 "
        "failed its gate"
    )
    assert problems[2] == (
        f"{bad}:{line_of('version:', 'missing')}: deployments.3.model.version: deployment 'missing': support v99 "
        f"is not a registered version in {store.uri}"
    )
    assert problems[3].startswith(
        f"{bad}:{line_of('artifact:', 'flipped')}: deployments.4.model.artifact: deployment 'flipped': "
    )
    assert "changed: model.safetensors" in problems[3]
    assert len(problems) == 4, problems


def test_residency_and_adapter_pins(store: Store, tmp_path: Path) -> None:
    """A version whose data must stay self-hosted cannot be pinned on rented GPUs; adapter pins are checked too."""
    record = store.versions["support v2"]
    held = type(record)(**{**record.__dict__, "tags": {**record.tags, pins.RESIDENCY: "self_hosted"}})
    lora = store.versions["tickets-lora v1"]

    class Versions:
        def find(self, name: str, version: str) -> pins.Version | None:
            if (name, version) == ("support", "2"):
                return held
            return RegisteredVersions(store.registry).find(name, version)

    adapter = pins.adapter_pin(lora, "tickets").model_dump(mode="json")
    base = {"kind": "base", "source": "builtin:tiny-llama", "manifest_digest": store.base_digest}
    path = write_pool(
        tmp_path / "pool.yaml",
        [
            deployment("support", pin(store, "support v2"), residency="rented"),
            {**deployment("tiny", base), "adapters": [{**adapter, "recipe_sha256": "1" * 64}]},
        ],
    )
    loaded = parse_pool(path.read_text(), path)
    problems = verify_pool(loaded, Versions())
    assert len(problems) == 2, problems
    assert (
        ": deployments.0.residency: deployment 'support': support v2 may only serve self_hosted"
        in problems[0]
    )
    assert ": deployments.1.adapters.0.recipe_sha256: deployment 'tiny': pinned '1111" in problems[1]
