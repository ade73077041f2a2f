"""One git operation, one restart: the real daemon, real git, an own child counting its starts.

The child appends a line to a file each time it starts, so its generations are counted from the
outside. After each operation the test waits until the daemon is quiet (the git watcher reported
the move, the batcher idle, nothing held, the target running with no request pending), then
counts: exactly one more generation. Before restarts were held, a checkout restarted once per
batch closing in one of git's pauses, and once more for ``git-moved``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cachewatchd.daemon.loop import Daemon
from cachewatchd.watch.git import fingerprint
from tests.support.inproc import running_daemon
from tests.support.pycs import write
from tests.support.wait import git, wait_until

CHILD = (
    "import signal, sys\n"
    "with open(sys.argv[1], 'a') as log:\n"
    "    log.write('started\\n')\n"
    "signal.pause()\n"
)
MODULES = 150


def generations(log: Path) -> int:
    try:
        return len(log.read_text().splitlines())
    except FileNotFoundError:
        return 0


def fill(repo: Path, version: str) -> None:
    for i in range(MODULES):
        write(repo / "pkg" / f"d{i % 10}" / f"m{i}.py", f"X = {version!r}\nN = {i}\n")
    for d in range(10):
        write(repo / "pkg" / f"d{d}" / "__init__.py", "")


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@example.com")


@pytest.fixture
def upstream(tmp_path: Path, xdg: None) -> Path:
    """A repository with branches ``main`` and ``other`` differing in every module."""
    up = tmp_path.resolve() / "upstream"
    up.mkdir()
    git(up, "init", "-q", "-b", "main")
    write(up / ".gitignore", "__pycache__/\n")
    fill(up, "a")
    commit_all(up, "a")
    git(up, "checkout", "-qb", "other")
    fill(up, "b")
    commit_all(up, "b")
    git(up, "checkout", "-q", "main")
    return up


@pytest.fixture
def repo(tmp_path: Path, upstream: Path) -> Path:
    clone = tmp_path.resolve() / "work"
    git(tmp_path, "clone", "-q", str(upstream), str(clone))
    git(clone, "branch", "-q", "other", "origin/other")
    return clone


@pytest.fixture
def daemon(repo: Path, tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    log = tmp_path / "generations.log"
    with running_daemon(repo, child=(sys.executable, "-c", CHILD, str(log))) as d:
        wait_until(lambda: generations(log) == 1, 20, message="the own child")
        yield d, log


def quiet(daemon: Daemon) -> bool:
    """Nothing pending anywhere between git and the child: every move reported, the batcher
    idle, nothing held, the target running with no request pending."""
    (target,) = daemon.status()["processes"]
    watching = daemon._watching
    assert watching is not None
    tracks = [t for g in watching.gits for t in list(g._tracks.values())]
    return (
        all(t.emitted == fingerprint(t.repo) and not t.held for t in tracks)
        and daemon._batcher.idle()
        and not daemon._hold.held
        and target["state"] == "running"
        and not target["pending"]
    )


def settled(daemon: Daemon, moves: int) -> Callable[[], bool]:
    def check() -> bool:
        return daemon.status()["counters"]["git_moves"] >= moves and quiet(daemon)

    return check


def once(daemon: Daemon, log: Path, operation: Callable[[], object], what: str) -> None:
    before = generations(log)
    moves = daemon.status()["counters"]["git_moves"]
    operation()
    wait_until(lambda: generations(log) > before, 30, message=f"a restart after {what}")
    wait_until(settled(daemon, moves + 1), 30, message=f"the daemon quiet after {what}")
    assert generations(log) == before + 1, f"{what}: {generations(log) - before} restarts"


def test_one_restart_per_git_operation(
    daemon: tuple[Daemon, Path], repo: Path, upstream: Path
) -> None:
    d, log = daemon
    first = git(repo, "rev-parse", "HEAD").strip()
    once(d, log, lambda: git(repo, "checkout", "-q", "other"), "checkout")
    once(d, log, lambda: git(repo, "switch", "-q", "main"), "switch")
    once(d, log, lambda: git(repo, "reset", "-q", "--hard", "other"), "reset --hard")
    once(d, log, lambda: git(repo, "reset", "-q", "--hard", first), "reset --hard back")

    for i in range(0, MODULES, 3):
        (repo / "pkg" / f"d{i % 10}" / f"m{i}.py").write_text(f"X = 'edited'\nN = {i}\n")
    wait_until(lambda: generations(log) >= 3 + 2 and quiet(d), 30, message="the edits")
    once(d, log, lambda: git(repo, "stash", "-q"), "stash")
    once(d, log, lambda: git(repo, "stash", "pop", "-q"), "stash pop")
    git(repo, "checkout", "-q", "--", ".")  # discards the edits: no move, settled by itself
    wait_until(lambda: quiet(d) and generations(log) >= 7, 30, message="the discard")

    fill(upstream, "c")
    commit_all(upstream, "c")
    once(d, log, lambda: git(repo, "pull", "-q", "--ff-only"), "pull")

    git(repo, "checkout", "-q", "-b", "topic")
    (repo / "pkg" / "d0" / "m0.py").write_text("X = 'topic'\nN = 0\n")
    commit_all(repo, "topic")
    git(repo, "checkout", "-q", "main")
    for i in range(1, MODULES):
        (repo / "pkg" / f"d{i % 10}" / f"m{i}.py").write_text(f"X = 'd'\nN = {i}\n")
    commit_all(repo, "d")
    git(repo, "checkout", "-q", "topic")
    wait_until(settled(d, 0), 30)  # the edits and checkouts above restarted: not counted here
    once(d, log, lambda: git(repo, "rebase", "-q", "main"), "rebase")


def test_a_restart_held_for_a_git_report_that_never_comes_goes_after_report_max(
    tmp_path: Path, xdg: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Git is at work where a source changed: the restart is held for git's report. When git
    stops without a batch reporting it (and nothing else changes), the loop offers the hold again
    itself, so the restart goes :data:`~cachewatchd.daemon.hold.REPORT_MAX` after git went idle,
    not at the next change, whenever that is."""
    root = tmp_path.resolve() / "proj"
    write(root / "pkg" / "mod.py", "X = 1\n")
    at_work = [True]
    monkeypatch.setattr(Daemon, "_git_busy", lambda self, paths: [root] if at_work[0] else [])
    log = tmp_path / "generations.log"
    with running_daemon(root, child=(sys.executable, "-c", CHILD, str(log))) as daemon:
        wait_until(lambda: generations(log) == 1, 20, message="the own child")
        write(root / "pkg" / "mod.py", "X = 2\n")
        wait_until(lambda: bool(daemon._hold.held), 20, message="the restart held")
        at_work[0] = False  # git is done; no batch will say so
        wait_until(lambda: generations(log) == 2, 30, message="the held restart")
        assert not daemon._hold.held
