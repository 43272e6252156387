"""`lifecycle promote --help` is instant: no torch, numpy, MLflow or lm-eval (tests/test_structure.py checks
the other commands the same way)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "torch",
    "transformers",
    "numpy",
    "scipy",
    "mlflow",
    "lm_eval",
    "llmcompressor",
    "trl",
    "peft",
    "sky",
)


def test_promote_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['lifecycle', 'promote', '--help']\n"
        "from lifecycle.cli.app import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.split() == []
    assert "pull request" in out.stdout
