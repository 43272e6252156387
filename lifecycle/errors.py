"""Every error the platform raises on purpose. The CLI turns these into a message and an exit code."""

from __future__ import annotations


class LifecycleError(Exception):
    """Base class: a failure the user can act on. Printed without a traceback."""

    exit_code = 1


class UserInputError(LifecycleError):
    """Bad input (a recipe, a path, an override): nothing was started. Exit code 2."""

    exit_code = 2


class RecipeError(UserInputError):
    """A recipe or config file failed validation; carries every problem found, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class ManifestError(LifecycleError):
    """A model directory does not match its manifest (changed, missing or extra files)."""


class StageError(LifecycleError):
    """A stage could not run or its result failed a check (training crashed, a merge disagrees...)."""


class MissingResultError(StageError):
    """A stage was asked to continue from a run directory that lacks the earlier stage's result."""


class EngineError(LifecycleError):
    """A model server could not be started, answered badly, or died."""


class LaunchError(LifecycleError):
    """The launcher (local or SkyPilot) could not start or finish a job."""


class NoCloudError(LaunchError):
    """SkyPilot has no cloud enabled."""


class GateError(LifecycleError):
    """The gate could not be evaluated (bad task, missing data, a metric a task does not produce)."""


class RegistryError(LifecycleError):
    """The model registry refused an operation."""


class PromotionRefused(UserInputError):
    """The version may not be promoted, or not from here (a failed gate, a dirty pool file...): nothing was
    written. Exit code 2."""


class PromotionFailed(LifecycleError):
    """A step with an outside system failed (git push, GitHub); the message says what was left where."""


class ServeError(LifecycleError):
    """The serving pool could not serve what it was asked to (an artifact gone or changed, a server that would
    not start or answer): what ran before keeps running."""


class RolloutFailed(ServeError):
    """A change to the running pool failed its checks and was reverted: the pool serves what it served before."""


class PoolBusy(UserInputError):
    """Another apply holds the pool, or a pool already runs here: nothing was changed. Exit code 2."""


class AliasConflict(RegistryError):
    """A registry alias is not what the pool file's history says it must be (someone moved it by hand): nothing
    was overwritten."""


class AuditLogError(LifecycleError):
    """The audit log cannot be appended to or read as one unbroken chain (a torn or altered tail, a file that
    is not an audit log), or an export's signature does not hold: nothing was written."""
