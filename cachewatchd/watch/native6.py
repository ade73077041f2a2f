"""The observer classes of :mod:`~cachewatchd.watch.native` on watchdog 6's inotify internals.

watchdog 6 (the newest on Python 3.10: watchdog 7 requires 3.11) gives every root its own inotify
instance, ``inotify_c.Inotify`` (``_add_dir_watch``, ``_add_watch``, ``_wd_for_path``,
``_path_for_wd``, ``read_events``), read by an ``InotifyBuffer`` thread that pairs moves for 0.5 s,
and an ``InotifyEmitter``. :class:`GuardedInotify` keeps watchdog's instance (its descriptor, its
two path maps, its lock, ``close``) and replaces how watches are added and events read:

- a tree is watched pruned and top-down, each directory before it is listed; a failed watch is
  reported to the root's :class:`~cachewatchd.watch.native.Guard` (watchdog 6 skips it silently,
  and records an ``EACCES`` one as watch descriptor -1);
- a directory moved in from outside, or from a pruned directory, is watched (watchdog 6 watches
  only the directories it sees created);
- an event-queue overflow (watchdog 6 drops it: its watch descriptor is -1) rebuilds every watch,
  logs the warning watchdog 7 logs (on watchdog's ``inotify_c`` logger, so that it reaches users as
  watchdog's warnings do) and requests a rescan;
- events of a watch removed here, and their ``IN_IGNORED``, are dropped (watchdog 6 raises
  ``KeyError`` on them and its reader thread dies).

Nothing is shared between roots: :class:`NoSharedInotify` only fills the place of watchdog 7's shared
``InotifyFD`` in :class:`~cachewatchd.watch.observers.Watcher`.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachewatchd.cache.walk import subdirectories

if TYPE_CHECKING:
    from cachewatchd.watch.native import Guard

__all__ = ["NoSharedInotify", "inotify_classes"]


class NoSharedInotify:
    """Where watchdog 7 has the one ``InotifyFD`` of every root: on watchdog 6 each root's emitter
    opens its own inotify instance, so there is nothing to start or stop."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def join(self) -> None:
        pass


