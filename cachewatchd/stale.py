"""Stale processes: a process that imported the code before the code last changed.

The process that imports the code is the worker or the spawned child, not a reloader or master:
the leaves of the target's process tree. It is stale when its ``create_time`` is older than the
newest ``max(st_mtime, st_ctime)`` of the ``.py`` sources under its root, with 1 s of slack
(Linux create_time is coarse). ``utime`` cannot set ctime, so restored mtimes are caught too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

from cachewatchd.paths import is_under

__all__ = ["SLACK", "Change", "SourceClock", "importers", "stale_reason"]

SLACK = 1.0
"""Seconds a process may predate a change and still count as fresh."""

_SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        "node_modules",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "site-packages",
        "dist-packages",
    }
)
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "semaphore_tracker")


@dataclass(frozen=True)
class Change:
    """The newest change to a source: when (epoch seconds) and which file."""

    time: float
    path: Path


def _changed_at(path: Path) -> float | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return max(st.st_mtime, st.st_ctime)


def _scan(root: Path) -> Change | None:
    newest: Change | None = None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = Path(dirpath, name)
            when = _changed_at(path)
            if when is not None and (newest is None or when > newest.time):
                newest = Change(when, path)
    return newest


class SourceClock:
    """The newest source change per root: one walk per root, then updated from touched paths."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()  # one walk at a time: workers share roots
        self._newest: dict[Path, Change | None] = {}

    def scan(self, root: Path) -> None:
        """Walk *root* once (later calls are free)."""
        with self._scan_lock:
            with self._lock:
                if root in self._newest:
                    return
            found = _scan(root)
            with self._lock:
                self._newest.setdefault(root, found)

    def touch(self, paths: Iterable[Path]) -> None:
        """Record changes to *paths* (a deleted source counts as changed now)."""
        for path in paths:
            if path.suffix not in (".py", ".pyw"):
                continue
            when = _changed_at(path)
            change = Change(time.time() if when is None else when, path)
            with self._lock:
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
        if started < newest.time - slack:
            return (
                f"pid {proc.pid} started {_iso(started)}, before {newest.path} "
                f"changed at {_iso(newest.time)}"
            )
    return None
