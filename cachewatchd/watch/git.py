"""git repositories under the roots: notice when HEAD moves, and report it once git has settled.

Finding the repositories and reading HEAD without running git: :mod:`cachewatchd.watch.gitrepo`.

When is a git operation *settled*?

- ``index.lock`` or ``HEAD.lock`` present: git is writing right now. Wait (a lock older than
  ``stale_lock`` seconds while nothing moves is taken as left behind by a crashed git, and ignored).
- ``rebase-merge/``, ``rebase-apply/``, ``MERGE_HEAD``, ``CHERRY_PICK_HEAD``, ``REVERT_HEAD``,
  ``sequencer/``: a multi-step operation is under way. It blocks only while HEAD keeps moving: a rebase
  stopped at a conflict can stay for hours while the user runs the code, so once HEAD has been still for
  ``operation_quiet`` seconds the move is reported anyway.
- ``BISECT_LOG`` does not block: every bisect step is a real checkout that the user is about to test.
- Between the phases of one command (``git stash``, ``git pull``, a rebase's last pick) git pauses
  for a moment: a move is settled only once no lock was seen and HEAD was still for ``settle``
  seconds.

The watcher reports one :class:`~cachewatchd.watch.batch.GitMove` per settled change of HEAD's commit or of
``refs/stash`` (``git stash`` rewrites the work tree without moving HEAD).

Holding restarts: :meth:`GitWatcher.busy` tells the daemon, at the moment it is about to restart,
whether git is at work in a repository covering the touched paths (a lock, an operation moving
HEAD, a move not settled or not reported yet). The daemon then holds the restart, and the watcher
reports, once that repository is settled, either the move or (nothing moved: ``git checkout --
.``, ``git reset --hard`` to the same commit) ``git_settled``; the batch that carries it releases
the held restart. So one git operation is one restart.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.log import get_logger
from cachewatchd.paths import is_under
from cachewatchd.threads import daemon_thread
from cachewatchd.watch.batch import GitMove
from cachewatchd.watch.events import Poke, event_filter
from cachewatchd.watch.gitrepo import GitRepo, GitState, find_repositories, git_state
from cachewatchd.watch.mounts import PollMode, choose_observer
from cachewatchd.watch.polling import bounded_interval

__all__ = [
    "GitMove",
    "GitSink",
    "GitWatcher",
]


class GitSink(Protocol):
    """Where moves go: a :class:`cachewatchd.watch.batch.Batcher`."""

    def git_moved(self, move: GitMove) -> None: ...
    def git_settled(self, repo: Path) -> None: ...


Fingerprint = tuple[str | None, str | None]
"""(HEAD's commit, refs/stash's commit)."""


def fingerprint(repo: GitRepo) -> Fingerprint:
    return repo.head(), repo.ref("refs/stash")


class _Verdict(enum.Enum):
    IDLE = "idle"
    """Nothing moved and git is not at work."""
    BUSY = "busy"
    """git is at work, or was a moment ago."""
    MOVE = "move"
    """A settled move, to be reported."""


@dataclass
class _Track:
    repo: GitRepo
    emitted: Fingerprint
    seen: Fingerprint
    seen_at: float
    """When the fingerprint last changed (a repository found counts as still since long ago)."""
    active_at: float
    """When git was last seen at work (a fresh lock)."""
    held: bool = False
    """The daemon holds a restart for this repository: report when it settles."""


class GitWatcher:
    """Report settled moves of every repository under the roots to *sink*.

    Native roots get a non-recursive watchdog watch on each git dir (every porcelain command touches
    ``index.lock``, ``HEAD`` or ``ORIG_HEAD`` there), which only wakes the checker; every repository is
    also checked every *safety_interval* seconds (every *poll_interval* on a polled filesystem), which
    catches plumbing such as ``git update-ref`` run from elsewhere. Checking reads a few small files.
    """

    def __init__(
        self,
        roots: Sequence[Path],
        *,
        sink: GitSink,
        poll_mode: PollMode = "auto",
        poll_interval: float = 1.0,
        safety_interval: float = 5.0,
        operation_quiet: float = 1.0,
        stale_lock: float = 30.0,
        settle: float = 0.2,
        options: WalkOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._roots = [Path(os.path.realpath(r)) for r in roots]
        self._sink = sink
        self._poll_mode: PollMode = poll_mode
        self._poll_interval = bounded_interval(poll_interval)  # its wait must never overflow
        self._safety_interval = safety_interval
        self._operation_quiet = operation_quiet
        self._stale_lock = stale_lock
        self._settle = settle
        self._options = options or WalkOptions()
        self._clock = clock
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        """Held while tracks are judged (the checker thread, and :meth:`busy` from the batcher)."""
        self._tracks: dict[Path, _Track] = {}
        self._polled = False
        self._observer: Any = None
        self._watched: dict[Path, Any] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._checks = 0
        self._thread = daemon_thread(self._run, "cachewatchd-git")
        self._log = get_logger(__name__)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            observer, self._observer = self._observer, None
            self._watched.clear()
        if observer is not None:
            observer.stop()
            if observer.ident is not None:
                observer.join()

    def repositories(self) -> list[GitRepo]:
        with self._lock:
            return [t.repo for t in self._tracks.values()]

    @property
    def checks(self) -> int:
        """How many checking passes ran (lets tests wait for a pass instead of sleeping)."""
        with self._lock:
            return self._checks

    def poke(self) -> None:
        """Check every repository now (something in a git dir changed)."""
        self._wake.set()

    def refresh(self) -> None:
        """Find the repositories again (new clones, removed work trees); new ones start quiet."""
        repos: dict[Path, GitRepo] = {}
        for root in self._roots:
            for repo in find_repositories(root, self._options):
                repos[repo.worktree] = repo
        long_ago = self._clock() - max(self._stale_lock, self._operation_quiet, self._settle)
        with self._lock:
            for key in list(self._tracks):
                if key not in repos:
                    del self._tracks[key]
            for key, repo in repos.items():
                if key not in self._tracks:
                    fp = fingerprint(repo)
                    self._tracks[key] = _Track(repo, fp, fp, long_ago, long_ago)
        self._watch_gitdirs(list(repos.values()))

    # -- watching git dirs -----------------------------------------------------------------------
    def _watch_gitdirs(self, repos: list[GitRepo]) -> None:
        polled = False
        for repo in repos:
            if choose_observer(repo.gitdir, self._poll_mode).kind == "polling":
                polled = True
                continue
            for directory in {repo.gitdir, repo.commondir}:
                if not self._schedule(directory):
                    polled = True
        self._polled = polled

    def _schedule(self, directory: Path) -> bool:
        with self._lock:
            if directory in self._watched:
                return True
            if self._stopping.is_set():
                return False
            if self._observer is None:
                from watchdog.observers import Observer

                self._observer = Observer()
                self._observer.start()
            try:
                watch = self._observer.schedule(
                    Poke(self._wake),
                    str(directory),
                    recursive=False,
                    event_filter=event_filter(attrib=False),
                )
            except OSError as exc:
                self._log.debug("git-dir-unwatched", path=str(directory), error=str(exc))
                return False
            self._watched[directory] = watch
            return True

    # -- the checker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        pending = False
        while not self._stopping.is_set():
            if pending:
                timeout = min(0.05, self._operation_quiet)
            else:
                timeout = self._poll_interval if self._polled else self._safety_interval
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping.is_set():
                return
            pending = self._check_all()

    def _check_all(self) -> bool:
        """Check every repository; True while one of them waits for git to settle."""
        with self._lock:
            tracks = list(self._tracks.values())
        pending = False
        with self._check_lock:
            for track in tracks:
                verdict, fp = self._assess(track, self._clock())
                if verdict is _Verdict.MOVE:
                    old, track.emitted, track.held = track.emitted[0], fp, False
                    self._sink.git_moved(GitMove(track.repo.worktree, old, fp[0]))
                elif verdict is _Verdict.IDLE and track.held:
                    track.held = False
                    self._sink.git_settled(track.repo.worktree)
                pending = pending or verdict is _Verdict.BUSY or track.held
        with self._lock:
            self._checks += 1
        return pending

    def busy(self, paths: Collection[Path]) -> list[Path]:
        """The work trees covering any of *paths* (or below one of them) where git is at work or
        a move is not reported yet. Each is marked: the checker reports its move, or
        ``git_settled``, once it is settled."""
        with self._lock:
            tracks = list(self._tracks.values())
        busy = []
        with self._check_lock:
            for track in tracks:
                tree = track.repo.worktree
                if not any(is_under(p, tree) or is_under(tree, p) for p in paths):
                    continue
                if self._assess(track, self._clock())[0] is not _Verdict.IDLE:
                    track.held = True
                    busy.append(tree)
        if busy:
            self._wake.set()
        return busy

    def _assess(self, track: _Track, now: float) -> tuple[_Verdict, Fingerprint]:
        """Where *track* stands now (see the module docstring for the policy)."""
        fp = fingerprint(track.repo)
        if fp != track.seen:
            track.seen, track.seen_at = fp, now
        state = git_state(track.repo)
        if state.locks and not self._stale(state, track, now):
            track.active_at = now
            return _Verdict.BUSY, fp
        if state.operation is not None and now - track.seen_at < self._operation_quiet:
            return _Verdict.BUSY, fp
        if now - track.active_at < self._settle:
            return _Verdict.BUSY, fp
        if fp == track.emitted:
            return _Verdict.IDLE, fp
        if now - track.seen_at < self._settle:
            return _Verdict.BUSY, fp
        return _Verdict.MOVE, fp

    def _stale(self, state: GitState, track: _Track, now: float) -> bool:
        """The locks were left behind by a crashed git: the youngest is older than
        ``stale_lock`` seconds and nothing moved for as long."""
        age = state.lock_age
        return (
            age is not None and age >= self._stale_lock and now - track.seen_at >= self._stale_lock
        )
