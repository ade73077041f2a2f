"""The polling observer: watchdog's snapshot poller, made to see what timestamps hide and to skip noise.

Two functions plug into :class:`watchdog.observers.polling.PollingObserverVFS`:

- :func:`change_stat` makes a same-size edit with a restored mtime visible. watchdog's
  ``DirectorySnapshotDiff`` calls a file modified when ``st_mtime`` or ``st_size`` differ, and moved or
  re-created when ``(st_ino, st_dev)`` differ. ``utime`` cannot set ``st_ctime``, and any write or
  ``utime`` bumps it, so reporting ``max(mtime, ctime)`` as the mtime catches ``cp -p``, ``tar x``,
  ``rsync -t`` and ``touch -r`` edits. The inode already takes part in the comparison.
- :class:`SourceLister` lists only what matters (directories and sources), leaves out excluded
  directories and virtual environments, and reports an unreadable sub-directory once instead of
  failing the pass, so a pass costs little. A ``__pycache__`` is kept but none of its children
  are listed: one stat per package tells that a pyc was written, replaced or removed there (its
  directory's mtime moved), and the event mapper lists that one directory
  (:class:`~cachewatchd.watch.events.EventMapper`, ``polled``). A legacy pyc is kept only beside
  its source (``m.pyc`` beside ``m.py``), the one place where it can hold other code than the
  source's; a sourceless pyc, or a whole prefix tree, costs nothing.

The poller's thread never dies silently: the interval is held within :data:`POLL_INTERVAL_RANGE`
(a wait beyond ``threading.TIMEOUT_MAX`` raises ``OverflowError``), and a pass that fails with an
unexpected error is logged once and tried again after the interval.
"""

from __future__ import annotations

import functools
import math
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

from cachewatchd.cache.listing import drop_listing_cache
from cachewatchd.cache.pyc import LEGACY_SUFFIXES, SOURCE_SUFFIXES
from cachewatchd.cache.walk import Excluder, WalkOptions
from cachewatchd.log import get_logger

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "POLL_INTERVAL_RANGE",
    "SourceLister",
    "bounded_interval",
    "change_stat",
    "make_polling_observer",
]

DEFAULT_POLL_INTERVAL = 1.0
POLL_INTERVAL_RANGE = (0.05, 3600.0)
"""Seconds between two passes, lowest and highest (the config's and command line's bounds too:
:data:`cachewatchd.config.reader.BOUNDS`). The highest is far below ``threading.TIMEOUT_MAX``."""
_RETRY = 1.0
_TICK_NS = 10_000_000
_WHOLE_SECOND_NS = 2_000_000_000
"""The timestamp ticks (:data:`cachewatchd.cache.judge.TICK_NS`, ``WHOLE_SECOND_NS``)."""
"""Seconds before a pass that failed is tried again, when the interval itself is what failed."""


def bounded_interval(interval: float, *, what: str = "poll interval") -> float:
    """*interval* held within :data:`POLL_INTERVAL_RANGE`; NaN (or not a number) gives the default.

    The config and the command line refuse such values with a clear message; this is the last line
    of defence for callers of the Python API, so that a waiting thread can never die of
    ``OverflowError``. A changed value is logged as a warning.
    """
    low, high = POLL_INTERVAL_RANGE
    try:
        number = float(interval)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    used = DEFAULT_POLL_INTERVAL if math.isnan(number) else min(max(number, low), high)
    if used != number:
        shown = interval if math.isnan(number) else f"{number:g}"
        get_logger(__name__).warning(
            "error", error=f"{what} {shown} out of range", action=f"using {used:g} s"
        )
    return used


def change_stat(path: str) -> os.stat_result:
    """``os.lstat`` whose ``st_mtime`` is ``max(st_mtime, st_ctime)`` for non-directories.

    A ``__pycache__`` changed within a timestamp tick of now is given an mtime of -1: a pyc
    written later in the same tick leaves its mtime as it was, so the pass after, which sees the
    real mtime, reports the directory modified once more (and it is listed again).
    """
    st = os.lstat(path)
    if st.st_ctime_ns <= st.st_mtime_ns:  # nothing hidden (an ordinary write sets both)
        if not path.endswith("__pycache__"):  # the common case first: a pass stats 10k files
            return st
    elif not stat.S_ISDIR(st.st_mode):
        return _with_mtime_ns(st, st.st_ctime_ns)
    # a directory's own times only say that an entry changed, which the listing shows anyway
    if path.endswith(_PYCACHE) and stat.S_ISDIR(st.st_mode) and _recent(st.st_mtime_ns):
        return _with_mtime_ns(st, -1)
    return st