def inotify_classes() -> tuple[Any, Any] | None:
    """``(observer class, NoSharedInotify)`` on watchdog 6's inotify internals; None without them."""
    try:  # typed as Any on purpose: mypy sees watchdog 7, where these modules differ or are absent
        inotify: Any = importlib.import_module("watchdog.observers.inotify")
        inotify_buffer: Any = importlib.import_module("watchdog.observers.inotify_buffer")
        inotify_c: Any = importlib.import_module("watchdog.observers.inotify_c")
        api: Any = importlib.import_module("watchdog.observers.api")
        utils: Any = importlib.import_module("watchdog.utils")
        delayed_queue: Any = importlib.import_module("watchdog.utils.delayed_queue")
        file_created: Any = importlib.import_module("watchdog.events").FileCreatedEvent
        const = inotify_c.InotifyConstants
        inotify_event = inotify_c.InotifyEvent
    except Exception:  # noqa: BLE001 - not Linux (UnsupportedLibcError) or another watchdog
        return None

    class GuardedInotify(inotify_c.Inotify):  # type: ignore[misc]
        """One root's inotify instance, its watches pruned and its failures reported to *guard*."""

        def __init__(
            self, path: bytes, guard: Guard, *, recursive: bool, event_mask: int | None
        ) -> None:
            self.guard = guard
            if event_mask is not None:  # a symlink is never followed, as no walk follows one
                event_mask |= const.IN_DONT_FOLLOW
            try:
                super().__init__(path, recursive=recursive, event_mask=event_mask)
            except BaseException:
                if hasattr(self, "_kill_w"):  # the instance was opened: its watches go with it
                    self._close_resources()
                raise
            guard.group = self

        # -- watches (the lock held, or from __init__) ---------------------------------------------
        def _add_dir_watch(self, path: bytes, mask: int, *, recursive: bool) -> None:
            self._watch_tree(path)

        def _watch_tree(self, path: bytes, created: list[Any] | None = None) -> None:
            """Watch *path* and, recursively, every directory below it that is not pruned.

            Top-down, each directory watched *before* it is listed (watchdog lists first): what
            appears after the listing raises an event on the new watch, which watches it in turn.
            With *created*, a creation event is appended for every entry of the directories watched.
            """
            guard = self.guard
            top = os.fsdecode(path)
            if path != self._path and (guard.skip(top) or os.path.islink(path)):
                return  # a symlinked directory is not followed, as no walk follows one
            if not (self._is_recursive and os.path.isdir(path)):
                self._watch(path)
                return
            stack = [(top, guard.relative(top))]
            while stack:
                directory, rel = stack.pop()
                wd = self._watch(os.fsencode(directory))
                if wd is None:
                    continue
                try:
                    with os.scandir(directory) as listing:
                        entries = list(listing)
                except OSError as exc:  # gone meanwhile, or unreadable (reported)
                    guard.walk_error(exc)
                    continue
                if directory != guard.root and guard.excluder.is_venv([e.name for e in entries]):
                    self._unwatch([wd])
                    continue
                if created is not None:
                    created += [_created(wd, entry) for entry in entries]
                if os.path.basename(directory) == "__pycache__":
                    continue  # watched for the pycs written there, never entered
                stack += subdirectories(entries, rel, guard.excluder)
                stack += guard.pycache(entries, rel)

        def _watch(self, path: bytes) -> int | None:
            """Watch *path*; None when it could not be watched (reported to the guard)."""
            try:
                wd: int = self._add_watch(path, self._event_mask)
            except OSError as exc:
                if path == self._path:
                    raise
                self.guard.watch_failed(os.fsdecode(path), exc)
                return None
            return wd

        def _add_watch(self, path: bytes, mask: int) -> int:
            """watchdog's, raising for every error (``EACCES`` too) and following a moved inode."""
            wd: int = inotify_c.inotify_add_watch(self._inotify_fd, path, mask)
            if wd == -1:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), os.fsdecode(path))
            stale = self._path_for_wd.get(wd)
            if stale is not None and stale != path and self._wd_for_path.get(stale) == wd:
                self._move_paths(stale, path)  # moved without our seeing it: its tree moved too
            self._wd_for_path[path] = wd
            self._path_for_wd[wd] = path
            return wd

        def _move_paths(self, src: bytes, dst: bytes) -> bool:
            """The watches of the tree at *src* are at *dst* now; False when *src* had none."""
            wd = self._wd_for_path.pop(src, None)
            if wd is None:
                return False
            self._wd_for_path[dst] = wd
            self._path_for_wd[wd] = dst
            prefix = src + os.sep.encode()
            for path, below in list(self._wd_for_path.items()):
                if path.startswith(prefix):
                    del self._wd_for_path[path]
                    moved = dst + path[len(src) :]
                    self._wd_for_path[moved] = below
                    self._path_for_wd[below] = moved
            return True

        def _unwatch(self, wds: list[int]) -> None:
            """Remove the watches *wds* and every trace of them; their late events are dropped."""
            gone = set(wds)
            for wd in gone:
                inotify_c.inotify_rm_watch(self._inotify_fd, wd)  # -1 if the kernel removed it
                self._path_for_wd.pop(wd, None)
            by_path = self._wd_for_path
            for p in [p for p, wd in by_path.items() if wd in gone]:
                del by_path[p]

        def _drop_tree(self, path: bytes) -> None:
            """Drop every watch whose path is *path* or below it."""
            prefix = path + os.sep.encode()
            below = list(self._wd_for_path.items())
            below += [(p, wd) for wd, p in self._path_for_wd.items()]
            wds = {wd for p, wd in below if p == path or p.startswith(prefix)}
            if wds:
                self._unwatch(sorted(wds))

        def _rebuild(self) -> None:
            """Every watch again from the filesystem: events were lost, directories with them."""
            self._moved_from_events.clear()
            self._unwatch(list(self._path_for_wd))
            self._wd_for_path.clear()
            try:
                self._watch_tree(self._path)
            except OSError as exc:  # the root itself: gone (re-attached later) or at the limit
                self.guard.watch_failed(os.fsdecode(self._path), exc)

        # -- from other threads ----------------------------------------------------------------------
        def watched(self) -> set[str]:
            """The paths that hold a watch now."""
            with self._lock:
                return {os.fsdecode(p) for p in self._wd_for_path}

        def rewatch(self, path: bytes) -> None:
            """Watch the subtree at *path* again from the filesystem (what is watched stays)."""
            with self._lock:
                if not self._closed and os.path.isdir(path):
                    self._watch_tree(path)

        def forget(self, path: bytes) -> bool:
            """A directory tree left *path* (an unpaired move out): drop its watches. If a directory
            is at *path* again (moved back within the pairing window, or another one), watch its
            subtree again from the filesystem and return True: the watches found there belonged to
            the path, not to what is there now."""
            with self._lock:
                if self._closed:
                    return False
                moves = self._moved_from_events
                for cookie in [c for c, e in moves.items() if e.src_path == path]:
                    del moves[cookie]
                self._drop_tree(path)
                if os.path.islink(path) or not os.path.isdir(path):
                    return False
                self._watch_tree(path)
                return True

        def on_queue_overflow(self) -> None:
            """The kernel dropped events: rebuild the watches and request a rescan."""
            with self._lock:
                if self._closed:
                    return
                self._overflowed()
            self.guard.sink.report_overflow(Path(self.guard.root))

        def _overflowed(self) -> None:
            self._rebuild()

        # -- reading (the buffer's thread) -----------------------------------------------------------
        def read_events(
            self, *, event_buffer_size: int = inotify_c.DEFAULT_EVENT_BUFFER_SIZE
        ) -> Any:
            buffer = self._read(event_buffer_size)
            events: list[Any] = []
            overflowed = False
            with self._lock:
                for wd, mask, cookie, name in self._parse_event_buffer(buffer):
                    if wd == -1:
                        if mask & const.IN_Q_OVERFLOW and not self._closed:
                            self._overflowed()
                            overflowed = True
                        continue
                    self._dispatch(wd, mask, cookie, name, events)
            if overflowed:
                self.guard.sink.report_overflow(Path(self.guard.root))
            return events

        def _read(self, size: int) -> bytes:
            """watchdog 6's wait and read, unchanged; ``b""`` once closed."""
            buffer = b""
            while True:
                try:
                    with self._lock:
                        if self._closed:
                            return b""
                        self._is_reading = True
                    if self._check_inotify_fd():
                        buffer = os.read(self._inotify_fd, size)
                    with self._lock:
                        self._is_reading = False
                        if self._closed:
                            self._close_resources()
                            return b""
                except OSError as e:
                    if e.errno == errno.EINTR:
                        continue
                    if e.errno == errno.EBADF:
                        return b""
                    raise
                return buffer

        def _dispatch(
            self, wd: int, mask: int, cookie: int, name: bytes, events: list[Any]
        ) -> None:
            """One event of the kernel's, with the path of its watch, into *events* (lock held)."""
            watched = self._path_for_wd.get(wd)
            if watched is None:
                return  # a watch removed here: its IN_IGNORED and any late event
            path = os.path.join(watched, name) if name else watched  # no trailing slash
            event = inotify_event(wd, mask, cookie, name, path)
            if event.is_ignored:  # the kernel removed the watch (deleted, unmounted)
                del self._path_for_wd[wd]
                if self._wd_for_path.get(watched) == wd:
                    del self._wd_for_path[watched]
            elif event.is_directory and event.is_moved_from:
                self._moved_from_events[event.cookie] = event
            elif event.is_directory and event.is_moved_to and self._is_recursive:
                source = self._moved_from_events.pop(event.cookie, None)
                if source is None or not self._move_paths(source.src_path, path):
                    self._watch_tree(path)  # moved in from outside, or from a pruned directory
                elif self.guard.skip(os.fsdecode(path)):
                    self._drop_tree(path)  # moved into a pruned directory
            events.append(event)
            if event.is_directory and event.is_create and self._is_recursive:
                self._watch_tree(path, events)

    def _created(wd: int, entry: os.DirEntry[str]) -> Any:
        """The creation event watchdog simulates for an entry of a directory it just watched."""
        mask = const.IN_CREATE
        try:
            if entry.is_dir(follow_symlinks=False):
                mask |= const.IN_ISDIR
        except OSError:
            pass
        name = os.fsencode(entry.name)
        return inotify_event(wd, mask, 0, name, os.fsencode(entry.path))

    class GuardedBuffer(inotify_buffer.InotifyBuffer):  # type: ignore[misc]
        """watchdog's buffer around a :class:`GuardedInotify`; remembers the event it handed out
        last, which the emitter has just turned into watchdog events."""

        def __init__(
            self, path: bytes, guard: Guard, *, recursive: bool, event_mask: int | None
        ) -> None:
            utils.BaseThread.__init__(self)  # InotifyBuffer.__init__, with a GuardedInotify
            self._queue = delayed_queue.DelayedQueue(self.delay)
            self._inotify = GuardedInotify(path, guard, recursive=recursive, event_mask=event_mask)
            self.last: Any = None
            self.start()

        def read_event(self) -> Any:
            self.last = event = super().read_event()
            return event

    class GuardedEmitter(inotify.InotifyEmitter):  # type: ignore[misc]
        def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._guard = guard

        def on_thread_start(self) -> None:
            self._inotify = GuardedBuffer(
                os.fsencode(self.watch.path),
                self._guard,
                recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
            )

        def queue_events(self, timeout: float, *, full_events: bool = False) -> None:
            buffer: Any = self._inotify  # None once stopped
            super().queue_events(timeout, full_events=full_events)
            if buffer is None:
                return
            event, buffer.last = buffer.last, None
            if event is None:
                return
            if isinstance(event, tuple):  # a paired move (from, to) inside the root
                if event[1].is_directory:
                    self._guard.appeared(event[1].src_path)
            elif event.is_directory and (event.is_create or event.is_moved_to):
                self._guard.appeared(event.src_path)
            elif event.is_directory and event.is_moved_from:
                group = buffer._inotify  # unpaired: the tree left, or its move was not paired
                if isinstance(group, GuardedInotify) and group.forget(event.src_path):
                    self._came_back(os.fsdecode(event.src_path))

        def _came_back(self, path: str) -> None:
            self._guard.came_back(path, lambda source: self.queue_event(file_created(source)))

    class NativeObserver(api.BaseObserver):  # type: ignore[misc]
        def __init__(self, shared: NoSharedInotify, guard: Guard) -> None:
            super().__init__(functools.partial(GuardedEmitter, guard=guard))

    return NativeObserver, NoSharedInotify
