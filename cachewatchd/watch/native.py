"""watchdog's inotify observer, made to tell what it otherwise hides: the part shared by the backends.

Additions built on watchdog's inotify internals: excluded directories, ``__pycache__`` and virtual
environments get no inotify watch; a directory that cannot be watched because the inotify limit is
reached is *noticed* (watchdog silently skips it) and reported to a :class:`CoverageSink` (the
:class:`~cachewatchd.watch.observers.Watcher`), which falls back to polling; a directory whose watch
is refused (``EACCES``) is reported; an event-queue overflow becomes a rescan request; the watched
paths can be read (:meth:`Guard.watched`). Two backends build the observer classes on the internals
of the watchdog installed: :mod:`~cachewatchd.watch.native7` (watchdog 7.1.0, Python 3.11+) and
:mod:`~cachewatchd.watch.native6` (watchdog 6, Python 3.10). Where neither fits (another watchdog,
not Linux), :func:`inotify_classes` returns ``None`` and the stock observer is used.

Coverage is re-established by construction, never from memory:

- A tree is watched top-down, each directory *before* it is listed: a sub-directory created after
  the listing raises an event on the watch just added (watchdog lists first, so a ``mkdir -p``
  racing the walk could leave a directory unwatched for good).
- A directory tree that left (an unpaired move-out, reported after watchdog's 0.5 s pairing window)
  loses every watch below its path; if a directory is at that path again (moved back within the
  window, or another one), its whole subtree is watched again from the filesystem and its sources
  are reported (edits in between may have been missed).
- Every directory that appears (created or moved in) is reported to the sink, which checks the
  coverage of its subtree once the storm settles and repairs what is missing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cachewatchd.cache.pyc import SOURCE_SUFFIXES
from cachewatchd.cache.walk import Excluder, WalkOptions, walk_stack
from cachewatchd.watch import native6, native7

__all__ = ["LIMITS", "CoverageSink", "Guard", "inotify_classes"]

LIMITS = {
    errno.ENOSPC: "inotify watch limit reached",
    errno.EMFILE: "inotify instance limit reached",
}


class CoverageSink(Protocol):
    """Where a :class:`Guard` reports what watchdog would hide: the
    :class:`~cachewatchd.watch.observers.Watcher`. The ``report_*``/``request_*`` methods are called
    from the inotify thread: they must not block."""

    @property
    def walk_options(self) -> WalkOptions:
        """What gets no watch: the excludes every walk of the root prunes."""
        ...

    def report_denied(self, path: str, exc: OSError) -> None: ...
    def request_fallback(self, root: Path, reason: str) -> None: ...
    def report_overflow(self, root: Path) -> None: ...
    def report_appeared(self, root: Path, path: str) -> None:
        """A directory appeared at *path* (created or moved in): check its subtree's coverage."""
        ...

    def report_rewatched(self, root: Path, path: str, reason: str) -> None:
        """The subtree at *path* was watched again from the filesystem, for *reason*."""
        ...


class Guard:
    """One root's link from watchdog's inotify internals back to its :class:`CoverageSink`."""

    def __init__(self, sink: CoverageSink, root: Path) -> None:
        self.sink = sink
        self.root = str(root)
        self.excluder = Excluder(sink.walk_options)
        self.group: Any = None
        """This root's watches, set by the backend: ``watched()``, ``rewatch(path)``."""
        self.limit: str | None = None

    def skip(self, path: str) -> bool:
        """True for a directory that gets no watch by its name: excluded."""
        return self.excluder.excluded(os.path.basename(path), self.relative(path))

    @staticmethod
    def pycache(entries: list[os.DirEntry[str]], rel: str) -> list[tuple[str, str]]:
        """The ``__pycache__`` among *entries* (a directory's), for a watch of its own: the daemon
        compares every pyc written there with its source. Nothing below one is watched."""
        return [
            (e.path, f"{rel}/{e.name}" if rel else e.name)
            for e in entries
            if e.name == "__pycache__" and e.is_dir(follow_symlinks=False)
        ]

    def relative(self, path: str) -> str:
        """*path* relative to the root, ``/``-separated (``""`` for the root itself)."""
        if path == self.root:
            return ""
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def sources(self, top: str) -> list[str]:
        """Every source below the directory *top*, pruned as every walk prunes."""
        stack = [(top, self.relative(top))]
        return [
            entry.path
            for _, entries in walk_stack(stack, self.excluder, lambda p, e: None)
            for entry in entries
            if entry.name.endswith(SOURCE_SUFFIXES) and not _is_dir(entry)
        ]

    def rewatch(self, path: str) -> None:
        """Watch the subtree at *path* again from the filesystem (what is watched stays)."""
        group = self.group
        if group is not None:
            group.rewatch(os.fsencode(path))

    def walk_error(self, exc: OSError) -> None:
        if isinstance(exc, PermissionError):
            self.sink.report_denied(str(exc.filename), exc)

    def watch_failed(self, path: str, exc: OSError) -> None:
        reason = LIMITS.get(exc.errno or 0)
        if reason is not None:
            if self.limit is None:
                self.limit = f"{reason} at {path}"
                self.sink.request_fallback(Path(self.root), self.limit)
        elif isinstance(exc, PermissionError):
            self.sink.report_denied(path, exc)

    def watched(self) -> set[str]:
        """The paths that hold a watch now."""
        group = self.group
        if group is None:
            return set()
        paths: set[str] = group.watched()
        return paths

    def appeared(self, path: bytes) -> None:
        """A directory appeared at *path* (created or moved in): have its coverage checked."""
        self.sink.report_appeared(Path(self.root), os.fsdecode(path))

    def came_back(self, path: str, report_created: Callable[[str], None]) -> None:
        """The tree at *path* is watched again: report its sources to *report_created* (edits made
        while its watches were being replaced would be lost) and have its coverage checked."""
        for source in self.sources(path):
            report_created(source)
        self.sink.report_rewatched(Path(self.root), path, "moved away and back")
        self.sink.report_appeared(Path(self.root), path)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def inotify_classes() -> tuple[Any, Any] | None:
    """``(observer class, shared inotify class)`` on the installed watchdog's inotify internals.

    The observer class is called as ``observer_cls(shared, guard)``; the shared inotify class is
    instantiated once per :class:`~cachewatchd.watch.observers.Watcher` and started and stopped
    with it. ``None`` where watchdog is neither 7.1.0 nor 6.x, or not on Linux.
    """
    try:
        from watchdog.version import VERSION_MAJOR
    except Exception:  # noqa: BLE001 - no usable watchdog
        return None
    backends = {7: native7.inotify_classes, 6: native6.inotify_classes}
    backend = backends.get(VERSION_MAJOR)
    return None if backend is None else backend()