def _recent(stamp_ns: int) -> bool:
    """Within a tick before now (a clock ahead of this one: never; whole seconds: 2 s)."""
    now = time.time_ns()
    tick = _WHOLE_SECOND_NS if stamp_ns % 1_000_000_000 == 0 else _TICK_NS
    return now - tick <= stamp_ns <= now


def _with_mtime_ns(st: os.stat_result, stamp_ns: int) -> os.stat_result:
    stamp = stamp_ns / 1e9
    extra = {
        "st_atime": st.st_atime,
        "st_mtime": stamp,
        "st_ctime": st.st_ctime,
        "st_atime_ns": st.st_atime_ns,
        "st_mtime_ns": stamp_ns,
        "st_ctime_ns": st.st_ctime_ns,
    }
    return os.stat_result(
        (
            st.st_mode,
            st.st_ino,
            st.st_dev,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_size,
            int(st.st_atime),
            int(stamp),
            int(st.st_ctime),
        ),
        extra,
    )


class SourceLister:
    """``os.scandir`` for one root's snapshots: directories, sources and the legacy pycs beside
    them, exclusions pruned; a ``__pycache__`` is listed as empty (its own stat is kept).

    *on_denied* is called with the directory and the error when a sub-directory cannot be listed;
    the pass goes on without it. The root's own errors propagate (watchdog treats a vanished root as
    deleted). *base* is the root that exclusions are relative to when *root* is a mount below it.
    *pycs*: keep every pyc too (a mirror in a ``PYTHONPYCACHEPREFIX`` tree, where no source is).
    """

    def __init__(
        self,
        root: str,
        options: WalkOptions,
        on_denied: Callable[[str, OSError], None],
        base: str | None = None,
        *,
        pycs: bool = False,
        refetch: bool = False,
    ) -> None:
        self._suffixes = SOURCE_SUFFIXES + LEGACY_SUFFIXES if pycs else SOURCE_SUFFIXES
        self._root = root.rstrip(os.sep) or os.sep
        self._base = self._root if base is None else (base.rstrip(os.sep) or os.sep)
        self._excluder = Excluder(options)
        self._on_denied = on_denied
        self._refetch = refetch
        self._last: dict[str, int] = {}
        self._this: dict[str, int] = {}
        """Each directory's ctime in the last pass and in this one."""
        self._again: set[str] = set()
        self._next: set[str] = set()

    def __call__(self, path: str | None) -> Iterator[os.DirEntry[str]]:
        directory = self._root if path is None else path
        if directory.endswith(_PYCACHE) and directory != self._root:
            return iter(())
        if self._refetch:
            self._fresh_listing(directory)
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except PermissionError as exc:
            if directory == self._root:
                raise
            self._on_denied(directory, exc)
            return iter(())
        is_root = directory == self._root
        if not is_root and self._excluder.is_venv([e.name for e in entries]):
            return iter(())
        below = directory != self._base
        rel = os.path.relpath(directory, self._base).replace(os.sep, "/") if below else ""
        kept = [e for e in entries if self._keep(e, rel)]
        legacy = self._suffixes is SOURCE_SUFFIXES and len(kept) < len(entries)
        if legacy and any(e.name.endswith(LEGACY_SUFFIXES) for e in entries):
            kept.extend(_legacy_beside_sources(entries))
        return iter(kept)

    def _fresh_listing(self, directory: str) -> None:
        """*refetch* (a filesystem not known to be local): a directory that changed is read from the server
        again on the pass after, not from the client's cache. An NFS client keeps a listing for
        as long as the directory's change attribute stays the same, and where the server derives
        it from a coarse ctime (NFSv3; v4 without ``i_version``) an entry made in the same tick
        as a change the client had listed stays out of every listing until the next change."""
        if directory == self._root:  # a new pass
            self._again, self._next = self._next, set()
            self._last, self._this = self._this, {}
        try:
            ctime = os.lstat(directory).st_ctime_ns
        except OSError:
            return
        before = self._last.get(directory)
        self._this[directory] = ctime
        if before is not None and before != ctime:
            self._next.add(directory)
        if directory in self._again:
            drop_listing_cache(directory)

    def _keep(self, entry: os.DirEntry[str], rel: str) -> bool:
        name = entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            return False
        if not is_dir:
            return name.endswith(self._suffixes)
        if name == "__pycache__":
            return True
        return not self._excluder.excluded(name, f"{rel}/{name}" if rel else name)


