"""What every command needs, built once at the CLI edge from the settings: the Python API and the terminal."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.cli.output import console
from lifecycle.settings import Settings, load_settings

if TYPE_CHECKING:
    from lifecycle.api import Lifecycle
    from lifecycle.recipe.load import LoadedRecipe


@dataclass
class Context:
    settings: Settings
    project_dir: Path = field(default_factory=Path.cwd)

    @cached_property
    def api(self) -> Lifecycle:
        from lifecycle.api import Lifecycle

        return Lifecycle(
            self.settings, project_dir=self.project_dir, say=lambda line: console.print(line, markup=False)
        )

    def check_store(self) -> None:
        """Exit 2 naming the URI when the MLflow store cannot be reached: seconds, not the client's minutes of
        retries. Writes nothing."""
        from lifecycle.preflight import check_tracking_store

        check_tracking_store(self.settings.tracking_uri)

    def dry_run(self, loaded: LoadedRecipe) -> None:
        from lifecycle.launch.sky_launch import dry_run
        from lifecycle.recipe.schema import SkyLaunch
        from lifecycle.runs import new_run_id

        launch = loaded.recipe.launch
        dry_run(
            loaded,
            console,
            run_dir=self.settings.runs_dir / new_run_id(loaded.recipe.name),
            secrets={"HF_TOKEN": self.settings.hf_token} if self.settings.hf_token else {},
            expected_hours=launch.expected_hours if isinstance(launch, SkyLaunch) else None,
        )


def load_context() -> Context:
    # MLflow sends usage telemetry unless told not to; a platform for data-residency-bound teams turns it off
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # one progress display (ours): the libraries' per-file bars only bury the stage lines
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # the libraries' tqdm bars (loading weights, writing shards, compressing) too, here and in the worker
    os.environ.setdefault("TQDM_DISABLE", "1")
    return Context(settings=load_settings())
