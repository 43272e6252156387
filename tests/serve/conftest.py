"""Pool tests reuse the promotion tests' registry helpers (tests/promote/promote_world.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "promote"))
