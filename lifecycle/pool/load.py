"""Load `serving/pool.yaml` with the recipe loader's machinery: YAML with line numbers, every error at once as
`FILE:LINE: field.path: message`, did-you-mean for typos; then the rules that span deployments."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml.comments import CommentedMap

from lifecycle.errors import RecipeError
from lifecycle.pool.schema import Deployment, Pool
from lifecycle.recipe.load import origin_of, parse_yaml, read_text, validate_model

TOP_LEVEL_KEY = "deployments"


@dataclass(frozen=True)
class LoadedPool:
    """A validated pool file, with the parsed YAML kept so later checks can name lines."""

    pool: Pool
    path: Path
    text: str
    data: CommentedMap

    def where(self, *loc: str | int) -> str:
        """`FILE:LINE` of the value at `loc` (the deepest part of it present in the file)."""
        return origin_of(self.data, tuple(loc), self.path)

    def problem(self, loc: tuple[str | int, ...], message: str) -> str:
        """One located problem, formatted like a schema error."""
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        return f"{self.where(*loc)}: {dotted}: {message}"


def load_pool(path: str | Path) -> LoadedPool:
    """Read and validate a pool file. Raises RecipeError listing every problem."""
    path = Path(path)
    return parse_pool(read_text(path), path)


def parse_pool(text: str, path: Path) -> LoadedPool:
    """Validate pool YAML `text` as if read from `path` (a promotion checks its edit before writing it)."""
    data = parse_yaml(path, text)
    pool, problems = validate_model(Pool, data, path)
    if pool is None:
        raise RecipeError(problems)
    loaded = LoadedPool(pool=pool, path=path, text=text, data=data)
    problems = cross_checks(loaded)
    if problems:
        raise RecipeError(problems)
    return loaded


def is_pool_file(path: Path) -> bool:
    """True for a YAML file whose top level has `deployments`: how `lifecycle validate` tells a pool from a
    recipe. A file that cannot be parsed is not one (the recipe loader then reports why)."""
    try:
        data = parse_yaml(path, read_text(path))
    except RecipeError:
        return False
    return TOP_LEVEL_KEY in data


def cross_checks(loaded: LoadedPool) -> list[str]:
    """Rules no single field can state: unique served names, adapters on the weights they were trained on,
    a region for rented GPUs."""
    pool = loaded.pool
    problems = []
    names = Counter(name for d in pool.deployments for name in d.served_names)
    seen: set[str] = set()
    for i, deployment in enumerate(pool.deployments):
        loc: tuple[str | int, ...] = ("deployments", i)
        if names[deployment.name] > 1 and deployment.name in seen:
            problems.append(
                loaded.problem((*loc, "name"), f"{deployment.name!r} is already served: names must be unique")
            )
        seen.add(deployment.name)
        for j, adapter in enumerate(deployment.adapters):
            at = (*loc, "adapters", j)
            if names[adapter.name] > 1 and adapter.name in seen:
                problems.append(
                    loaded.problem((*at, "name"), f"{adapter.name!r} is already served: names must be unique")
                )
            seen.add(adapter.name)
            if adapter.base_manifest_digest != deployment.model.manifest_digest:
                problems.append(
                    loaded.problem(
                        (*at, "base_manifest_digest"),
                        f"adapter {adapter.name!r} was trained on weights {adapter.base_manifest_digest[:12]}…, "
                        f"but deployment {deployment.name!r} serves {deployment.model.manifest_digest[:12]}…: an "
                        "adapter rides only on the deployment serving its base",
                    )
                )
        problems += _residency(loaded, loc, deployment)
    return problems


def _residency(loaded: LoadedPool, loc: tuple[str | int, ...], deployment: Deployment) -> list[str]:
    if deployment.residency == "rented" and deployment.region is None:
        return [
            loaded.problem(
                (*loc, "residency"),
                f"deployment {deployment.name!r} is rented: name its region (region: eu-west-1, ...) so "
                "the router and the residency report know where its data goes",
            )
        ]
    return []
