"""A promotion's words, pure: the branch, the commit message, and the pull request's title and body (the gate
report table, lineage, the run's cost and the pool diff), all from the registered version's record. A rollback is
a promotion of the version that served before, and says so."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from lifecycle.pool import diff as pool_diff
from lifecycle.pool import pins
from lifecycle.promote.edit import served_name

GITHUB_BODY_LIMIT = 65_536  # characters GitHub accepts in a pull request body
_LINEAGE_SKIP = (pins.GATE, pins.COST_USD, pins.COST_SOURCE)


@dataclass(frozen=True)
class Rollback:
    """A promotion that pins again the version a model's `previous` alias names: the one that served before."""

    name: str  # what was rolled back, as asked: a deployment or a registered model
    from_versions: tuple[str, ...]  # what the pool file pins now (empty when it pins none)

    @property
    def was(self) -> str:
        return f" (from v{', v'.join(self.from_versions)})" if self.from_versions else ""


def branch_name(name: str, version: str, rollback: Rollback | None = None) -> str:
    if rollback is not None:
        return f"rollback/{served_name(rollback.name)}-v{version}"
    return f"promote/{served_name(name)}-v{version}"


def verdict(record: pins.Version) -> str:
    return f"gate {record.tags.get(pins.GATE, 'missing')}"


def title(record: pins.Version, rollback: Rollback | None = None) -> str:
    if rollback is not None:
        return f"Roll back {rollback.name} to v{record.version}{rollback.was}"
    return f"Promote {record.name} v{record.version} ({verdict(record)})"


def commit_message(
    record: pins.Version,
    deployments: Sequence[str],
    actions: Sequence[pool_diff.Action],
    rollback: Rollback | None = None,
) -> str:
    first = (
        f"{title(record, rollback)} on {', '.join(deployments)}: {verdict(record)}"
        if rollback is not None
        else f"Promote {record.name} v{record.version} to {', '.join(deployments)}: {verdict(record)}"
    )
    lines = [
        first,
        "",
        f"run {record.tags.get(pins.RUN_ID, '?')}, recipe sha256 {record.tags.get(pins.RECIPE, '?')[:12]}, "
        f"weights {record.tags.get(pins.DIGEST, '?')[:12]}",
        "",
        *pool_diff.describe(actions),
    ]
    return "\n".join(lines) + "\n"


def unified_diff(before: str, after: str, rel: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{rel}", f"b/{rel}"
        )
    )


def gate_table(tags: dict[str, str]) -> str:
    """One row per gate rule, from the version's `gate.TASK.METRIC.RULE` tags."""
    rows = ["| check | result | evidence |", "|---|---|---|"]
    for key in sorted(k for k in tags if k.startswith(pins.GATE_RULE_PREFIX)):
        status, _, detail = tags[key].partition(": ")
        rows.append(f"| `{key.removeprefix(pins.GATE_RULE_PREFIX)}` | {status} | {_cell(detail)} |")
    return "\n".join(rows)


def pr_body(
    record: pins.Version,
    deployments: Sequence[str],
    actions: Sequence[pool_diff.Action],
    pool_diff_text: str,
    rel: str,
    description: str,
    rollback: Rollback | None = None,
) -> str:
    tags = record.tags
    cost = tags.get(pins.COST_USD)
    lineage = ["| tag | value |", "|---|---|"] + [
        f"| `{key}` | {_cell(value)} |"
        for key, value in sorted(tags.items())
        if key.startswith("lifecycle.") and key not in _LINEAGE_SKIP
    ]
    libraries = ", ".join(
        f"{k.removeprefix('version.')} {v}" for k, v in sorted(tags.items()) if k.startswith("version.")
    )
    if rollback is None:
        opening = [
            f"Promotes **{record.name} v{record.version}** ({verdict(record)}) to {', '.join(deployments)} in "
            f"`{rel}`.",
            f"Artifact: `{record.source}`",
            "",
            "Merging applies it (`lifecycle apply`); reverting this merge rolls it back.",
        ]
    else:
        opening = [
            f"**Rollback.** Pins **{record.name} v{record.version}**{rollback.was} again on "
            f"{', '.join(deployments)} in `{rel}`: v{record.version} is the version {record.name}'s `previous` "
            "alias names, the one that served before. It passed its gate when it was registered; the evidence "
            "is below, as for any promotion.",
            f"Artifact: `{record.source}`",
            "",
            f"Merging applies it (`lifecycle apply`): production moves back to v{record.version}"
            + (f" and previous to v{rollback.from_versions[0]}" if len(rollback.from_versions) == 1 else "")
            + ". Reverting this merge undoes the rollback.",
        ]
    parts = [
        *opening,
        "",
        f"## Gate: {tags.get(pins.GATE, 'missing')} (baseline: {tags.get('lifecycle.gate.baseline', '?')})",
        "",
        gate_table(tags),
        "",
    ]
    if description.strip():
        parts += [
            "<details><summary>The version's report</summary>",
            "",
            description.strip(),
            "",
            "</details>",
            "",
        ]
    parts += [
        "## Cost",
        "",
        f"Training: ${cost} ({tags.get(pins.COST_SOURCE, 'unknown')})" if cost else "Training: not recorded",
        "",
        "## Lineage",
        "",
        *lineage,
        "",
        f"Libraries: {libraries}" if libraries else "",
        "",
        "## Pool change",
        "",
        *pool_diff.describe(actions),
        "",
        "```diff",
        pool_diff_text.rstrip("\n"),
        "```",
        "",
    ]
    body = "\n".join(parts)
    if len(body) > GITHUB_BODY_LIMIT:
        keep = GITHUB_BODY_LIMIT - 200
        body = (
            body[:keep] + f"\n```\n\n(cut at {keep} characters: GitHub's limit; the diff is in the commit)\n"
        )
    return body


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
