"""A rich progress bar for training: steps, loss and ETA."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lifecycle.cli.output import console


class TrainProgress:
    """Receives begin/advance/loss from the trainer's callback; a plain line per log when not on a terminal."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._step = 0

    def begin(self, total: int, done: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=done, loss="-")
        if done:
            console.print(f"resumed at step {done} of {total}")

    def advance(self, step: int) -> None:
        self._step = step
        if self._task is not None:
            self._progress.update(self._task, completed=step)

    def loss(self, value: float) -> None:
        if self._task is not None:
            self._progress.update(self._task, loss=f"{value:.4f}")
        if not console.is_terminal:
            console.print(f"step {self._step}: loss {value:.4f}")

    def close(self) -> None:
        self._progress.stop()
