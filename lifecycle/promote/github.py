"""The only module speaking GitHub's REST API: open a pull request. The API's base URL is a setting (GitHub
Enterprise, or a stand-in in the tests); the token is read at the CLI edge and never printed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lifecycle.errors import PromotionFailed

DEFAULT_API = "https://api.github.com"
API_VERSION = "2022-11-28"
_REMOTE = re.compile(
    r"^(?:https://(?:[^@/]+@)?github\.com/|(?:ssh://)?git@github\.com[:/])(?P<repo>[\w.-]+/[\w.-]+?)(?:\.git)?/?$"
)


def repository_of(remote_url: str) -> str | None:
    """`owner/name` of a github.com remote (https or ssh form); None for any other remote."""
    match = _REMOTE.match(remote_url.strip())
    return match.group("repo") if match else None


def compare_url(repository: str, base: str, head: str) -> str:
    """The web page where a person opens the pull request by hand."""
    return f"https://github.com/{repository}/compare/{base}...{head}?expand=1"


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str


class GitHub:
    def __init__(self, token: str, repository: str, api_url: str = DEFAULT_API, timeout_s: float = 30.0):
        self.repository = repository
        self.api_url = api_url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "lifecycle-promote",
        }

    def open_pull(self, *, head: str, base: str, title: str, body: str) -> PullRequest:
        """POST /repos/{owner}/{repo}/pulls. GitHub's refusals (a PR for this branch exists, bad credentials,
        no such base) come back as one line."""
        import requests

        url = f"{self.api_url}/repos/{self.repository}/pulls"
        payload: dict[str, Any] = {
            "title": title,
            "head": head,
            "base": base,
            "body": body,
            "maintainer_can_modify": True,
        }
        try:
            response = requests.post(url, json=payload, headers=self._headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise PromotionFailed(f"GitHub at {self.api_url} did not answer: {exc}") from None
        data = _json(response)
        if response.status_code != 201:
            raise PromotionFailed(
                f"GitHub refused the pull request ({response.status_code}): {_github_message(data)}"
            )
        return PullRequest(number=int(data["number"]), url=str(data["html_url"]))


def _json(response: Any) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"message": response.text[:300]}
    return data if isinstance(data, dict) else {"message": str(data)[:300]}


def _github_message(data: dict[str, Any]) -> str:
    """GitHub's message, with the details of a 422 ('A pull request already exists for owner:branch.')."""
    details = [
        str(err.get("message") or f"{err.get('field')} {err.get('code')}")
        for err in data.get("errors", [])
        if isinstance(err, dict)
    ]
    return "; ".join([str(data.get("message", "no message")), *details])
