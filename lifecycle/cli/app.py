"""The `lifecycle` command. This file only registers commands; each lives in its own module."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from lifecycle.cli import doctor, jobs, runs, stages, train, validate, worker
from lifecycle.cli.output import console_err
from lifecycle.errors import LifecycleError

app = typer.Typer(
    name="lifecycle",
    help="Fine-tune, quantize, gate, register and serve open-weight models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("validate")(validate.validate)
app.command("train")(train.train)
app.command("quantize")(stages.quantize)
app.command("gate")(stages.gate)
app.command("register")(stages.register)
app.command("runs")(runs.runs)
app.command("doctor")(doctor.doctor)
app.command("ui")(runs.ui)
app.add_typer(jobs.app, name="jobs")
app.add_typer(worker.app, name="worker", hidden=True)


def main() -> None:
    """Entry point: user errors print one message (no traceback) and exit with their code (2 for bad input)."""
    try:
        app()
    except LifecycleError as exc:
        console_err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console_err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
