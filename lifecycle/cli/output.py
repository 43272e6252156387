"""Terminal output shared by the commands."""

from __future__ import annotations

import sys

from rich.console import Console

# Logs and CI are not terminals: give tables room there instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, width=_WIDTH)
console_err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
