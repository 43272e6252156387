"""The GitHub client: which remotes are on GitHub, and GitHub's refusals as one line."""

from __future__ import annotations

import json

import pytest
from promote_world import OWNER_REPO, TOKEN, GitHubStandIn

from lifecycle.errors import PromotionFailed
from lifecycle.promote.github import GitHub, repository_of


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/acme/models.git", "acme/models"),
        ("https://github.com/acme/models", "acme/models"),
        ("https://x-access-token:abc@github.com/acme/my.models.git", "acme/my.models"),
        ("git@github.com:acme/models.git", "acme/models"),
        ("ssh://git@github.com/acme/models.git", "acme/models"),
        ("https://gitlab.com/acme/models.git", None),
        ("/tmp/remote.git", None),
        ("https://github.com.evil.example/acme/models.git", None),
    ],
)
def test_repository_of_a_remote(url: str, expected: str | None) -> None:
    assert repository_of(url) == expected


def test_opens_a_pull_request_and_reports_refusals(github: GitHubStandIn) -> None:
    client = GitHub(TOKEN, OWNER_REPO, github.url + "/")
    pull = client.open_pull(head="promote/x-v1", base="main", title="Promote x v1", body="text")
    assert (pull.number, pull.url) == (1, f"https://github.com/{OWNER_REPO}/pull/1")
    request = github.requests[0]
    assert request["headers"]["X-GitHub-Api-Version"] == "2022-11-28"
    assert json.loads(request["raw"])["body"] == "text"

    with pytest.raises(PromotionFailed, match=r"\(422\): Validation Failed; A pull request already exists"):
        client.open_pull(head="promote/x-v1", base="main", title="again", body="")
    with pytest.raises(PromotionFailed, match=r"\(401\): Bad credentials"):
        GitHub("wrong", OWNER_REPO, github.url).open_pull(head="h", base="main", title="t", body="")
    with pytest.raises(PromotionFailed, match="did not answer"):
        GitHub(TOKEN, OWNER_REPO, "http://127.0.0.1:9", timeout_s=2).open_pull(
            head="h", base="main", title="t", body=""
        )
