"""`lifecycle verify serving/pool.yaml --live`: the drift alarm. Compares the pool file with the registry's
`production` aliases and with the pool running on this machine (lifecycle.pool.drift); changes nothing."""

from __future__ import annotations

from pathlib import Path

import typer

from lifecycle.cli.output import console, console_err


def check_drift(path: Path) -> None:
    """Print every disagreement; exit 1 when there is drift, 0 when none, 2 when the file is invalid."""
    from lifecycle.cli.context import load_context
    from lifecycle.cli.pool import load_or_exit
    from lifecycle.pool.drift import drift
    from lifecycle.serve.control import running_pool

    loaded = load_or_exit(path)
    ctx = load_context()
    ctx.check_store()
    registry = ctx.api.registry
    running = running_pool(ctx.settings)
    if running is None:
        console.print(
            "note: no pool runs on this machine (`lifecycle serve`); only the registry's aliases are compared",
            markup=False,
            soft_wrap=True,
        )
    found = drift(loaded.pool, registry.all_aliases(), running)
    for line in found:
        console_err.print(f"drift: {line}", markup=False, soft_wrap=True)
    if found:
        raise typer.Exit(1)
    compared = "the registry's aliases" + ("" if running is None else " and the running pool")
    console.print(
        f"[green]ok[/] {path}: {compared} agree with it ({registry.tracker.tracking_uri})", soft_wrap=True
    )
