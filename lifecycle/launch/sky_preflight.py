"""Checks before a SkyPilot launch: what SkyPilot (or a node) would refuse later, reported now like any recipe
error, every problem at once, as `FILE:LINE: field: message`.

- the accelerator is one SkyPilot knows (its catalog; offline, the GPU list it ships), and with a catalog,
  some cloud in the recipe's placements offers that many per node;
- the bucket is a URI SkyPilot can mount; the base model is no folder on this machine; every data file the
  node will read (train, eval, each `data.mix` source) exists.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.errors import RecipeError
from lifecycle.launch.sky_client import Offer, SkyBackend
from lifecycle.launch.sky_task import accelerator_spec, infra
from lifecycle.recipe.load import LoadedRecipe, data_files, locate
from lifecycle.recipe.schema import SkyLaunch


@dataclass
class OfferCache:
    """Catalog offers, looked up once per (accelerator, count, spot, cloud, region)."""

    backend: SkyBackend
    seen: dict[tuple[str, int, bool, str | None, str | None], list[Offer] | None] = field(
        default_factory=dict
    )

    def lookup(
        self, name: str, count: int, spot: bool, cloud: str | None, region: str | None
    ) -> list[Offer] | None:
        key = (name, count, spot, cloud, region)
        if key not in self.seen:
            self.seen[key] = self.backend.offers(name, count, use_spot=spot, cloud=cloud, region=region)
        return self.seen[key]


def preflight(loaded: LoadedRecipe, backend: SkyBackend, offers: OfferCache, run_dir: Path) -> str:
    """Every problem SkyPilot (or a node) would hit later, reported now as recipe errors. Returns what vouched
    for the accelerator name: "catalog", or "bundled" when the catalog cannot be read (offline)."""
    recipe = loaded.recipe
    launch = recipe.launch
    assert isinstance(launch, SkyLaunch)
    problems = []
    name, count = accelerator_spec(launch.accelerators)
    known = backend.accelerator_names()
    canonical = {n.lower(): n for n in known.names}
    if name.lower() not in canonical and not name.lower().startswith("tpu-"):
        guess = difflib.get_close_matches(name, list(known.names), n=3, cutoff=0.5)
        source = (
            "catalog" if known.source == "catalog" else "GPU list (its catalog cannot be downloaded here)"
        )
        hint = f"; did you mean {' or '.join(repr(g) for g in guess)}?" if guess else "; see `sky show-gpus`"
        problems.append(
            f"{where(loaded, 'launch', 'accelerators')}: launch.accelerators: SkyPilot does not know "
            f"accelerator {name!r} (checked against its {source}){hint}"
        )
    else:
        for index, place in enumerate(launch.placements or [None]):
            found = offers.lookup(
                canonical.get(name.lower(), name),
                count,
                launch.use_spot,
                place.cloud if place else None,
                place.region if place else None,
            )
            if found is not None and not found:
                at = f"in {infra(place)}" if place is not None and infra(place) else "on any cloud"
                loc = ("launch", "placements", index) if place is not None else ("launch", "accelerators")
                problems.append(
                    f"{where(loaded, *loc)}: {'.'.join(map(str, loc))}: SkyPilot's catalog lists no "
                    f"{'spot ' if launch.use_spot else ''}offer of {launch.accelerators} per node {at}"
                )
    if launch.bucket is None:
        problems.append(
            f"{where(loaded, 'launch')}: launch.bucket: required for launch.kind 'sky': checkpoints and the "
            "final model are written there, e.g. s3://my-team-ckpts/lifecycle"
        )
    elif not launch.bucket.startswith(tuple(backend.bucket_prefixes())):
        allowed = ", ".join(sorted(backend.bucket_prefixes()))
        problems.append(
            f"{where(loaded, 'launch', 'bucket')}: launch.bucket: {launch.bucket!r} is not a bucket "
            f"URI SkyPilot can mount (allowed prefixes: {allowed})"
        )
    if recipe.model.is_local_dir:
        problems.append(
            f"{where(loaded, 'model', 'base')}: model.base: {recipe.model.base} is a folder on this machine, "
            "which a cloud node cannot see: use a hub id (e.g. meta-llama/Llama-3.1-8B-Instruct) or a builtin"
        )
    named: dict[Path, tuple[str | int, ...]] = {
        path.resolve(): ("data", split) for split, path in data_files(recipe.data).items()
    }
    named |= {s.path.resolve(): ("data", "mix", i, "path") for i, s in enumerate(recipe.data.mix)}
    for remote, path in data_mounts(loaded, run_dir).items():
        if not path.is_file():
            field_path = named.get(path, ("data",))
            on_node = "" if remote == str(path) else f" ({remote} on the node)"
            problems.append(
                f"{where(loaded, *field_path)}: {'.'.join(map(str, field_path))}: {path}{on_node} "
                "does not exist"
            )
    if problems:
        raise RecipeError(problems)
    return known.source


def where(loaded: LoadedRecipe, *loc: str | int) -> str:
    """`FILE:LINE` of the deepest key of `loc` in the recipe, or the override that set it."""
    return locate(loaded, *loc)


def data_mounts(loaded: LoadedRecipe, run_dir: Path) -> dict[str, Path]:
    """Every data file the recipe names (train, eval, each `data.mix` source), keyed by where the worker on a
    node opens it: the path relative to the run directory (the workdir) for a file inside it, the same
    absolute path for any other. The workdir sync leaves `data/` out (sky_launch.SKYIGNORE), so each goes as a
    file mount. Before the run directory holds its recipe (a dry run), train and eval are planned where the
    training stage copies them, `data/<split>.jsonl`."""
    run = run_dir.resolve()
    planned = not loaded.path.resolve().is_relative_to(run)
    files = dict(data_files(loaded.recipe.data))
    mounts: dict[str, Path] = {}
    if planned:
        mounts = {f"data/{split}{path.suffix}": path for split, path in files.items()}
        files = {}
    for path in [*files.values(), *(source.path for source in loaded.recipe.data.mix)]:
        local = path.resolve()
        mounts[str(local.relative_to(run)) if local.is_relative_to(run) else str(local)] = local
    return mounts
