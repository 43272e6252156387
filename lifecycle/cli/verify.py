"""`lifecycle verify RUN`: re-hash every file of a run's weights against their manifests (stages trust size and
modification time; this reads every byte). `lifecycle verify serving/pool.yaml`: check the pool's pins against the
registry (lifecycle.cli.pool)."""

from __future__ import annotations

import typer
from rich.table import Table

from lifecycle.cli.output import console


def verify(
    run: str = typer.Argument("latest", help="Run id, run folder, or 'latest'; or a pool file (.yaml)."),
    live: bool = typer.Option(
        False,
        "--live",
        help="For a pool file: instead of the pins, compare it with the registry's production aliases and the "
        "pool running here; exit 1 on drift (changes nothing).",
    ),
    base: str | None = typer.Option(
        None,
        "--base",
        help="For a pool file: the git ref whose pool the SkyServe service files are diffed against (default: the "
        "merge-base with origin/main, else HEAD).",
    ),
) -> None:
    """Re-hash the run's model folders (merged, adapter, quantized) and committed checkpoints; exit 1 on any
    changed, missing or unexpected file. Given a pool file (serving/pool.yaml): check that every pinned version
    exists, passed its gate and matches its pins, and the residency rules; exit 2 on any problem. With --live: the
    drift alarm instead, the file against the registry's production aliases and the running pool; exit 1 on drift."""
    from pathlib import Path

    if run.endswith((".yaml", ".yml")) and Path(run).is_file():
        if live:
            from lifecycle.cli.drift import check_drift

            check_drift(Path(run))
            return
        from lifecycle.cli.pool import verify_pool

        verify_pool(Path(run), base=base)
        return
    if live:
        from lifecycle.errors import UserInputError

        raise UserInputError("--live compares a pool file (serving/pool.yaml) with what runs; not a run")
    import time

    from lifecycle import manifest
    from lifecycle.errors import ManifestError
    from lifecycle.runs import resolve_run
    from lifecycle.settings import load_settings

    run_dir = resolve_run(load_settings().runs_dir, run)
    folders = sorted(p.parent for p in run_dir.path.rglob(manifest.MANIFEST_NAME))
    table = Table(title=f"weights of {run_dir.path.name}, every byte re-hashed")
    for col in ("folder", "files", "MB", "s", "result"):
        table.add_column(col)
    failed = []
    for folder in folders:
        exclude = (manifest.MANIFEST_NAME, "COMMITTED") if (folder / "COMMITTED").exists() else ()
        started = time.monotonic()
        try:
            checked = manifest.verify(folder, exclude or (manifest.MANIFEST_NAME,), full=True)
            result = "[green]ok[/]"
            files, size = len(checked.files), checked.total_bytes
        except ManifestError as exc:
            failed.append(str(exc))
            result, files, size = "[red]differs[/]", 0, 0
        table.add_row(
            str(folder.relative_to(run_dir.path)),
            str(files or "-"),
            f"{size / 1e6:.1f}" if size else "-",
            f"{time.monotonic() - started:.1f}",
            result,
        )
    console.print(table)
    for problem in failed:
        console.print(f"[red]{problem}[/]", markup=True)
    if not folders:
        console.print(f"{run_dir.path}: no weights with a manifest yet")
    if failed:
        raise typer.Exit(1)
