"""git files that are real FIFOs (packed-refs, HEAD, a loose ref, commondir): unreadable, never a
hang; the daemon starts and stops on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from cachewatchd.watch.git import GitWatcher
from cachewatchd.watch.gitrepo import find_repositories, repo_at
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.fifo import RESCUE_AFTER, fifo_at, rescued
from tests.support.wait import git, wait_until

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "m.py").write_text("X = 1\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "one")
    return path.resolve()


def packed_only(repo: Path) -> str:
    """Pack the refs (no loose ref left); return HEAD's commit."""
    git(repo, "pack-refs", "--all", "--prune")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    return git(repo, "rev-parse", "HEAD").strip()


class Sink:
    def git_moved(self, move: object) -> None:
        raise AssertionError(f"no move expected: {move}")

    def git_settled(self, repo: object) -> None:
        raise AssertionError(f"nothing held: {repo}")


def test_packed_refs_fifo_is_unreadable_not_a_hang(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    packed_only(repo)
    fifo = fifo_at(repo / ".git" / "packed-refs")
    start = time.monotonic()
    with rescued(fifo):
        (found,) = find_repositories(repo)
        assert found.head() is None
    assert time.monotonic() - start < RESCUE_AFTER


@pytest.mark.parametrize("name", ["HEAD", "refs/heads/main", "commondir"])
def test_head_ref_and_commondir_fifos_are_unreadable(tmp_path: Path, name: str) -> None:
    repo = make_repo(tmp_path / "r")
    found = repo_at(repo)
    assert found is not None
    fifo = fifo_at(repo / ".git" / name)
    start = time.monotonic()
    with rescued(fifo):
        again = repo_at(repo)
        head = found.head()
    assert time.monotonic() - start < RESCUE_AFTER
    if name == "commondir":
        assert again == found  # unreadable commondir: the git dir is its own common dir
    else:
        assert head is None


def test_git_watcher_with_a_fifo_starts_and_stops(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    packed_only(repo)
    fifo = fifo_at(repo / ".git" / "packed-refs")
    watcher = GitWatcher([repo], sink=Sink(), poll_mode="never", safety_interval=0.05)
    start = time.monotonic()
    with rescued(fifo):
        watcher.start()
        try:
            wait_until(lambda: watcher.checks >= 3, 10, message="checking passes")
        finally:
            watcher.stop()
    assert time.monotonic() - start < RESCUE_AFTER
    assert [r.worktree for r in watcher.repositories()] == [repo]


def test_daemon_on_a_repository_with_a_fifo_starts_and_obeys_sigterm(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    packed_only(repo)
    fifo = fifo_at(repo / ".git" / "packed-refs")
    start = time.monotonic()
    with rescued(fifo), DaemonProc([str(repo)], isolated_env(tmp_path / "home")) as daemon:
        daemon.ready()
        assert time.monotonic() - start < RESCUE_AFTER, "start waited for the FIFO"
        assert daemon.stop(signal.SIGTERM, timeout=RESCUE_AFTER) == 0
