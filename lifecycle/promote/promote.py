"""`lifecycle promote NAME VERSION`: a registered version that passed its gate becomes a change to the pool file
on its own branch, pushed, with a pull request. Git is the record: the merge is the approval, a revert the
rollback, and MLflow aliases follow the merged file (they are never moved here). `lifecycle rollback NAME` is the
same path for the version the model's `previous` alias names (the one that served before): the same refusals,
its own branch (rollback/NAME-vX) and words.

Refused before anything is written: a missing version, a failed gate or missing gate evidence, an artifact that
does not match its manifest, a pool file with uncommitted changes, a promotion already running in this
repository, a version the pool already serves. The commit is made without touching the working tree or the
checked-out branch (lifecycle.promote.git), so a push the remote rejects leaves the checkout as it was.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lifecycle import locks, manifest
from lifecycle.errors import ManifestError, PromotionFailed, PromotionRefused, RecipeError
from lifecycle.pool import diff as pool_diff
from lifecycle.pool import pins
from lifecycle.pool.aliases import PREVIOUS, pinned_versions
from lifecycle.pool.load import LoadedPool, load_pool, parse_pool
from lifecycle.pool.schema import RegisteredModel
from lifecycle.promote import body, edit
from lifecycle.promote.git import Git
from lifecycle.promote.github import GitHub, PullRequest, compare_url, repository_of

LOCK_NAME = "lifecycle-promote.lock"
ADAPTER_CONFIG = "adapter_config.json"  # what makes an artifact a LoRA adapter (peft's file)

if TYPE_CHECKING:
    from lifecycle.registry.models import VersionRecord as Record


class Versions(Protocol):
    """What promotion reads from the registry (lifecycle.promote.versions.RegisteredVersions)."""

    where: str

    def find(self, name: str, version: str) -> Record | None: ...
    def by_alias(self, name: str, alias: str) -> Record | None: ...
    def fetch(self, record: Record, target: Path) -> Path: ...


@dataclass(frozen=True)
class GitHubSettings:
    """Read at the CLI edge: GITHUB_TOKEN, GITHUB_API_URL, GITHUB_REPOSITORY (default: from the remote's URL)."""

    token: str | None = None
    api_url: str = "https://api.github.com"
    repository: str | None = None


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    deployments: tuple[str, ...]
    branch: str
    base: str
    commit: str
    actions: tuple[pool_diff.Action, ...]
    pull: PullRequest | None
    next_step: str | None  # when no pull request was opened: what to do to open one
    body_file: Path
    rollback: body.Rollback | None = None


@dataclass(frozen=True)
class Request:
    """What to pin: a registered version, on one deployment or (None) wherever the model belongs."""

    name: str
    version: str
    deployment: str | None = None
    rollback: body.Rollback | None = None


def promote(
    name: str,
    version: str,
    pool_path: Path,
    *,
    versions: Versions,
    github: GitHubSettings,
    remote: str = "origin",
    deployment: str | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Promotion:
    """Open the pull request that pins `name` v`version` (see the module's docstring for what is refused)."""
    return propose(
        lambda current: Request(name, version, deployment),
        pool_path,
        versions=versions,
        github=github,
        remote=remote,
        say=say,
    )


def rollback(
    name: str,
    pool_path: Path,
    *,
    versions: Versions,
    github: GitHubSettings,
    remote: str = "origin",
    say: Callable[[str], None] = lambda line: None,
) -> Promotion:
    """Open the pull request that pins again the version `previous` names, for `name`: a deployment (only it is
    changed) or a registered model (every deployment serving it). Refused when there is no `previous`."""
    return propose(
        lambda current: rollback_request(name, current, versions),
        pool_path,
        versions=versions,
        github=github,
        remote=remote,
        say=say,
    )


def rollback_request(name: str, current: LoadedPool, versions: Versions) -> Request:
    """The version to roll `name` back to: its registered model's `previous` alias."""
    found = current.pool.deployment(name)
    deployment = None
    if found is not None:
        if not isinstance(found.model, RegisteredModel):
            adapters = ", ".join(sorted({a.model for a in found.adapters})) or "none"
            raise PromotionRefused(
                f"deployment {name!r} serves unregistered base weights, which have no earlier version; to roll "
                f"back one of its adapters, name the adapter's registered model (here: {adapters})"
            )
        model, deployment = found.model.name, name
        pinned: tuple[int, ...] = (found.model.version,)
    else:
        model = name
        where = pinned_versions(current.pool).get(name, {})
        pinned = tuple(sorted(where))
        serving = set().union(*where.values()) if where else set()
        if len(serving) == 1:  # an adapter goes back where it is loaded, not on every deployment of its base
            deployment = next(iter(serving))
    previous = versions.by_alias(model, PREVIOUS)
    if previous is None:
        unknown = (
            ""
            if found is not None or pinned
            else f"; {name!r} is neither a deployment in {current.path} nor a model it pins"
        )
        raise PromotionRefused(
            f"{model} has no {PREVIOUS!r} alias in {versions.where}: nothing to roll back to (`lifecycle apply` "
            f"sets it when a deployed change replaces the pinned version){unknown}"
        )
    return Request(
        model,
        previous.version,
        deployment,
        body.Rollback(name=name, from_versions=tuple(str(v) for v in pinned)),
    )


def propose(
    choose: Callable[[LoadedPool], Request],
    pool_path: Path,
    *,
    versions: Versions,
    github: GitHubSettings,
    remote: str = "origin",
    say: Callable[[str], None] = lambda line: None,
) -> Promotion:
    """The one path of promotion and rollback: under the repository's lock, with the pool file committed and
    clean, `choose` says what to pin; refuse what must not serve; commit the edit on its own branch, push it,
    open the pull request."""
    git = Git.at(pool_path)
    rel = git.relative(pool_path)
    with _lock(git.git_dir() / LOCK_NAME):
        _refuse_dirty(git, rel)
        current = load_pool(pool_path)
        request = choose(current)
        name, version, deployment, rolling = (
            request.name,
            request.version,
            request.deployment,
            request.rollback,
        )
        if rolling is not None:
            say(f"rolling {rolling.name} back to {name} v{version}{rolling.was}: its {PREVIOUS!r} alias")
        record = versions.find(name, version)
        if record is None:
            raise PromotionRefused(f"{name} v{version} is not a registered version in {versions.where}")
        refused = pins.evidence_problems(record, adapter=True)
        if refused:
            raise PromotionRefused("; ".join(refused))
        say(f"{name} v{version}: {body.verdict(record)}; checking its artifact against its manifest")
        with tempfile.TemporaryDirectory(prefix="lifecycle-promote-") as tmp:
            is_adapter = _verified_artifact(versions, record, Path(tmp))
        if not is_adapter and (refused := pins.evidence_problems(record)):
            raise PromotionRefused("; ".join(refused))
        desired, targets = _edit(current, record, is_adapter, deployment)
        actions = pool_diff.diff(current.pool, desired.pool)
        branch = body.branch_name(name, version, rolling)
        if git.branch_exists(branch):
            raise PromotionRefused(
                f"branch {branch} exists (an earlier {'rollback' if rolling else 'promotion'} to this version): "
                f"push it and open its pull request, or delete it (git branch -D {branch}) and run this again"
            )
        base = git.current_branch()
        ahead = git.ahead_of(remote, base)
        if ahead:
            say(
                f"note: {base} has {ahead} commit(s) that {remote}/{base} lacks; the pull request carries them too"
            )
        diff_text = body.unified_diff(current.text, desired.text, rel)
        message = body.commit_message(record, targets, actions, rolling)
        commit = git.commit_file(git.head(), rel, desired.text, message)
        git.create_branch(branch, commit)
        say(f"committed {commit[:12]} on {branch}; pushing to {remote}")
        try:
            git.push(remote, branch)
        except PromotionFailed as exc:
            git.delete_branch(branch)
            raise PromotionFailed(
                f"{remote} refused the push of {branch}: {exc}. Nothing changed here: the branch was deleted "
                f"and {base} and the working tree are as they were"
            ) from None
        text = body.pr_body(record, targets, actions, diff_text, rel, record.description, rolling)
        body_file = git.git_dir() / "lifecycle" / f"{branch.replace('/', '-')}.md"
        body_file.parent.mkdir(parents=True, exist_ok=True)
        body_file.write_text(text)
        pull, next_step = _open_pull(
            git, remote, github, branch, base, body.title(record, rolling), text, body_file
        )
        return Promotion(
            name=name,
            version=version,
            deployments=tuple(targets),
            branch=branch,
            base=base,
            commit=commit,
            actions=actions,
            pull=pull,
            next_step=next_step,
            body_file=body_file,
            rollback=rolling,
        )


def _lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """One promotion at a time per repository: a second one is refused at once, naming the first."""
    return locks.held(
        path,
        lambda holder: PromotionRefused(
            f"another promotion is running in this repository (process {holder}; lock {path}); "
            "wait for it to finish"
        ),
    )


def _refuse_dirty(git: Git, rel: str) -> None:
    changed = git.status(rel)
    if changed:
        raise PromotionRefused(
            f"{rel} has changes that are not committed ({changed.split()[0]}): commit or discard them first; "
            "a promotion changes the committed file and nothing else"
        )
    if git.show("HEAD", rel) is None:
        raise PromotionRefused(f"{rel} is not committed: commit it first")


def _verified_artifact(versions: Versions, record: Record, tmp: Path) -> bool:
    """Check that the version's artifact matches its manifest and the digest it was registered with; True when
    it is a LoRA adapter."""
    label = f"{record.name} v{record.version}"
    folder = versions.fetch(record, tmp / "artifact")
    try:
        found = manifest.verify(folder)
    except ManifestError as exc:
        raise PromotionRefused(
            f"the artifact of {label} does not verify, so it cannot serve: {exc}"
        ) from None
    registered = record.tags.get(pins.DIGEST)
    if found.digest != registered:
        raise PromotionRefused(
            f"the artifact of {label} has manifest digest {found.digest}, but the version was registered with "
            f"{registered}: it is not what passed the gate"
        )
    return (folder / ADAPTER_CONFIG).is_file()


def _edit(
    current: LoadedPool, record: Record, is_adapter: bool, wanted: str | None
) -> tuple[LoadedPool, list[str]]:
    """The pool file with the version pinned, validated; and the deployments it lands on."""
    pool = current.pool
    data = edit.yaml().load(current.text)
    label = f"{record.name} v{record.version}"
    if is_adapter:
        base = record.tags[pins.BASE_DIGEST]
        targets = [
            i
            for i, d in enumerate(pool.deployments)
            if d.model.manifest_digest == base and (wanted is None or d.name == wanted)
        ]
        if not targets:
            raise PromotionRefused(
                f"{label} is a LoRA adapter for the weights {base[:12]}… ({record.tags.get(pins.BASE_MODEL)}), "
                f"and no deployment{f' named {wanted!r}' if wanted else ''} serves them: add one to "
                f"{current.path} (model: {{kind: base, ...}}) first"
            )
        pin = pins.adapter_pin(record, edit.served_name(record.name))
        fresh = [i for i in targets if pin not in pool.deployments[i].adapters]
        for i in fresh:
            edit.pin_adapter(data, i, pin)
    else:
        model = pins.model_pin(record)
        targets = [
            i
            for i, d in enumerate(pool.deployments)
            if (
                d.name == wanted
                if wanted
                else isinstance(d.model, RegisteredModel) and d.model.name == record.name
            )
        ]
        fresh = [i for i in targets if pool.deployments[i].model != model]
        for i in fresh:
            edit.pin_model(data, i, model)
        if not targets:
            name = wanted or edit.served_name(record.name)
            edit.add_deployment(data, _new_deployment(name, model))
            targets = fresh = [len(pool.deployments)]
    if not fresh:
        raise PromotionRefused(f"{current.path} already serves {label}: nothing to promote")
    text = edit.dump(data)
    try:
        desired = parse_pool(text, current.path)
    except RecipeError as exc:
        raise PromotionRefused(
            f"pinning {label} would make {current.path} invalid:\n" + "\n".join(exc.problems)
        ) from None
    return desired, [desired.pool.deployments[i].name for i in targets]


def _new_deployment(name: str, model: RegisteredModel) -> dict[str, object]:
    """A deployment for a model the pool does not serve yet: one self-hosted replica, priced at zero until the
    reviewer says otherwise (the pull request shows every value)."""
    return {
        "name": name,
        "model": model.model_dump(mode="json"),
        "replicas": 1,
        "residency": "self_hosted",
        "gpus_per_replica": 1,
        "price_per_gpu_hour": 0.0,
    }


def _open_pull(
    git: Git,
    remote: str,
    github: GitHubSettings,
    branch: str,
    base: str,
    title: str,
    text: str,
    body_file: Path,
) -> tuple[PullRequest | None, str | None]:
    url = git.remote_url(remote)
    repository = github.repository or repository_of(url)
    by_hand = f'gh pr create --base {base} --head {branch} --title "{title}" --body-file {body_file}'
    if repository is None:
        return None, (
            f"{remote} ({url}) is not on GitHub: open a pull request from {branch} into {base} there, with the "
            f"text in {body_file}"
        )
    if not github.token:
        return None, (
            f"no GITHUB_TOKEN is set: open the pull request at {compare_url(repository, base, branch)} with the "
            f"text in {body_file}, or run: {by_hand}"
        )
    client = GitHub(github.token, repository, github.api_url)
    try:
        return client.open_pull(head=branch, base=base, title=title, body=text), None
    except PromotionFailed as exc:
        raise PromotionFailed(f"{branch} is pushed, but {exc}. Open it by hand: {by_hand}") from None
