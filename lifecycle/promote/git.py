"""The only module running git. A promotion's commit is built with git's plumbing (a private index, a tree, a
commit, a branch ref), so the working tree, the index and the checked-out branch are never touched: whatever
happens to the push, the person's checkout is as it was."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lifecycle.errors import PromotionFailed, PromotionRefused


@dataclass(frozen=True)
class Git:
    root: Path  # the working tree's top level

    @classmethod
    def at(cls, path: Path) -> Git:
        """The repository holding `path`."""
        folder = path if path.is_dir() else path.parent
        try:
            top = _run(["git", "rev-parse", "--show-toplevel"], folder).strip()
        except PromotionFailed:
            raise PromotionRefused(f"{path} is not inside a git repository") from None
        return cls(Path(top))

    def run(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
        return _run(["git", *args], self.root, env=env, stdin=stdin).strip()

    def git_dir(self) -> Path:
        return (self.root / self.run("rev-parse", "--git-common-dir")).resolve()

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def current_branch(self) -> str:
        branch = self.run("symbolic-ref", "--quiet", "--short", "HEAD")
        if not branch:
            raise PromotionRefused("HEAD is detached: check out the branch the pull request should go into")
        return branch

    def head(self) -> str:
        return self.run("rev-parse", "HEAD")

    def status(self, rel: str) -> str:
        """`git status --porcelain` for one path: empty when it is committed and unchanged."""
        return self.run("status", "--porcelain", "--untracked-files=all", "--", rel)

    def show(self, rev: str, rel: str) -> str | None:
        """The file `rel` as committed at `rev`, byte for byte; None if it is not there."""
        try:
            return _run(["git", "show", f"{rev}:{rel}"], self.root)
        except PromotionFailed:
            return None

    def branch_exists(self, branch: str) -> bool:
        try:
            self.run("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
            return True
        except PromotionFailed:
            return False

    def commit_file(self, parent: str, rel: str, content: str, message: str) -> str:
        """A commit on top of `parent` that changes only the file `rel` to `content`; returns its sha."""
        blob = self.run("hash-object", "-w", "--stdin", stdin=content)
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.run("read-tree", parent, env=env)
            self.run("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", env=env)
            tree = self.run("write-tree", env=env)
        return self.run("commit-tree", tree, "-p", parent, "-F", "-", stdin=message)

    def create_branch(self, branch: str, sha: str) -> None:
        self.run("branch", branch, sha)

    def delete_branch(self, branch: str) -> None:
        self.run("branch", "-D", branch)

    def ahead_of(self, remote: str, branch: str) -> int | None:
        """Commits on HEAD that `remote/branch` (as last fetched) lacks; None if that ref is unknown here."""
        try:
            return int(self.run("rev-list", "--count", f"refs/remotes/{remote}/{branch}..HEAD"))
        except PromotionFailed:
            return None

    def remote_url(self, remote: str) -> str:
        try:
            return self.run("remote", "get-url", remote)
        except PromotionFailed:
            raise PromotionRefused(f"no git remote named {remote!r} (see `git remote -v`)") from None

    def push(self, remote: str, branch: str) -> None:
        self.run("push", "--porcelain", remote, f"refs/heads/{branch}:refs/heads/{branch}")


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            args,
            cwd=cwd,
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})},
        )
    except FileNotFoundError:
        raise PromotionRefused("git is not installed") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise PromotionFailed(f"`{' '.join(args[:3])}` failed: " + " / ".join(said[-6:]))
    return done.stdout
