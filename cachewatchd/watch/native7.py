"""The observer classes of :mod:`~cachewatchd.watch.native` on watchdog 7's inotify internals.

Built on watchdog 7.1.0 (``InotifyWatchGroup``, ``InotifyFD``; pinned in pyproject.toml, 7.1.1
rewrote them): one ``InotifyFD`` is shared by every root of a
:class:`~cachewatchd.watch.observers.Watcher`, each root's watches are a ``PrunedGroup`` (pruned,
top-down, failures reported to its :class:`~cachewatchd.watch.native.Guard`), and its emitter
reports the directories that appear and drops the watches of a tree that left.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachewatchd.cache.walk import subdirectories

if TYPE_CHECKING:
    from cachewatchd.watch.native import Guard

__all__ = ["inotify_classes"]


def inotify_classes() -> tuple[Any, Any] | None:
    """``(observer class, InotifyFD class)`` on watchdog 7's inotify internals; None without them."""
    try:
        from watchdog.events import FileCreatedEvent
        from watchdog.observers.api import BaseObserver
        from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
        from watchdog.observers.inotify_c import InotifyFD
    except Exception:  # noqa: BLE001 - not Linux (UnsupportedLibcError) or an older watchdog
        return None

    @dataclass
    class PrunedGroup(InotifyWatchGroup):
        guard: Any = None

        def _add_all_callbacks(self, path: bytes) -> None:
            """Watch *path* and, recursively, every directory below it that is not pruned.

            Top-down, each directory watched *before* it is listed (watchdog lists first): what
            appears after the listing raises an event on the new watch, which watches it in turn.
            Called with the group's lock held (watchdog's own callers hold it).
            """
            guard: Guard = self.guard
            top = os.fsdecode(path)
            if path != self.path and (guard.skip(top) or os.path.islink(path)):
                return  # a symlinked directory is not followed, as no walk follows one
            if not (self.is_recursive and os.path.isdir(path)):
                self._add_callback(path)
                return
            stack = [(top, guard.relative(top))]
            while stack:
                directory, rel = stack.pop()
                encoded = os.fsencode(directory)
                if not self._add_callback(encoded):  # raises for the root itself
                    continue
                try:
                    with os.scandir(directory) as listing:
                        entries = list(listing)
                except OSError as exc:  # gone meanwhile, or unreadable (reported)
                    guard.walk_error(exc)
                    continue
                if directory != guard.root and guard.excluder.is_venv([e.name for e in entries]):
                    self._unwatch([self._active_callbacks_by_path[encoded]])
                    continue
                if os.path.basename(directory) == "__pycache__":
                    continue  # watched for the pycs written there, never entered
                stack += subdirectories(entries, rel, guard.excluder)
                stack += guard.pycache(entries, rel)

        def _add_callback(self, path: bytes) -> bool:  # type: ignore[override]
            """Watch *path*; False when it could not be watched (reported to the guard)."""
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
                return False
            if wd < 0:  # EACCES: watchdog registers wd -1 instead of raising
                fd.remove_callbacks([(wd, self._id)])
                denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
                if path == self.path:
                    raise denied
                self.guard.watch_failed(os.fsdecode(path), denied)
                return False
            stale = self._active_callbacks_by_watch.get(wd)
            if stale is not None and stale != path:  # moved out, then back in under a new name
                self._move_watches(stale, path)
            self._active_callbacks_by_path[path] = wd
            self._active_callbacks_by_watch[wd] = path
            return True

        def _unwatch(self, wds: list[Any]) -> None:
            """Remove the watches *wds* and every trace of them (lock held).

            watchdog's ``_remove_callbacks`` fails when two watches claim one path (the tree that
            left and the one there now) and they are removed in the wrong order."""
            self._inotify_fd.remove_callbacks([(wd, self._id) for wd in wds])
            gone = set(wds)
            for wd in wds:
                self._active_callbacks_by_watch.pop(wd, None)
            by_path = self._active_callbacks_by_path
            for p in [p for p, wd in by_path.items() if wd in gone]:
                del by_path[p]

        def _drop_tree(self, path: bytes) -> None:
            """Drop every watch whose path is *path* or below it (lock held)."""
            prefix = path + os.sep.encode()
            below = [(p, wd) for p, wd in self._active_callbacks_by_path.items()]
            below += [(p, wd) for wd, p in self._active_callbacks_by_watch.items()]
            wds = {wd for p, wd in below if p == path or p.startswith(prefix)}
            if wds:
                self._unwatch(sorted(wds))

        def forget(self, path: bytes) -> bool:
            """A directory tree left *path* (an unpaired move out): drop its watches. If a directory
            is at *path* again (moved back within the pairing window, or another one), watch its
            subtree again from the filesystem and return True: the watches found there belonged to
            the path, not to what is there now."""
            with self._lock:
                if not self.is_active:
                    return False
                self._drop_tree(path)
                if os.path.islink(path) or not os.path.isdir(path):
                    return False
                self._add_all_callbacks(path)
                return True

        def rewatch(self, path: bytes) -> None:
            """Watch the subtree at *path* again from the filesystem (from another thread)."""
            with self._lock:
                if self.is_active and os.path.isdir(path):
                    self._add_all_callbacks(path)

        def watched(self) -> set[str]:
            """The paths that hold a watch now (from another thread)."""
            with self._lock:
                return {os.fsdecode(p) for p in self._active_callbacks_by_path}

        def on_queue_overflow(self) -> None:
            super().on_queue_overflow()
            self.guard.sink.report_overflow(Path(self.guard.root))

    class GuardedEmitter(InotifyEmitter):
        def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._guard = guard
            self._kinds: tuple[type, ...] | None = None
            self.direct: Any = None
            """The root's handler, called on this thread: one queue and one thread fewer per
            event, which a 10k-file checkout's 30k events pay in GIL time (set by
            :func:`~cachewatchd.watch.mount_pollers.start_observer` before the start)."""

        def queue_event(self, event: Any) -> None:
            handler = self.direct
            if handler is None:
                super().queue_event(event)
                return
            kinds = self._kinds
            if kinds is None and self._event_filter is not None:
                kinds = self._kinds = tuple(self._event_filter)
            if kinds is None or isinstance(event, kinds):
                handler.dispatch(event)

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
            if single is None:  # a paired move (from, to) inside the root
                if event[1].ev.is_directory:
                    self._appeared(event[1].path)
            elif single.is_directory and (single.is_create or single.is_moved_to):
                self._appeared(event.path)
            elif single.is_directory and single.is_moved_from:
                group = self._inotify
                if isinstance(group, PrunedGroup) and group.forget(event.path):
                    self._came_back(os.fsdecode(event.path))

        def _appeared(self, path: bytes) -> None:
            self._guard.appeared(path)

        def _came_back(self, path: str) -> None:
            self._guard.came_back(path, lambda source: self.queue_event(FileCreatedEvent(source)))

    class NativeObserver(BaseObserver):
        def __init__(self, fd: Any, guard: Guard) -> None:
            super().__init__(GuardedEmitter, inotify_fd=fd, guard=guard)

    return NativeObserver, InotifyFD
