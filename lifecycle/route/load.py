"""Load `serving/routing.yaml` with the recipe loader's machinery (YAML with line numbers, every error at once as
`FILE:LINE: field.path: message`, did-you-mean), then the rules across tenants, upstreams and routes, and against
the pool file the routes resolve through."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml.comments import CommentedMap

from lifecycle.errors import RecipeError
from lifecycle.pool.load import TOP_LEVEL_KEY as POOL_KEY
from lifecycle.pool.load import load_pool
from lifecycle.pool.schema import Pool
from lifecycle.recipe.load import origin_of, parse_yaml, read_text, validate_model
from lifecycle.route.policy import RoutingPolicy
from lifecycle.route.targets import resolve_target

POLICY_KEYS = {"routes", "tenants", "upstreams"}  # none of them is a recipe's or a pool's key

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated routing policy and the pool its routes were checked against."""

    policy: RoutingPolicy
    pool: Pool
    path: Path
    text: str
    data: CommentedMap

    def where(self, *loc: str | int) -> str:
        """`FILE:LINE` of the value at `loc` (the deepest part of it present in the file)."""
        return origin_of(self.data, tuple(loc), self.path)

    def problem(self, loc: Loc, message: str) -> str:
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        return f"{self.where(*loc)}: {dotted}: {message}"


def load_policy(path: str | Path, pool: Pool | None = None) -> LoadedPolicy:
    """Read and validate a policy file against `pool` (default: the pool file it names). Raises RecipeError
    listing every problem."""
    path = Path(path)
    return parse_policy(read_text(path), path, pool)


def parse_policy(text: str, path: Path, pool: Pool | None = None) -> LoadedPolicy:
    """Validate policy YAML `text` as if read from `path`: what a reload checks before it swaps the policy in."""
    data = parse_yaml(path, text)
    policy, problems = validate_model(RoutingPolicy, data, path)
    if policy is None:
        raise RecipeError(problems)
    if pool is None:
        pool_path = path.parent / policy.pool
        try:
            pool = load_pool(pool_path).pool
        except RecipeError as exc:
            where = origin_of(data, ("pool",), path)
            raise RecipeError(
                [f"{where}: pool: {pool_path} cannot be read as a pool file:", *exc.problems]
            ) from None
    loaded = LoadedPolicy(policy=policy, pool=pool, path=path, text=text, data=data)
    problems = cross_checks(loaded)
    if problems:
        raise RecipeError(problems)
    return loaded


def is_policy_file(path: Path) -> bool:
    """True for a YAML file whose top level has `routes`, `tenants` or `upstreams` (keys no recipe has) and no
    `deployments`: how `lifecycle validate` tells a routing policy from a pool file or a recipe, also when one of
    those keys is misspelt. A file that cannot be parsed is not one."""
    try:
        data = parse_yaml(path, read_text(path))
    except RecipeError:
        return False
    return bool(POLICY_KEYS & set(data)) and POOL_KEY not in data


def cross_checks(loaded: LoadedPolicy) -> list[str]:
    """Rules no single field can state: unique names, one tenant per key, upstream names that do not shadow a
    served name, and every route target resolving through the pool."""
    policy, pool = loaded.policy, loaded.pool
    problems = _duplicates(loaded, "tenants", [t.name for t in policy.tenants], "tenant")
    problems += _duplicates(loaded, "upstreams", [u.name for u in policy.upstreams], "upstream")
    problems += _duplicates(loaded, "routes", [r.name for r in policy.routes], "route")
    owner: dict[str, str] = {}
    for i, tenant in enumerate(policy.tenants):
        for j, key in enumerate(tenant.keys):
            if key in owner:
                problems.append(
                    loaded.problem(
                        ("tenants", i, "keys", j),
                        f"this key hash is already tenant {owner[key]!r}'s: a key maps to one tenant",
                    )
                )
            owner.setdefault(key, tenant.name)
    served = {name: d.name for d in pool.deployments for name in d.served_names}
    for i, upstream in enumerate(policy.upstreams):
        if upstream.name in served:
            problems.append(
                loaded.problem(
                    ("upstreams", i, "name"),
                    f"{upstream.name!r} is also served by pool deployment {served[upstream.name]!r}: a "
                    "route target must name one thing",
                )
            )
    for i, route in enumerate(policy.routes):
        seen: set[str] = set()
        for j, target in enumerate(route.targets):
            loc: Loc = ("routes", i, "targets", j, "target")
            if target.target in seen:
                problems.append(loaded.problem(loc, f"{target.target!r} is already a target of this route"))
            seen.add(target.target)
            resolved = resolve_target(target, pool, policy)
            if isinstance(resolved, str):
                problems.append(loaded.problem(loc, resolved))
    return problems


def _duplicates(loaded: LoadedPolicy, section: str, names: list[str], what: str) -> list[str]:
    counts = Counter(names)
    seen: set[str] = set()
    problems = []
    for i, name in enumerate(names):
        if counts[name] > 1 and name in seen:
            problems.append(
                loaded.problem(
                    (section, i, "name"), f"{what} {name!r} is already defined: names must be unique"
                )
            )
        seen.add(name)
    return problems