_PYCACHE = os.sep + "__pycache__"


def _legacy_beside_sources(entries: list[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
    """The legacy pycs among *entries* whose source is among them too (``m.pyc``, ``m.pyo``
    beside ``m.py``)."""
    names = {e.name for e in entries}
    legacy = []
    for entry in entries:
        name = entry.name
        if name.endswith(LEGACY_SUFFIXES) and any(
            name[:-4] + suffix in names for suffix in SOURCE_SUFFIXES
        ):
            try:
                if entry.is_file(follow_symlinks=False):
                    legacy.append(entry)
            except OSError:
                continue
    return legacy


def make_polling_observer(
    root: str,
    options: WalkOptions,
    *,
    interval: float,
    on_denied: Callable[[str, OSError], None],
    base: str | None = None,
    hash_content: bool = False,
    pycs: bool = False,
    refetch: bool = False,
) -> Any:
    """A watchdog observer polling *root* every *interval* seconds (held within
    :data:`POLL_INTERVAL_RANGE`) with :func:`change_stat` and a :class:`SourceLister`; not started,
    nothing scheduled yet. *base*: the watched root when *root* is a mount below it.
    *hash_content*: the filesystem's ctime cannot be trusted, the content is hashed too
    (:class:`~cachewatchd.watch.content_stat.ContentStat`). *pycs*: every pyc is listed too.
    *refetch*: a filesystem not known to be local (network, FUSE, an unknown type the probe sent
    here), whose directories that changed are read again from the server on the pass after
    (:meth:`SourceLister._fresh_listing`).

    Like watchdog's ``PollingObserverVFS``, except that the interval is the emitter's own (the
    observer's dispatching thread keeps watchdog's 1 s timeout), and that a pass failing with an
    unexpected error does not end the emitter's thread: it is logged once and tried again.
    """
    from watchdog.observers.api import BaseObserver

    emitter_class: Callable[..., Any] = _emitter_class()
    stat_fn: Callable[[str], os.stat_result] = change_stat
    new_pass: Callable[[], None] = _nothing
    if hash_content:
        from cachewatchd.watch.content_stat import ContentStat

        content = ContentStat()
        stat_fn, new_pass = content, content.new_pass
    emitter = functools.partial(
        emitter_class,
        stat=stat_fn,
        new_pass=new_pass,
        listdir=SourceLister(root, options, on_denied, base, pycs=pycs, refetch=refetch),
        interval=bounded_interval(interval),
    )
    return BaseObserver(emitter)  # type: ignore[arg-type]  # a partial of an emitter class


def _nothing() -> None:
    pass


@functools.cache
def _emitter_class() -> type[Any]:
    from watchdog.observers.polling import PollingEmitter

    class Emitter(PollingEmitter):
        """watchdog's polling emitter, on its own interval and never killed by a failing pass."""

        def __init__(
            self, *args: Any, interval: float, new_pass: Callable[[], None], **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self._interval = interval
            self._new_pass = new_pass
            self._failing = False
            self._seen: list[Any] = []
            """The events of the pass under way (for its debug line)."""

        def queue_event(self, event: Any) -> None:
            self._seen.append(event)
            super().queue_event(event)

        def queue_events(self, timeout: float) -> None:
            self._new_pass()
            self._seen = []
            try:
                super().queue_events(self._interval)
                if self._seen:
                    _log_pass(self.watch.path, self._seen)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one pass
                if not self._failing:
                    get_logger(__name__).error(
                        "error",
                        root=self.watch.path,
                        error=f"polling pass failed: {exc!r}",
                        action="retrying",
                    )
                self._failing = True
                self.stopped_event.wait(_RETRY)
            else:
                self._failing = False

    return Emitter


def _log_pass(root: str, events: list[Any], most: int = 30) -> None:
    """One debug line per pass that found changes: what the poller saw, for a report of a change
    it missed (the first *most* events)."""
    shown = [f"{e.event_type} {e.src_path}" for e in events[:most]]
    get_logger(__name__).debug("polled", root=root, count=len(events), events=shown)
