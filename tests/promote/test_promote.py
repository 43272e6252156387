"""`lifecycle promote` against a real MLflow store, a real git repository with a bare remote, and a stand-in for
GitHub's pull-request endpoint."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest
from promote_world import OWNER_REPO, TOKEN, Checkout, GitHubStandIn, Store, cli_env, git

from lifecycle.errors import PromotionFailed, PromotionRefused
from lifecycle.pool import diff as pool_diff
from lifecycle.pool.load import parse_pool
from lifecycle.promote.promote import LOCK_NAME, GitHubSettings, Promotion, promote
from lifecycle.promote.versions import RegisteredVersions

REPO = Path(__file__).parents[2]


def run(
    store: Store, checkout: Checkout, name: str, version: str, github: GitHubSettings | None = None
) -> Promotion:
    return promote(
        name,
        version,
        checkout.pool,
        versions=RegisteredVersions(store.registry),
        github=github or GitHubSettings(),
    )


def standin(github: GitHubStandIn) -> GitHubSettings:
    return GitHubSettings(token=TOKEN, api_url=github.url, repository=OWNER_REPO)


def untouched(checkout: Checkout, before: str) -> None:
    """The checkout is as it was: same branch and commit, nothing changed or added."""
    assert git(checkout.work, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(checkout.work, "rev-parse", "HEAD") == before
    assert git(checkout.work, "status", "--porcelain") == ""


def test_promote_commits_pushes_and_opens_the_pull_request(
    store: Store, checkout: Checkout, github: GitHubStandIn
) -> None:
    head = git(checkout.work, "rev-parse", "HEAD")
    done = run(store, checkout, "support", "1", standin(github))

    assert done.branch == "promote/support-v1" and done.base == "main"
    assert checkout.remote_ref(done.branch) == done.commit  # the push reached the remote
    untouched(checkout, head)  # built without checking anything out
    message = git(checkout.work, "log", "-1", "--format=%B", done.commit)
    assert message.splitlines()[0] == "Promote support v1 to support: gate passed"
    assert git(checkout.work, "rev-parse", f"{done.commit}^") == head
    assert git(checkout.work, "diff", "--name-only", head, done.commit) == "serving/pool.yaml"

    promoted = parse_pool(
        git(checkout.work, "show", f"{done.commit}:serving/pool.yaml") + "\n", checkout.pool
    )
    (deployment,) = promoted.pool.deployments
    record = store.versions["support v1"]
    assert deployment.name == "support" and deployment.model.kind == "registered"
    assert deployment.model.version == 1 and deployment.model.artifact == record.source
    assert deployment.model.manifest_digest == record.tags["lifecycle.weights_manifest_digest"]
    assert deployment.model.quantization.scheme == "W8A8"
    assert [type(a) for a in done.actions] == [pool_diff.Start]
    assert "# The serving pool's desired state" in promoted.text  # the file's comments are kept

    (request,) = github.requests
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    sent = json.loads(request["raw"])
    assert (sent["head"], sent["base"]) == ("promote/support-v1", "main")
    assert sent["title"] == "Promote support v1 (gate passed)"
    body = sent["body"]
    assert "| `support-tickets.exact_match.improve` | pass | delta=0.5" in body  # the gate table
    assert "| task | metric | rule |" in body.lower() or "support-tickets" in body
    assert "## Lineage" in body and "`lifecycle.run_id` | run-1" in body
    assert "`lifecycle.recipe_sha256` | " + "d" * 64 in body
    assert "Training: $0.00 (local)" in body
    assert "1. start support: support v1 (W8A8), 1 replica" in body
    assert "```diff\n--- a/serving/pool.yaml\n+++ b/serving/pool.yaml" in body
    assert "+      version: 1" in body and "-deployments: []" in body
    assert done.pull is not None and done.pull.number == 1
    assert done.pull.url == f"https://github.com/{OWNER_REPO}/pull/1"


def test_the_next_version_replaces_the_pin_blue_green(
    store: Store, checkout: Checkout, github: GitHubStandIn
) -> None:
    first = run(store, checkout, "support", "1", standin(github))
    git(checkout.work, "merge", "-q", "--ff-only", first.branch)  # the pull request was merged, not pulled
    said: list[str] = []
    done = promote(
        "support",
        "2",
        checkout.pool,
        versions=RegisteredVersions(store.registry),
        github=standin(github),
        say=said.append,
    )
    assert "note: main has 1 commit(s) that origin/main lacks; the pull request carries them too" in said
    (action,) = done.actions
    assert isinstance(action, pool_diff.Replace) and action.changed == ("model",)
    body = json.loads(github.requests[-1]["raw"])["body"]
    assert "-      version: 1\n" in body and "+      version: 2\n" in body
    assert "replace support blue-green (model changed): support v1 (W8A8) -> support v2 (W8A8)" in body

    with pytest.raises(PromotionRefused, match="already serves support v1: nothing to promote"):
        run(store, checkout, "support", "1", standin(github))


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("support", "3", "support v3 failed its gate .lifecycle.gate='failed'.; a failed version can never"),
        ("support", "99", "support v99 is not a registered version in sqlite:///"),
        ("no-such-model", "1", "no-such-model v1 is not a registered version"),
        ("nogate", "1", "nogate v1 has no gate evidence .no 'lifecycle.gate' tag."),
        ("flipped", "1", r"the artifact of flipped v1 does not verify(.|\n)*changed: model.safetensors"),
    ],
    ids=["failed-gate", "missing-version", "missing-model", "no-evidence", "flipped-byte"],
)
def test_refused_versions_leave_no_trace(
    store: Store, checkout: Checkout, github: GitHubStandIn, name: str, version: str, message: str
) -> None:
    head = git(checkout.work, "rev-parse", "HEAD")
    with pytest.raises(PromotionRefused, match=message):
        run(store, checkout, name, version, standin(github))
    untouched(checkout, head)
    assert git(checkout.work, "branch", "--list", "promote/*") == ""
    assert git(checkout.work, "ls-remote", "--heads", "origin").count("\n") == 0  # only main
    assert github.requests == []


def test_a_dirty_pool_file_is_refused(store: Store, checkout: Checkout) -> None:
    checkout.pool.write_text(checkout.pool.read_text() + "# a local edit\n")
    with pytest.raises(PromotionRefused, match="serving/pool.yaml has changes that are not committed"):
        run(store, checkout, "support", "1")
    assert checkout.pool.read_text().endswith("# a local edit\n")


def test_a_second_promotion_at_once_is_refused(store: Store, checkout: Checkout) -> None:
    lock = checkout.work / ".git" / LOCK_NAME
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        with pytest.raises(
            PromotionRefused, match=r"another promotion is running in this repository \(process 4242"
        ):
            run(store, checkout, "support", "1")
    assert run(store, checkout, "support", "1").branch == "promote/support-v1"  # free again


def test_a_push_the_remote_rejects(store: Store, checkout: Checkout, github: GitHubStandIn) -> None:
    hook = checkout.remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes to this remote need a review' >&2\nexit 1\n")
    hook.chmod(0o755)
    head = git(checkout.work, "rev-parse", "HEAD")
    with pytest.raises(PromotionFailed) as caught:
        run(store, checkout, "support", "1", standin(github))
    message = str(caught.value)
    assert message.startswith("origin refused the push of promote/support-v1")
    assert "pushes to this remote need a review" in message
    assert "the branch was deleted and main and the working tree are as they were" in message
    untouched(checkout, head)
    assert git(checkout.work, "branch", "--list", "promote/*") == ""
    assert checkout.remote_ref("promote/support-v1") is None
    assert github.requests == []


def test_a_pull_request_that_exists_already(store: Store, checkout: Checkout, github: GitHubStandIn) -> None:
    github.pulls.append({"head": {"ref": "promote/support-v1"}})
    with pytest.raises(PromotionFailed) as caught:
        run(store, checkout, "support", "1", standin(github))
    message = str(caught.value)
    assert "promote/support-v1 is pushed, but GitHub refused the pull request (422)" in message
    assert "A pull request already exists for acme:promote/support-v1." in message
    assert "gh pr create --base main --head promote/support-v1" in message


def test_without_a_token_the_next_step_is_printed(store: Store, checkout: Checkout) -> None:
    done = run(store, checkout, "support", "1", GitHubSettings(repository=OWNER_REPO))
    assert done.pull is None and done.next_step is not None
    assert f"https://github.com/{OWNER_REPO}/compare/main...promote/support-v1?expand=1" in done.next_step
    assert f"--body-file {done.body_file}" in done.next_step
    assert "| `support-tickets.exact_match.improve` | pass" in done.body_file.read_text()
    assert checkout.remote_ref(done.branch) == done.commit


def test_an_adapter_rides_on_the_deployment_serving_its_base(store: Store, checkout: Checkout) -> None:
    with pytest.raises(
        PromotionRefused, match="is a LoRA adapter for the weights .* no deployment serves them"
    ):
        run(store, checkout, "tickets-lora", "1")
    base = (
        "deployments:\n"
        "  - name: tiny\n"
        "    model:\n"
        "      kind: base\n"
        "      source: builtin:tiny-llama\n"
        f"      manifest_digest: {store.base_digest}\n"
        "    residency: self_hosted\n"
        "    gpus_per_replica: 0\n"
        "    price_per_gpu_hour: 0.0\n"
    )
    checkout.pool.write_text(base)
    git(checkout.work, "commit", "-q", "-am", "a base for adapters")
    done = run(store, checkout, "tickets-lora", "1")
    (action,) = done.actions
    assert isinstance(action, pool_diff.LoadAdapter) and action.deployment == "tiny"
    assert action.adapter.name == "tickets-lora" and action.adapter.base_manifest_digest == store.base_digest
    committed = git(checkout.work, "show", f"{done.commit}:serving/pool.yaml")
    assert committed.startswith(base.rstrip("\n") + "\n    adapters:\n      - name: tickets-lora\n")


def test_the_cli_prints_the_next_step_for_a_remote_not_on_github(store: Store, checkout: Checkout) -> None:
    cli = [sys.executable, "-m", "lifecycle.cli.app", "promote", "support", "1", "--pool", str(checkout.pool)]
    out = subprocess.run(cli, capture_output=True, text=True, env=cli_env(store), cwd=checkout.work)
    assert out.returncode == 0, out.stderr
    assert "1. start support: support v1 (W8A8), 1 replica" in out.stdout
    assert "pushed promote/support-v1" in out.stdout
    assert (
        f"next: origin ({checkout.remote}) is not on GitHub: open a pull request from promote/support-v1 into main"
        in out.stdout
    )

    refused = subprocess.run(
        [*cli[:-4], "support", "3", "--pool", str(checkout.pool)],
        capture_output=True,
        text=True,
        env=cli_env(store),
        cwd=checkout.work,
    )
    assert refused.returncode == 2
    assert "error: support v3 failed its gate" in refused.stderr and "Traceback" not in refused.stderr
