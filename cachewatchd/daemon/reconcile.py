"""The daemon's reconciliation by stat-only deltas: re-judge only the directories that changed.

A rescan of a root (start, reload, overflow, the periodic reconciliation) walks the root and
takes, per directory, a fingerprint of what the audit of that directory reads: the name, inode,
size, ``mtime_ns`` and ``ctime_ns`` of its sources and legacy pycs, and of its ``__pycache__``
directory. A directory whose fingerprint is the one remembered from an earlier rescan is not
judged again: no pyc header is read. Every change to a file changes its ctime (which no user can
set), so an edit that events missed still changes its directory's fingerprint; a pyc written,
replaced (CPython writes a temporary file and renames it) or removed changes its
``__pycache__``'s.

A pyc rewritten in place (no writer of pycs does that, but a disk or a tool may) changes only its
own stat: each rescan also takes the stat of every pyc in one directory of :data:`ROTATION`, a
different one each time, so such a change is found within ``ROTATION`` rescans (an hour at the
default interval) while a rescan of an unchanged tree stats half as many files.

A directory is remembered only when every file in it was older than :data:`SETTLED_NS` at the
time it was judged (a verdict about files written a moment ago may be the racy kind, to be looked
at again), and never on filesystems whose ctime cannot be trusted
(:attr:`~cachewatchd.cache.plan.AuditOptions.ctime_untrusted`) or with a ``PYTHONPYCACHEPREFIX``
tree (its mirrors are not walked here): those are audited whole each time.
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

from cachewatchd.cache.audit import AuditReport, audit, build_report
from cachewatchd.cache.auditor import Auditor
from cachewatchd.cache.plan import AuditOptions
from cachewatchd.cache.pyc import LEGACY_SUFFIXES, SOURCE_SUFFIXES
from cachewatchd.cache.walk import walk_stack
from cachewatchd.paths import is_under

__all__ = ["ROTATION", "SETTLED_NS", "Sweeper"]

SETTLED_NS = 2_000_000_000
"""A directory is remembered only when all its files are at least this old (ns)."""
ROTATION = 6
"""Each rescan stats the pycs themselves in one directory of this many."""

_Known = tuple[int, int]
"""(fingerprint without the pycs' own stats, fingerprint of the pycs' stats)."""


class Sweeper:
    """Audits roots, re-judging only the directories whose stat fingerprint changed. Not
    thread-safe: the batcher thread is its one caller."""

    def __init__(self, options: AuditOptions) -> None:
        self._options = options
        self._known: dict[Path, dict[str, _Known]] = {}
        """Root -> directory -> fingerprints of the last judged, settled state."""
        self._sweeps = 0
        self.judged = 0
        """Directories judged by the last :meth:`audit` (the others were unchanged)."""
        self.unchanged = 0
        """Directories skipped by the last :meth:`audit`."""

    def forget(self) -> None:
        self._known.clear()

    def audit(self, root: Path, options: AuditOptions | None = None) -> AuditReport:
        """Judge *root*'s entries, skipping directories unchanged since they were last judged.
        The report has the entries of the judged directories only (fresh ones are counted).
        *options* (default: the sweeper's) may differ per audit (``deep`` for the periodic one)."""
        options = self._options if options is None else options
        if options.pycache_prefix is not None or any(
            is_under(root, p) or is_under(p, root) for p in options.ctime_untrusted
        ):
            self.judged, self.unchanged = -1, 0
            return audit([root], options)
        before = self._known.get(root, {})
        after: dict[str, _Known] = {}
        judged = unchanged = 0
        self._sweeps += 1
        with Auditor(options) as auditor:
            top = [(str(root), "")]
            for dirpath, entries in walk_stack(
                top, auditor.excluder, auditor.on_error, top_is_root=True
            ):
                settled = time.time_ns() - SETTLED_NS
                known = before.get(dirpath)
                light = _fingerprint(dirpath, entries, settled)
                if known is not None and light == known[0]:
                    rotate = (zlib.crc32(dirpath.encode()) + self._sweeps) % ROTATION == 0
                    if not rotate:
                        after[dirpath] = known
                        unchanged += 1
                        continue
                    if _pycs(dirpath, settled) == known[1]:
                        after[dirpath] = known
                        unchanged += 1
                        continue
                auditor.directory(dirpath, entries)
                judged += 1
                pycs = _pycs(dirpath, settled)
                if light is not None and pycs is not None:
                    after[dirpath] = (light, pycs)
            result = auditor.take()
        self._known[root] = after
        self.judged, self.unchanged = judged, unchanged
        return build_report([root], [result])


def _fingerprint(dirpath: str, entries: list[os.DirEntry[str]], settled: int) -> int | None:
    """A hash of the stats of *dirpath*'s sources, legacy pycs and ``__pycache__``; None when one
    is newer than *settled* (ns) or cannot be stat'ed."""
    items: list[tuple[str, int, int, int, int]] = []
    try:
        for entry in entries:
            name = entry.name
            if name.endswith((*SOURCE_SUFFIXES, *LEGACY_SUFFIXES)):
                st = entry.stat()  # as the auditor does: shared by the DirEntry's cache
            elif name == "__pycache__":
                st = entry.stat(follow_symlinks=False)
            else:
                continue
            items.append((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    except OSError:
        return None
    if any(item[3] > settled or item[4] > settled for item in items):
        return None
    return hash(frozenset(items))


def _pycs(dirpath: str, settled: int) -> int | None:
    """A hash of the stats of the pycs in *dirpath*'s ``__pycache__`` (0 without one); None when
    one is newer than *settled* (ns) or cannot be stat'ed."""
    items: list[tuple[str, int, int, int, int]] = []
    try:
        with os.scandir(os.path.join(dirpath, "__pycache__")) as it:
            for entry in it:
                if entry.name.endswith(".pyc"):
                    st = entry.stat(follow_symlinks=False)
                    items.append(
                        (entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    )
    except FileNotFoundError:
        return 0
    except OSError:
        return None
    if any(item[3] > settled or item[4] > settled for item in items):
        return None
    return hash(frozenset(items))
