"""`lifecycle rollback NAME` against a real MLflow store, a real git repository with a bare remote, and a stand-in
for GitHub's pull-request endpoint: the promotion path for the version the `previous` alias names."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping

import pytest
from promote_world import (
    OWNER_REPO,
    TOKEN,
    Checkout,
    GitHubStandIn,
    Store,
    cli_env,
    git,
    registration,
    tiny_artifact,
)

from lifecycle.errors import PromotionRefused
from lifecycle.pool import diff as pool_diff
from lifecycle.pool import pins
from lifecycle.pool.load import parse_pool
from lifecycle.promote import edit
from lifecycle.promote.promote import GitHubSettings, Promotion, rollback
from lifecycle.promote.versions import RegisteredVersions


@pytest.fixture
def aliases(store: Store) -> Iterator[Store]:
    """The store, with `previous` and `production` aliases removed again after the test."""
    yield store
    for name in ("support", "faq-lora"):
        for alias in ("previous", "production"):
            store.registry.delete_alias(name, alias)


@pytest.fixture(scope="module")
def faq_lora(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """faq-lora v1 and v2: two passing adapters on the base weights."""
    root = tmp_path_factory.mktemp("faq-lora")
    for version in (1, 2):
        digest = tiny_artifact(root / f"v{version}", 20 + version, adapter=True)
        tags, description = registration(digest, passed=True, base_digest=store.base_digest)
        store.register("faq-lora", root / f"v{version}", tags, description)
    return store


def deployment(name: str, pin: Mapping[str, object], **more: object) -> dict[str, object]:
    return {"name": name, "model": pin, "residency": "self_hosted", "price_per_gpu_hour": 0.0, **more}


def commit_pool(checkout: Checkout, deployments: list[dict[str, object]]) -> str:
    data = edit.yaml().load(checkout.pool.read_text())
    for d in deployments:
        edit.add_deployment(data, d)
    checkout.pool.write_text(edit.dump(data))
    git(checkout.work, "commit", "-q", "-am", "serve")
    git(checkout.work, "push", "-q", "origin", "main")
    return git(checkout.work, "rev-parse", "HEAD")


def model_pin(store: Store, key: str) -> dict[str, object]:
    return pins.model_pin(store.versions[key]).model_dump(mode="json")


def run(store: Store, checkout: Checkout, name: str, github: GitHubSettings | None = None) -> Promotion:
    return rollback(
        name, checkout.pool, versions=RegisteredVersions(store.registry), github=github or GitHubSettings()
    )


def standin(github: GitHubStandIn) -> GitHubSettings:
    return GitHubSettings(token=TOKEN, api_url=github.url, repository=OWNER_REPO)


def test_rollback_of_a_model_opens_the_pull_request(
    aliases: Store, checkout: Checkout, github: GitHubStandIn
) -> None:
    store = aliases
    head = commit_pool(checkout, [deployment("support", model_pin(store, "support v2"))])
    store.registry.set_alias("support", "previous", "1")
    store.registry.set_alias("support", "production", "2")

    done = run(store, checkout, "support", standin(github))

    assert done.branch == "rollback/support-v1" and done.rollback is not None
    assert done.rollback.from_versions == ("2",)
    assert checkout.remote_ref(done.branch) == done.commit
    assert (
        git(checkout.work, "rev-parse", "HEAD") == head and git(checkout.work, "status", "--porcelain") == ""
    )
    message = git(checkout.work, "log", "-1", "--format=%B", done.commit)
    assert message.splitlines()[0] == "Roll back support to v1 (from v2) on support: gate passed"
    rolled = parse_pool(git(checkout.work, "show", f"{done.commit}:serving/pool.yaml") + "\n", checkout.pool)
    (d,) = rolled.pool.deployments
    assert d.model.kind == "registered" and d.model.version == 1
    assert d.model.manifest_digest == store.versions["support v1"].tags[pins.DIGEST]
    (action,) = done.actions
    assert isinstance(action, pool_diff.Replace) and action.changed == ("model",)

    (request,) = github.requests
    sent = json.loads(request["raw"])
    assert (sent["head"], sent["base"], sent["title"]) == (
        "rollback/support-v1",
        "main",
        "Roll back support to v1 (from v2)",
    )
    body = sent["body"]
    assert body.startswith(
        "**Rollback.** Pins **support v1** (from v2) again on support in `serving/pool.yaml`"
    )
    assert "Merging applies it (`lifecycle apply`): production moves back to v1 and previous to v2." in body
    assert "| `support-tickets.exact_match.improve` | pass | delta=0.5" in body  # the gate table
    assert "## Lineage" in body and "`lifecycle.run_id` | run-1" in body
    assert "replace support blue-green (model changed): support v2 (W8A8) -> support v1 (W8A8)" in body
    assert "-      version: 2\n" in body and "+      version: 1\n" in body
    # aliases are outputs of the merged file: a rollback moves none
    assert store.registry.aliases("support") == {"candidate": "3", "previous": "1", "production": "2"}


def test_rollback_of_one_deployment_leaves_the_others(aliases: Store, checkout: Checkout) -> None:
    store = aliases
    commit_pool(
        checkout,
        [deployment("eu", model_pin(store, "support v2")), deployment("us", model_pin(store, "support v2"))],
    )
    store.registry.set_alias("support", "previous", "1")
    said: list[str] = []
    done = rollback(
        "us",
        checkout.pool,
        versions=RegisteredVersions(store.registry),
        github=GitHubSettings(),
        say=said.append,
    )
    assert done.branch == "rollback/us-v1" and done.deployments == ("us",)
    assert "rolling us back to support v1 (from v2): its 'previous' alias" in said
    rolled = parse_pool(git(checkout.work, "show", f"{done.commit}:serving/pool.yaml") + "\n", checkout.pool)
    versions = {d.name: d.model.version for d in rolled.pool.deployments if d.model.kind == "registered"}
    assert versions == {"eu": 2, "us": 1}
    assert done.body_file.read_text().startswith("**Rollback.** Pins **support v1** (from v2) again on us in")


def test_rollback_of_an_adapter(faq_lora: Store, aliases: Store, checkout: Checkout) -> None:
    store = faq_lora
    lora = pins.adapter_pin(store.versions["faq-lora v2"], "faq").model_dump(mode="json")
    base = {"kind": "base", "source": "builtin:tiny-llama", "manifest_digest": store.base_digest}
    commit_pool(checkout, [deployment("tiny", base, gpus_per_replica=0, adapters=[lora])])
    store.registry.set_alias("faq-lora", "previous", "1")
    done = run(store, checkout, "faq-lora")
    assert done.branch == "rollback/faq-lora-v1"
    (action,) = done.actions
    assert isinstance(action, pool_diff.LoadAdapter) and action.adapter.version == 1
    assert action.adapter.name == "faq"  # clients keep the name they call it by
    assert action.replaces is not None and action.replaces.version == 2

    with pytest.raises(
        PromotionRefused, match="deployment 'tiny' serves unregistered base weights.*here: faq-lora"
    ):
        run(store, checkout, "tiny")


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        (None, r"support has no 'previous' alias in sqlite:///.*: nothing to roll back to"),
        ("3", r"support v3 failed its gate .lifecycle.gate='failed'.; a failed version can never"),
        ("2", r"already serves support v2"),
    ],
    ids=["no-previous", "previous-failed-its-gate", "previous-is-what-serves"],
)
def test_refused_rollbacks_leave_no_trace(
    aliases: Store, checkout: Checkout, github: GitHubStandIn, previous: str | None, message: str
) -> None:
    store = aliases
    head = commit_pool(checkout, [deployment("support", model_pin(store, "support v2"))])
    if previous is not None:
        store.registry.set_alias("support", "previous", previous)
    with pytest.raises(PromotionRefused, match=message):
        run(store, checkout, "support", standin(github))
    assert (
        git(checkout.work, "rev-parse", "HEAD") == head and git(checkout.work, "status", "--porcelain") == ""
    )
    assert git(checkout.work, "branch", "--list", "rollback/*") == ""
    assert github.requests == []


def test_unknown_names_and_a_dirty_pool_file(aliases: Store, checkout: Checkout) -> None:
    store = aliases
    with pytest.raises(
        PromotionRefused,
        match="nothing to roll back to .*'nope' is neither a deployment in .* nor a model it pins",
    ):
        run(store, checkout, "nope")
    store.registry.set_alias("support", "previous", "1")
    checkout.pool.write_text(checkout.pool.read_text() + "# a local edit\n")
    with pytest.raises(PromotionRefused, match="serving/pool.yaml has changes that are not committed"):
        run(store, checkout, "support")


def test_the_cli(aliases: Store, checkout: Checkout) -> None:
    store = aliases
    commit_pool(checkout, [deployment("support", model_pin(store, "support v2"))])
    cli = [sys.executable, "-m", "lifecycle.cli.app", "rollback", "support", "--pool", str(checkout.pool)]

    refused = subprocess.run(cli, capture_output=True, text=True, env=cli_env(store), cwd=checkout.work)
    assert refused.returncode == 2, refused.stdout
    assert "error: support has no 'previous' alias" in refused.stderr and "Traceback" not in refused.stderr

    store.registry.set_alias("support", "previous", "1")
    out = subprocess.run(cli, capture_output=True, text=True, env=cli_env(store), cwd=checkout.work)
    assert out.returncode == 0, out.stderr
    assert "rolling support back to support v1 (from v2): its 'previous' alias" in out.stdout
    assert (
        "1. replace support blue-green (model changed): support v2 (W8A8) -> support v1 (W8A8)" in out.stdout
    )
    assert "pushed rollback/support-v1" in out.stdout
    assert (
        "next: origin" in out.stdout
        and "open a pull request from rollback/support-v1 into main" in out.stdout
    )
    assert checkout.remote_ref("rollback/support-v1") is not None

    shown = subprocess.run([*cli[:4], "--help"], capture_output=True, text=True, env=cli_env(store))
    assert shown.returncode == 0 and "previous" in shown.stdout
