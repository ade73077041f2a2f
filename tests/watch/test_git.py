"""git repositories with real git: discovery, HEAD resolution, settling, and the move watcher."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cachewatchd.watch.batch import GitMove
from cachewatchd.watch.git import GitWatcher
from cachewatchd.watch.gitrepo import GitRepo, find_repositories, git_state, is_settled, repo_at
from tests.support.wait import git as run_git
from tests.support.wait import wait_until

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="git is not installed")

MODES = ["never", "always"]


def git(cwd: Path, *args: str) -> str:
    return run_git(cwd, *args)


def make_repo(path: Path, files: int = 3) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q")
    for i in range(files):
        (path / f"m{i}.py").write_text(f"X = {i}\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "one")
    return path.resolve()


class Moves:
    def __init__(self) -> None:
        self.moves: list[GitMove] = []
        self.settled: list[Path] = []
        self.lock = threading.Lock()

    def git_moved(self, move: GitMove) -> None:
        with self.lock:
            self.moves.append(move)

    def git_settled(self, repo: Path) -> None:
        with self.lock:
            self.settled.append(repo)

    def for_repo(self, repo: Path) -> list[GitMove]:
        with self.lock:
            return [m for m in self.moves if m.repo == repo]


@contextmanager
def watching(root: Path, mode: str = "never", **kwargs: Any) -> Iterator[tuple[GitWatcher, Moves]]:
    moves = Moves()
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("safety_interval", 0.2)
    kwargs.setdefault("operation_quiet", 0.2)
    watcher = GitWatcher([root], sink=moves, poll_mode=mode, **kwargs)  # type: ignore[arg-type]
    watcher.start()
    try:
        yield watcher, moves
    finally:
        watcher.stop()


def passes(watcher: GitWatcher, n: int = 2) -> None:
    """Wait until the checker has run *n* more passes (to assert that nothing happened)."""
    start = watcher.checks
    wait_until(lambda: watcher.checks >= start + n, 10, message=f"{n} checking passes")


# -- discovery and HEAD -------------------------------------------------------------------------------
def test_find_main_worktree_and_submodule(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "root" / "repo")
    sub_src = make_repo(tmp_path / "subsrc")
    git(repo, "submodule", "add", "-q", str(sub_src), "sub")
    git(repo, "commit", "-q", "-m", "sub")
    git(repo, "worktree", "add", "-q", "-b", "wt", str(tmp_path / "root" / "wt"))
    (tmp_path / "root" / "node_modules" / "dep").mkdir(parents=True)
    make_repo(tmp_path / "root" / "node_modules" / "dep" / "r")  # excluded

    repos = {r.worktree: r for r in find_repositories(tmp_path / "root")}
    wt = (tmp_path / "root" / "wt").resolve()
    assert set(repos) == {repo, repo / "sub", wt}
    assert repos[repo].gitdir == repos[repo].commondir == repo / ".git"
    assert repos[wt].gitdir == repo / ".git" / "worktrees" / "wt"
    assert repos[wt].commondir == repo / ".git"
    assert repos[repo / "sub"].gitdir == repo / ".git" / "modules" / "sub"
    for r in repos.values():
        assert r.head() == git(r.worktree, "rev-parse", "HEAD")


def test_enclosing_repository_of_a_root_inside_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "src").mkdir()
    assert [r.worktree for r in find_repositories(repo / "src")] == [repo]
    assert find_repositories(tmp_path / "repo" / "src")[0].head() == git(repo, "rev-parse", "HEAD")


def test_head_detached_packed_unborn_and_broken(tmp_path: Path) -> None:
    repo_path = make_repo(tmp_path / "repo")
    repo = repo_at(repo_path)
    assert repo is not None
    first = repo.head()
    (repo_path / "m0.py").write_text("X = 100\n")
    git(repo_path, "commit", "-qam", "two")
    assert repo.head() == git(repo_path, "rev-parse", "HEAD") != first
    git(repo_path, "pack-refs", "--all")
    assert not (repo_path / ".git" / "refs" / "heads" / "main").exists()
    assert repo.head() == git(repo_path, "rev-parse", "HEAD")
    assert repo.ref("refs/heads/main") == repo.head()
    git(repo_path, "checkout", "-q", "--detach", first or "")
    assert repo.head() == first
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    empty_repo = repo_at(empty)
    assert empty_repo is not None
    assert empty_repo.head() is None
    (empty / ".git").rename(empty / "moved")
    (empty / ".git").write_text("gitdir: nowhere\n")
    assert repo_at(empty) is None
    assert repo_at(tmp_path / "no-repo") is None


def test_settled_policy(tmp_path: Path) -> None:
    repo = repo_at(make_repo(tmp_path / "repo"))
    assert repo is not None
    assert is_settled(repo)
    (repo.gitdir / "index.lock").write_text("")
    assert git_state(repo).locks == ("index.lock",)
    assert not is_settled(repo)
    (repo.gitdir / "index.lock").unlink()
    for marker, op in [("MERGE_HEAD", "merge"), ("CHERRY_PICK_HEAD", "cherry-pick")]:
        (repo.gitdir / marker).write_text("0" * 40 + "\n")
        assert git_state(repo).operation == op
        assert not is_settled(repo)
        (repo.gitdir / marker).unlink()
    (repo.gitdir / "rebase-merge").mkdir()
    assert git_state(repo).operation == "rebase"
    (repo.gitdir / "rebase-merge").rmdir()
    (repo.gitdir / "BISECT_LOG").write_text("")
    assert is_settled(repo)  # bisect steps are real checkouts: they do not block


# -- the watcher ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_checkout_between_branches_with_many_files_is_one_move(tmp_path: Path, mode: str) -> None:
    repo = make_repo(tmp_path / "repo", files=300)
    main = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    for i in range(300):
        (repo / f"m{i}.py").write_text(f"X = {i} + 1\n")
    git(repo, "commit", "-qam", "feature")
    feature = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    with watching(repo, mode) as (watcher, moves):
        git(repo, "checkout", "-q", "feature")
        wait_until(lambda: moves.for_repo(repo), 10, message="git move")
        passes(watcher)
        assert moves.for_repo(repo) == [GitMove(repo, main, feature)]
        git(repo, "checkout", "-q", "main")
        wait_until(lambda: len(moves.for_repo(repo)) == 2, 10)
        assert moves.for_repo(repo)[1] == GitMove(repo, feature, main)
        git(repo, "checkout", "-q", "-b", "same-commit")  # HEAD's commit is unchanged
        passes(watcher)
        assert len(moves.for_repo(repo)) == 2


def test_commit_and_stash_are_moves(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    with watching(repo) as (_, moves):
        (repo / "m1.py").write_text("X = 'stashed'\n")
        git(repo, "stash", "-q")
        wait_until(lambda: moves.for_repo(repo), 10, message="stash move")
        assert moves.for_repo(repo) == [GitMove(repo, head, head)]
        git(repo, "stash", "pop", "-q")
        wait_until(lambda: len(moves.for_repo(repo)) == 2, 10, message="stash pop")
        git(repo, "commit", "-qam", "two")
        new = git(repo, "rev-parse", "HEAD")
        wait_until(lambda: GitMove(repo, head, new) in moves.for_repo(repo), 10)


def test_worktree_commit_is_a_move_of_that_worktree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    repo = make_repo(root / "repo")
    wt = root / "wt"
    git(repo, "worktree", "add", "-q", "-b", "side", str(wt))
    wt = wt.resolve()
    base = git(wt, "rev-parse", "HEAD")
    with watching(root) as (watcher, moves):
        assert {r.worktree for r in watcher.repositories()} == {repo, wt}
        (wt / "m0.py").write_text("X = 'side'\n")
        git(wt, "commit", "-qam", "side")
        side = git(wt, "rev-parse", "HEAD")
        wait_until(lambda: moves.for_repo(wt) == [GitMove(wt, base, side)], 10)
        assert moves.for_repo(repo) == []


def test_submodule_commit_is_a_move_of_the_submodule(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "submodule", "add", "-q", str(make_repo(tmp_path / "subsrc")), "sub")
    sub = repo / "sub"
    base = git(sub, "rev-parse", "HEAD")
    with watching(repo) as (_, moves):
        (sub / "m0.py").write_text("X = 'sub'\n")
        git(sub, "commit", "-qam", "in sub")
        new = git(sub, "rev-parse", "HEAD")
        wait_until(lambda: moves.for_repo(sub) == [GitMove(sub, base, new)], 10)


def test_a_locked_repository_is_reported_once_the_lock_goes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "other")
    (repo / "m0.py").write_text("X = 'other'\n")
    git(repo, "commit", "-qam", "ahead")
    ahead = git(repo, "rev-parse", "HEAD")
    git(repo, "reset", "-q", "--hard", head)
    with watching(repo) as (watcher, moves):
        lock = repo / ".git" / "index.lock"
        lock.write_text("")
        git(repo, "update-ref", "refs/heads/main", ahead)  # plumbing: needs no index lock
        passes(watcher, 3)
        assert moves.for_repo(repo) == []
        lock.unlink()
        wait_until(lambda: moves.for_repo(repo) == [GitMove(repo, head, ahead)], 10)


def test_a_stale_lock_does_not_block_forever(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    (repo / "m0.py").write_text("X = 'x'\n")
    git(repo, "commit", "-qam", "two")
    two = git(repo, "rev-parse", "HEAD")
    git(repo, "reset", "-q", "--hard", head)
    with watching(repo, stale_lock=0.3) as (_, moves):
        (repo / ".git" / "index.lock").write_text("")  # a crashed git left it behind
        git(repo, "update-ref", "refs/heads/main", two)
        wait_until(lambda: moves.for_repo(repo) == [GitMove(repo, head, two)], 10)


def test_a_rebase_stopped_at_a_conflict_is_reported_once_head_is_still(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-q", "-b", "topic")
    (repo / "m0.py").write_text("X = 'topic'\n")
    git(repo, "commit", "-qam", "topic")
    git(repo, "checkout", "-q", "main")
    (repo / "m0.py").write_text("X = 'main'\n")
    git(repo, "commit", "-qam", "main")
    main = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "topic")
    topic = git(repo, "rev-parse", "HEAD")
    with watching(repo) as (_, moves):
        with pytest.raises(subprocess.CalledProcessError):
            git(repo, "rebase", "main")  # stops at the conflict, HEAD detached on main
        repo_obj = repo_at(repo)
        assert repo_obj is not None
        assert git_state(repo_obj).operation == "rebase"
        wait_until(lambda: moves.for_repo(repo) == [GitMove(repo, topic, main)], 10)
        git(repo, "rebase", "--abort")
        wait_until(lambda: len(moves.for_repo(repo)) == 2, 10)
        assert moves.for_repo(repo)[1] == GitMove(repo, main, topic)


def test_our_own_reads_do_not_wake_the_checker_in_a_loop(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with watching(repo, safety_interval=60) as (watcher, moves):
        git(repo, "status", "--short")  # reads HEAD, may refresh the index: a few wake-ups at most
        git(repo, "log", "-1")
        start = watcher.checks
        watcher.poke()  # each pass reads HEAD and refs: that must not trigger the next pass
        wait_until(lambda: watcher.checks > start, 10)
        looping = wait_until(lambda: watcher.checks > start + 20, 1, raise_on_timeout=False)
        assert not looping
        assert moves.for_repo(repo) == []


def test_refresh_finds_new_repositories_quietly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with watching(root) as (watcher, moves):
        assert watcher.repositories() == []
        repo = make_repo(root / "new")
        watcher.refresh()
        assert [r.worktree for r in watcher.repositories()] == [repo]
        (repo / "m0.py").write_text("X = 'n'\n")
        git(repo, "commit", "-qam", "n")
        wait_until(lambda: len(moves.for_repo(repo)) == 1, 10)
        shutil.rmtree(repo)
        watcher.refresh()
        assert watcher.repositories() == []


def test_repo_dataclass_is_hashable(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path, tmp_path / ".git", tmp_path / ".git")
    assert {repo, repo} == {repo}


# -- holding restarts ------------------------------------------------------------------------------
def test_busy_marks_a_repository_at_work_and_reports_when_it_settles(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    elsewhere = tmp_path / "elsewhere.py"
    with watching(tmp_path, settle=0.05) as (watcher, moves):
        assert watcher.busy([repo / "m0.py"]) == []  # git is not at work: go ahead
        lock = repo / ".git" / "index.lock"
        lock.write_text("")  # git checkout -- . at work
        assert watcher.busy([repo / "m0.py"]) == [repo]
        assert watcher.busy([tmp_path]) == [repo]  # a touched directory holding the repository
        assert watcher.busy([elsewhere]) == []
        passes(watcher, 3)
        assert moves.settled == []  # still locked
        lock.unlink()
        wait_until(lambda: moves.settled == [repo], 10, message="settled")
        assert moves.for_repo(repo) == []  # nothing moved
        passes(watcher, 3)
        assert moves.settled == [repo]  # once per hold


def test_a_move_not_reported_yet_is_busy_then_reported_as_the_move(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    (repo / "m0.py").write_text("X = 'two'\n")
    git(repo, "commit", "-qam", "two")
    two = git(repo, "rev-parse", "HEAD")
    git(repo, "reset", "-q", "--hard", head)
    with watching(repo, settle=0.05) as (watcher, moves):
        lock = repo / ".git" / "index.lock"
        lock.write_text("")
        git(repo, "update-ref", "refs/heads/main", two)
        assert watcher.busy([repo / "m0.py"]) == [repo]
        lock.unlink()
        wait_until(lambda: moves.for_repo(repo) == [GitMove(repo, head, two)], 10)
        passes(watcher, 2)
        assert moves.settled == []  # the move released it
        assert watcher.busy([repo / "m0.py"]) == []


def test_a_lock_left_by_a_crashed_git_does_not_hold_restarts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with watching(repo) as (watcher, _):
        assert watcher.busy([repo / "m0.py"]) == []
