"""A byte flipped in a weight file is refused before quantize, the gate and registration; `lifecycle verify`
re-hashes every byte even where the modification time was put back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.errors import ManifestError
from lifecycle.quantize.stage import Quantize
from lifecycle.results import QuantizeResult
from lifecycle.runner import OpenRun, run_stage
from lifecycle.runs import RunDir, TrainResult

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "lifecycle")


def flipped_copy(run: RunDir, target: Path, *, keep_mtime: bool) -> Path:
    """A copy of a trained run with one byte of its merged weights flipped; returns the weight file."""
    shutil.copytree(run.path, target, ignore=shutil.ignore_patterns("quantize", "chain", "gate", "engines"))
    for stage in ("quantize", "chain", "gate", "register"):
        (target / "results" / f"{stage}.json").unlink(missing_ok=True)
    train = RunDir(target).load("train", TrainResult)
    model = target / "train" / "model"
    RunDir(target).save("train", train.model_copy(update={"model_dir": str(model)}))
    weights = next(model.glob("*.safetensors"))
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return weights


def test_a_flipped_byte_in_the_merged_weights_stops_quantize(lora_run: RunDir, tmp_path: Path) -> None:
    weights = flipped_copy(lora_run, tmp_path / "flipped", keep_mtime=False)
    with pytest.raises(ManifestError, match=f"changed: {weights.name}"):
        _quantize(RunDir(tmp_path / "flipped"))
    assert not (tmp_path / "flipped" / "results" / "quantize.json").exists()


def test_verify_reads_every_byte(lora_run: RunDir, tmp_path: Path) -> None:
    env = {**os.environ, "LIFECYCLE_HOME": str(tmp_path)}
    clean = subprocess.run([CLI, "verify", str(lora_run.path)], capture_output=True, text=True, env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "train/model" in clean.stdout and "differs" not in clean.stdout
    # same size, modification time put back: only a full re-hash can see it
    weights = flipped_copy(lora_run, tmp_path / "flipped", keep_mtime=True)
    bad = subprocess.run([CLI, "verify", str(tmp_path / "flipped")], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert f"changed: {weights.name}" in bad.stdout and "Traceback" not in bad.stdout + bad.stderr


def _quantize(run: RunDir) -> QuantizeResult:
    """The quantize stage on `run`, recording nowhere (a copied run shares its MLflow run with the original)."""
    return run_stage(Quantize(), OpenRun.open(run, None))
