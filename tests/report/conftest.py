"""The report tests' fixtures; the traffic they share is in report_world.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_world import write_traffic


@pytest.fixture
def audit_log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_traffic(path)
    return path
