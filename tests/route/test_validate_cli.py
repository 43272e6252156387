"""`lifecycle validate` on routing policies: the shipped one passes, a bad one is refused with every problem
located and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifecycle.cli.app", "validate", *map(str, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_the_shipped_policy_validates() -> None:
    done = validate(REPO / "serving" / "routing.yaml")
    assert done.returncode == 0, done.stderr
    assert "ok " in done.stdout and "routing:" in done.stdout


def test_a_bad_policy_is_refused_with_every_problem_located(tmp_path: Path) -> None:
    bad = tmp_path / "routing.yaml"
    bad.write_text(
        (REPO / "serving" / "routing.yaml").read_text().replace("routes:", "routs:", 1) + "\nbogus: 1\n"
    )
    done = validate(bad)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert any(f"{bad}:" in line and "routs" in line and "did you mean 'routes'" in line for line in lines), (
        lines
    )
    assert any("bogus" in line for line in lines), lines
    assert "Traceback" not in done.stderr
