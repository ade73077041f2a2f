"""A second look at the caches of sources the daemon just invalidated.

A process importing a module while it is being edited can write the pyc *after* the daemon removed
the old one: it took the source's stat before the edit and read the old bytes, so the new pyc holds
the old code under a header that matches the edited source when its size is the same and its mtime
was restored. Such a pyc is newer than the source's ctime, so the ctime trigger of the audit never
fires again. Shortly after each invalidation, the caches of those sources are compared exactly with
the source (unmarshal + compile, in a checking process: a hostile pyc or source cannot harm the
daemon) and removed when they hold other code or cannot be loaded.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from cachewatchd.cache.checks import CheckPool
from cachewatchd.cache.judge import judge_pycache
from cachewatchd.cache.pyc import RUNNING_MAGIC, parse_cache_name
from cachewatchd.cache.remove import cache_files_for_source
from cachewatchd.cache.states import State, VanishedError

__all__ = ["DELAYS", "Rechecker"]

DELAYS = (1.0, 10.0)
"""Seconds after an invalidation at which its source's caches are checked again."""


class Rechecker:
    """Sources due for a second look; thread-safe (scheduled by the batcher, run by the loop)."""

    def __init__(self, *, pycache_prefix: Path | None, delays: Iterable[float] = DELAYS) -> None:
        self._prefix = pycache_prefix
        self._delays = tuple(delays)
        self._due: dict[Path, list[float]] = {}
        self._lock = threading.Lock()
        self._checks: CheckPool | None = None
        self._burst: set[Path] = set()
        """Sources handed out by the last :meth:`take_due` not checked yet: one checking process
        serves them all, stopped when the last is done (or at the next :meth:`take_due`)."""

    def schedule(self, sources: Iterable[Path], now: float | None = None) -> None:
        start = time.monotonic() if now is None else now
        with self._lock:
            for source in sources:
                self._due[source] = [start + delay for delay in self._delays]

    def next_due(self) -> float | None:
        with self._lock:
            return min((times[0] for times in self._due.values()), default=None)

    def take_due(self, now: float | None = None) -> list[Path]:
        """Sources whose next look is due; each keeps its later looks."""
        moment = time.monotonic() if now is None else now
        due = []
        with self._lock:
            for source, times in list(self._due.items()):
                if times[0] <= moment:
                    due.append(source)
                    times.pop(0)
                    if not times:
                        del self._due[source]
        self._end_burst()
        self._burst = set(due)
        return due

    def wrong_caches(self, source: Path) -> list[Path]:
        """Cache files of *source* written by this Python whose code differs from the source, or
        that CPython cannot load. The sources of one :meth:`take_due` share a checking process."""
        try:
            return self._wrong_caches(source)
        finally:
            self._burst.discard(source)
            if not self._burst:
                self._end_burst()

    def _wrong_caches(self, source: Path) -> list[Path]:
        try:
            stat = os.stat(source)
        except OSError:
            return []
        wrong = []
        for pyc in cache_files_for_source(source, pycache_prefix=self._prefix):
            parsed = parse_cache_name(pyc.name)
            if parsed is None or not _ours(pyc):
                continue
            if self._checks is None:  # unmarshal and compile out of this process
                self._checks = CheckPool()
            try:
                verdict = judge_pycache(
                    str(pyc),
                    str(source),
                    stat,
                    parsed.tag,
                    parsed.opt,
                    checks=self._checks,
                    deep=True,
                )
            except (VanishedError, OSError):
                continue
            if verdict.state in (State.STALE, State.CORRUPT):
                wrong.append(pyc)
        return wrong

    def _end_burst(self) -> None:
        self._burst = set()
        if self._checks is not None:
            self._checks.close()
            self._checks = None


def _ours(pyc: Path) -> bool:
    """A regular file starting with this Python's magic; never blocks (a FIFO is not a pyc)."""
    try:
        fd = os.open(pyc, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 4) == RUNNING_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)
