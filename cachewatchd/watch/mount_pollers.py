"""Pollers for the network and FUSE mounts below a natively watched root.

inotify sees the changes made through this machine's kernel only. A mount below a local root whose
files change elsewhere (an NFS export edited on the server, the far side of an sshfs or bindfs
mount, a filesystem where a probe file raises no event: :func:`~cachewatchd.watch.mounts.polled_mounts`)
gets a poller of its own for its subtree, with the root's exclusions. The root's native observer
keeps its watches there, but its events below those mounts are dropped (:meth:`MountPollers.outside`):
the poller reports them, so a local edit makes one batch, not two. Where the mount's ctime cannot be
trusted (sshfs), the poller hashes the content too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachewatchd.cache.walk import Excluder, WalkOptions
from cachewatchd.paths import is_under
from cachewatchd.watch.coverage import walked_rel
from cachewatchd.watch.events import EventMapper, EventSink, PycSink, event_filter
from cachewatchd.watch.mounts import EventsProbe, ctime_trusted, polled_mounts
from cachewatchd.watch.polling import make_polling_observer

__all__ = ["MountPollers", "dispose", "start_observer"]


class MountPollers:
    """The pollers of the mounts below one root (:meth:`start`, :meth:`stop`)."""

    def __init__(
        self,
        root: Path,
        sink: EventSink,
        options: WalkOptions,
        interval: float,
        on_denied: Callable[[str, OSError], None],
    ) -> None:
        self.root = root
        self._sink = sink
        self._options = options
        self._interval = interval
        self._on_denied = on_denied
        self.mountpoints: list[Path] = []
        self._observers: list[Any] = []

    def start(self, probe: EventsProbe | None) -> list[str]:
        """Start a poller for every mount below the root that needs one (not those the root's
        walk never enters: excluded, inside a virtual environment); return why each is polled.
        Raises ``OSError`` when the mounts cannot be read (nothing is started then)."""
        excluder = Excluder(self._options)
        reasons = []
        try:
            for mount, reason in polled_mounts(self.root, probe):
                point = mount.mountpoint
                if walked_rel(str(self.root), str(point), excluder) is None:
                    continue
                observer = make_polling_observer(
                    str(point),
                    self._options,
                    interval=self._interval,
                    on_denied=self._on_denied,
                    base=str(self.root),
                    hash_content=not ctime_trusted(mount.fstype),
                )
                handler = EventMapper(self.root, self._sink, self._options, _ignore_gone)
                start_observer(observer, handler, point)
                self._observers.append(observer)
                self.mountpoints.append(point)
                reasons.append(reason)
        except BaseException:
            self.stop()
            raise
        return reasons

    def stop(self) -> None:
        observers, self._observers = self._observers, []
        for observer in observers:
            dispose(observer)

    def outside(self, sink: EventSink) -> EventSink:
        """*sink* for the root's native observer: without the events below the polled mounts."""
        if not self.mountpoints:
            return sink
        return _Outside(sink, [str(p) for p in self.mountpoints])


class _Outside:
    """An :class:`EventSink` passing on only what happens outside *points*."""

    def __init__(self, sink: EventSink, points: list[str]) -> None:
        self._sink = sink
        self._points = points

    def _below(self, path: Path) -> bool:
        text = str(path)
        return any(is_under(text, point) for point in self._points)

    def source_changed(self, path: Path) -> None:
        if not self._below(path):
            self._sink.source_changed(path)

    def source_removed(self, path: Path) -> None:
        if not self._below(path):
            self._sink.source_removed(path)

    def dir_removed(self, path: Path) -> None:
        if not self._below(path):
            self._sink.dir_removed(path)

    def pyc_written(self, path: Path) -> None:
        if not self._below(path) and isinstance(self._sink, PycSink):
            self._sink.pyc_written(path)

    def rescan(self, root: Path, reason: str) -> None:
        self._sink.rescan(root, reason)


def _ignore_gone(path: Path) -> None:
    """A mount's poller never reports the root gone (only the root's own observer does)."""


def start_observer(observer: Any, handler: EventMapper, path: Path) -> None:
    """Schedule *handler* on *path* (recursively, the watchers' event classes) and start."""
    observer.schedule(handler, str(path), recursive=True, event_filter=event_filter())
    try:
        observer.start()
    except BaseException:
        dispose(observer)
        raise


def dispose(observer: Any) -> None:
    """Stop *observer* and wait for its thread (unless called from it)."""
    observer.stop()
    if observer.ident is not None and observer is not threading.current_thread():
        observer.join()
