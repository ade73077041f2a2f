"""Stale processes: a process that imported the code before the code last changed.

The process that imports the code is the worker or the spawned child, not a reloader or master:
the leaves of the target's process tree. It is stale when its ``create_time`` is older than the
newest ``max(st_mtime, st_ctime)`` of the sources under its root, with 1 s of slack
(Linux create_time is coarse). ``utime`` cannot set ctime, so restored mtimes are caught too.

The sources are found by the walk every component shares (:func:`cachewatchd.cache.walk.walk`): version
control and tool caches, virtual environments (by their ``pyvenv.cfg``) and the root's own exclude
globs are left out. :func:`scan_sources` is the one implementation, for the daemon's
:class:`SourceClock` and for ``doctor``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

from cachewatchd.cache.pyc import SOURCE_SUFFIXES
from cachewatchd.cache.walk import WalkOptions, walk
from cachewatchd.paths import is_under

__all__ = [
    "SLACK",
    "Change",
    "SourceClock",
    "SourceScan",
    "importers",
    "predates",
    "scan_sources",
    "stale_reason",
]

SLACK = 1.0
"""Seconds a process may predate a change and still count as fresh."""

_HELPERS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "semaphore_tracker",
    "__cachewatchd_preloader__",  # a warm-restart preloader: never imports the project's code
)


@dataclass(frozen=True)
class Change:
    """The newest change to a source: when (epoch seconds) and which file."""

    time: float
    path: Path


@dataclass
class SourceScan:
    """What a walk of the roots found: the newest source change, and how many directories."""

    newest: Change | None = None
    directories: int = 0


def _changed_at(path: str | os.PathLike[str]) -> float | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return max(st.st_mtime, st.st_ctime)


def _unreadable(_path: str, _exc: OSError) -> None:
    """An unreadable directory holds no source we could date: skip it."""


def scan_sources(roots: Mapping[Path, Sequence[str]]) -> SourceScan:
    """Walk each root with its exclude globs: the newest source change under any of them."""
    scan = SourceScan()
    for root, excludes in roots.items():
        options = WalkOptions(excludes=tuple(excludes))
        for _dirpath, entries in walk(str(root), options, _unreadable):
            scan.directories += 1
            for entry in entries:
                if not entry.name.endswith(SOURCE_SUFFIXES):
                    continue
                when = _changed_at(entry.path)
                if when is not None and (scan.newest is None or when > scan.newest.time):
                    scan.newest = Change(when, Path(entry.path))
    return scan


class SourceClock:
    """The newest source change per root: one walk per root, then updated from touched paths."""

    def __init__(self, excludes: Mapping[Path, Sequence[str]] | None = None) -> None:
        self._excludes = dict(excludes or {})
        """Exclude globs per root: a walked root uses those of the root it lies in."""
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()  # one walk at a time: workers share roots
        self._newest: dict[Path, Change | None] = {}
        self._walking: Path | None = None
        self._early: list[Change] = []
        """Changes touched under the root being walked, while it is walked: the walk may have
        dated them before they changed."""

    def scan(self, root: Path) -> None:
        """Walk *root* once (later calls are free)."""
        with self._scan_lock:
            with self._lock:
                if root in self._newest:
                    return
                self._walking, self._early = root, []
            found = scan_sources({root: self._excludes_of(root)}).newest
            with self._lock:
                changes = [c for c in (found, *self._early) if c is not None]
                newest = max(changes, key=lambda c: c.time) if changes else None
                self._newest.setdefault(root, newest)
                self._walking, self._early = None, []

    def _excludes_of(self, root: Path) -> Sequence[str]:
        within = [known for known in self._excludes if is_under(root, known)]
        return self._excludes[max(within, key=lambda p: len(p.parts))] if within else ()

    def touch(self, paths: Iterable[Path]) -> None:
        """Record changes to *paths* (a deleted source counts as changed now)."""
        for path in paths:
            if path.suffix not in SOURCE_SUFFIXES:
                continue
            when = _changed_at(path)
            change = Change(time.time() if when is None else when, path)
            with self._lock:
                if self._walking is not None and is_under(path, self._walking):
                    self._early.append(change)
                for root, known in self._newest.items():
                    if is_under(path, root) and (known is None or change.time > known.time):
                        self._newest[root] = change

    def newest(self, roots: Sequence[Path]) -> Change | None:
        """The newest change under any of *roots* (scanning those not seen yet)."""
        for root in roots:
            self.scan(root)
        with self._lock:
            known = [self._newest.get(r) for r in roots]
        changes = [c for c in known if c is not None]
        return max(changes, key=lambda c: c.time) if changes else None


def importers(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes that run the code: leaves of each tree, minus multiprocessing helpers."""
    found: list[psutil.Process] = []
    for proc in procs:
        try:
            tree = [proc, *proc.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for member in tree:
            try:
                if member.children() or member.status() == psutil.STATUS_ZOMBIE:
                    continue
                joined = " ".join(member.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if not any(helper in joined for helper in _HELPERS):
                found.append(member)
    return found


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def predates(started: float, newest: Change | None, slack: float = SLACK) -> bool:
    """The staleness rule: a process started at *started* (``create_time``) predates *newest*."""
    return newest is not None and started < newest.time - slack


def stale_reason(
    procs: Iterable[psutil.Process], newest: Change | None, slack: float = SLACK
) -> str | None:
    """Why the code-importing process of *procs* is stale, or ``None`` when it is not."""
    if newest is None:
        return None
    for proc in importers(procs):
        try:
            started = proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if predates(started, newest, slack):
            return (
                f"pid {proc.pid} started {_iso(started)}, before {newest.path} "
                f"changed at {_iso(newest.time)}"
            )
    return None
