"""watchdog 7's inotify observer, made to tell what it otherwise hides.

Three additions built on watchdog 7.x internals (``InotifyWatchGroup``, ``InotifyFD``; pinned below 8
in pyproject.toml): excluded directories, ``__pycache__`` and virtual environments get no inotify
watch; a directory that cannot be watched because the inotify limit is reached is *noticed*
(watchdog 7 silently skips it) and reported to a :class:`CoverageSink` (the
:class:`~cachewatchd.watch.observers.Watcher`), which falls back to polling; an event-queue overflow
becomes a rescan request. Where these internals are missing (another watchdog, not Linux),
:func:`inotify_classes` returns ``None`` and the stock observer is used.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cachewatchd.cache.walk import Excluder, WalkOptions

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


class Guard:
    """One root's link from watchdog's inotify internals back to its :class:`CoverageSink`."""

    def __init__(self, sink: CoverageSink, root: Path) -> None:
        self.sink = sink
        self.root = str(root)
        self.excluder = Excluder(sink.walk_options)
        self.group: Any = None
        self.limit: str | None = None

    def skip(self, path: str) -> bool:
        """True for a directory that gets no watch by its name: excluded or ``__pycache__``."""
        name = os.path.basename(path)
        if name == "__pycache__":
            return True
        rel = os.path.relpath(path, self.root).replace(os.sep, "/")
        return self.excluder.excluded(name, rel)

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
        group = self.group
        if group is None:
            return set()
        with group._lock:
            return {os.fsdecode(p) for p in group._active_callbacks_by_path}


def inotify_classes() -> tuple[Any, Any] | None:
    """``(observer class, InotifyFD class)`` on watchdog 7's inotify internals; None elsewhere."""
    try:
        from watchdog.observers.api import BaseObserver
        from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
        from watchdog.observers.inotify_c import InotifyFD
    except Exception:  # noqa: BLE001 - not Linux (UnsupportedLibcError) or an older watchdog
        return None

    @dataclass
    class PrunedGroup(InotifyWatchGroup):
        guard: Any = None

        def _add_all_callbacks(self, path: bytes) -> None:
            guard: Guard = self.guard
            top = os.fsdecode(path)
            is_dir = os.path.isdir(path)
            if path != self.path and guard.skip(top):
                return
            if path == self.path or not is_dir:
                self._add_callback(path)  # first, so that a root that cannot be watched raises
            if not (self.is_recursive and is_dir):
                return
            for dirpath, dirnames, filenames in os.walk(top, onerror=guard.walk_error):
                if dirpath != guard.root and guard.excluder.is_venv(filenames):
                    dirnames[:] = []
                    continue
                if dirpath != guard.root:
                    self._add_callback(os.fsencode(dirpath))
                dirnames[:] = [d for d in dirnames if not guard.skip(os.path.join(dirpath, d))]

        def _add_callback(self, path: bytes) -> None:
            fd = self._inotify_fd
            try:
                with fd._lock:  # add_callback() without its warning for an inode seen again
                    watch = fd._get_or_create_watch(path, self.event_mask)
                    watch.callbacks[self._id] = self._callback
                    wd = watch.wd
            except OSError as exc:
                if path == self.path:
                    raise
                self.guard.watch_failed(os.fsdecode(path), exc)
                return
            if wd < 0:  # EACCES: watchdog registers wd -1 instead of raising
                fd.remove_callbacks([(wd, self._id)])
                denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
                if path == self.path:
                    raise denied
                self.guard.watch_failed(os.fsdecode(path), denied)
                return
            stale = self._active_callbacks_by_watch.get(wd)
            if stale is not None and stale != path:  # moved out, then back in under a new name
                self._move_watches(stale, path)
            self._active_callbacks_by_path[path] = wd
            self._active_callbacks_by_watch[wd] = path

        def forget(self, path: bytes) -> None:
            """Drop the watches of a directory tree moved out of the root."""
            prefix = path + os.sep.encode()
            with self._lock:
                wds = [
                    wd
                    for p, wd in self._active_callbacks_by_path.items()
                    if p == path or p.startswith(prefix)
                ]
                if self.is_active and wds:
                    self._remove_callbacks(wds)

        def on_queue_overflow(self) -> None:
            super().on_queue_overflow()
            self.guard.sink.report_overflow(Path(self.guard.root))

    class GuardedEmitter(InotifyEmitter):
        def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._guard = guard

        def on_thread_start(self) -> None:
            self._inotify = PrunedGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                guard=self._guard,
            )
            self._guard.group = self._inotify

        def build_and_queue_event(self, event: Any, *, full_events: bool = False) -> None:
            super().build_and_queue_event(event, full_events=full_events)
            single = getattr(event, "ev", None)  # an unpaired event: the other side is elsewhere
            if single is not None and single.is_moved_from and single.is_directory:
                group = self._inotify
                if isinstance(group, PrunedGroup):
                    group.forget(event.path)

    class NativeObserver(BaseObserver):
        def __init__(self, fd: Any, guard: Guard) -> None:
            super().__init__(GuardedEmitter, inotify_fd=fd, guard=guard)

    return NativeObserver, InotifyFD
