"""Exact checks of the pycs that appear under the daemon's roots, and a second look at the caches
of sources the daemon just invalidated.

Every pyc written under a root (``__pycache__``, a legacy pyc) or in a root's mirror in the
prefix tree (:mod:`cachewatchd.watch.prefix_watch`) is compared with its source when it appears (:meth:`Rechecker.verify`: an audit of that one file
with ``deep``, through the verification index), so a pyc written with the old code is caught the
moment it is written, and its result is remembered for the audits after.

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

from cachewatchd.cache.auditor import Auditor
from cachewatchd.cache.checks import CheckPool
from cachewatchd.cache.judge import judge_pycache
from cachewatchd.cache.plan import AuditOptions
from cachewatchd.cache.pyc import (
    LEGACY_SUFFIXES,
    SOURCE_SUFFIXES,
    parse_cache_name,
    version_of_magic,
)
from cachewatchd.cache.remove import cache_files_for_source
from cachewatchd.cache.states import State, VanishedError

__all__ = ["DELAYS", "Rechecker"]

DELAYS = (1.0, 10.0)
"""Seconds after an invalidation at which its source's caches are checked again."""


class Rechecker:
    """Sources due for a second look; thread-safe (scheduled by the batcher, run by the loop)."""

    def __init__(
        self,
        *,
        pycache_prefix: Path | None,
        delays: Iterable[float] = DELAYS,
        ctime_untrusted: tuple[Path, ...] = (),
    ) -> None:
        self._prefix = pycache_prefix
        self._untrusted = ctime_untrusted
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

    def adopt(self, other: Rechecker) -> None:
        """Take over *other*'s looks still due (a reload replaces the handler that holds them)."""
        with other._lock:
            taken, other._due = other._due, {}
        with self._lock:
            for source, times in taken.items():
                self._due.setdefault(source, times)

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

    def verify(self, pycs: Iterable[Path]) -> dict[Path, Path]:
        """Compare each pyc just written with its source (one checking process for them all):
        the stale ones (other code than the source's, which Python would run) with their
        source. Other verdicts are left to the audits: a pyc still being written by a tool that
        does not write atomically may look corrupt for a moment."""
        options = AuditOptions(
            deep=True, pycache_prefix=self._prefix, ctime_untrusted=self._untrusted
        )
        prefix = None if self._prefix is None else str(self._prefix)
        with Auditor(options, dedup=False) as auditor:
            for pyc in dict.fromkeys(pycs):
                _verify_one(auditor, str(pyc), prefix)
            rows, _, _, _ = auditor.take()
        return {
            Path(path): Path(source)
            for path, source, state, *_ in rows
            if state == State.STALE.value and source is not None
        }

    def wrong_caches(self, source: Path, files: list[Path] | None = None) -> list[Path]:
        """Cache files of *source* written by a CPython whose code differs from the source, or
        that CPython cannot load (each compared by its own interpreter, when installed: the app
        may run another version than the daemon). The sources of one :meth:`take_due` share the
        checking processes. *files*: the source's cache files, when the caller listed them
        (:func:`~cachewatchd.cache.remove.cache_files_by_source`: one listing per directory)."""
        try:
            return self._wrong_caches(source, files)
        finally:
            self._burst.discard(source)
            if not self._burst:
                self._end_burst()

    def _wrong_caches(self, source: Path, files: list[Path] | None) -> list[Path]:
        if files is None:
            files = cache_files_for_source(source, pycache_prefix=self._prefix)
        if not files:
            return []
        try:
            stat = os.stat(source)
        except OSError:
            return []
        wrong = []
        for pyc in files:
            parsed = parse_cache_name(pyc.name)
            if parsed is None or not _cpython(pyc):
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


def _verify_one(auditor: Auditor, pyc: str, prefix: str | None) -> None:
    """Queue the exact check of *pyc* in *auditor*: a ``__pycache__`` pyc, a prefix-tree pyc (its
    source in the directory it mirrors), or a legacy pyc beside its source."""
    directory, name = os.path.split(pyc)
    if not name.endswith(LEGACY_SUFFIXES):
        return
    if os.path.basename(directory) == "__pycache__":
        auditor.cached(pyc, name, os.path.dirname(directory), None, "pycache")
    elif prefix is not None and (directory + os.sep).startswith(prefix.rstrip(os.sep) + os.sep):
        mirrored = os.sep + os.path.relpath(directory, prefix) if directory != prefix else os.sep
        auditor.cached(pyc, name, os.path.normpath(mirrored), None, "prefix")
    else:
        try:
            entries = {e.name: e for e in os.scandir(directory)}
        except OSError:
            return
        stem = name[: -len(".pyc")]
        sources = {n: e for s in SOURCE_SUFFIXES if (e := entries.get(n := stem + s))}
        if name in entries:
            auditor.legacy(entries[name], sources, directory)


def _cpython(pyc: Path) -> bool:
    """A regular file starting with a CPython's magic; never blocks (a FIFO is not a pyc)."""
    try:
        fd = os.open(pyc, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and version_of_magic(os.read(fd, 4)) is not None
    except OSError:
        return False
    finally:
        os.close(fd)
