"""Pollers for the network and FUSE mounts below a natively watched root.

inotify sees the changes made through this machine's kernel only. A mount below a local root whose
files change elsewhere (an NFS export edited on the server, the far side of an sshfs or bindfs
mount, a filesystem where a probe file raises no event: :func:`~cachewatchd.watch.mounts.polled_mounts`)
gets a poller of its own for its subtree, with the root's exclusions. The root's native observer
keeps its watches there, but its events below those mounts are dropped (:meth:`MountPollers.outside`):
the poller reports them, so a local edit makes one batch, not two. Where the mount's ctime cannot be
trusted (sshfs), the poller hashes the content too. A mount made or undone while the daemon runs
(an NFS share mounted after the service started) is noticed through :class:`MountTable`.
"""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachewatchd.cache.walk import Excluder, WalkOptions
from cachewatchd.paths import is_under
from cachewatchd.watch.coverage import walked_rel
from cachewatchd.watch.events import EventMapper, EventSink, PycSink, event_filter
from cachewatchd.watch.mounts import (
    EventsProbe,
    Mount,
    ObserverChoice,
    ctime_trusted,
    is_known_local,
    polled_mounts,
)
from cachewatchd.watch.polling import make_polling_observer
from cachewatchd.watch.probe import events_arrive

__all__ = ["MountPollers", "MountTable", "dispose", "start_observer"]


class MountPollers:
    """The pollers of the mounts below one root (:meth:`start`, :meth:`refresh`, :meth:`stop`)."""

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
        """Replaced whole, never changed in place: the native observer's thread reads it."""
        self._observers: list[Any] = []
        self._polled: list[tuple[Mount, str]] = []
        self._base = ObserverChoice("native", "")

    def start(self, choice: ObserverChoice, probe: EventsProbe | None) -> ObserverChoice:
        """Start a poller for every mount below the root that needs one (not those the root's
        walk never enters: excluded, inside a virtual environment); return *choice* with why
        each is polled. Raises ``OSError`` when the mounts cannot be read (nothing is started)."""
        self._base = choice
        self._start(self._wanted(probe))
        return self.choice()

    def refresh(self, probe: EventsProbe | None) -> ObserverChoice | None:
        """After the mount table changed: the pollers of the mounts below the root now, and the
        new choice, or None when they are the same. Raises ``OSError`` like :meth:`start`."""
        wanted = self._wanted(probe)
        if [m for m, _ in wanted] == [m for m, _ in self._polled]:
            return None
        self.stop()
        self._start(wanted)
        return self.choice()

    def choice(self) -> ObserverChoice:
        reasons = [self._base.reason, *(reason for _, reason in self._polled)]
        return ObserverChoice(self._base.kind, "; ".join(reasons))

    def _wanted(self, probe: EventsProbe | None) -> list[tuple[Mount, str]]:
        excluder = Excluder(self._options)
        root = str(self.root)
        return [
            (mount, reason)
            for mount, reason in polled_mounts(self.root, probe)
            if walked_rel(root, str(mount.mountpoint), excluder) is not None
        ]

    def _start(self, wanted: list[tuple[Mount, str]]) -> None:
        try:
            for mount, _ in wanted:
                observer = make_polling_observer(
                    str(mount.mountpoint),
                    self._options,
                    interval=self._interval,
                    on_denied=self._on_denied,
                    base=str(self.root),
                    hash_content=not ctime_trusted(mount.fstype),
                    refetch=not is_known_local(mount.fstype),
                )
                handler = EventMapper(
                    self.root, self._sink, self._options, _ignore_gone, polled=True
                )
                start_observer(observer, handler, mount.mountpoint)
                self._observers.append(observer)
        except BaseException:
            self.stop()
            raise
        self._polled = wanted
        self.mountpoints = [m.mountpoint for m, _ in wanted]

    def stop(self) -> None:
        observers, self._observers = self._observers, []
        self._polled, self.mountpoints = [], []
        for observer in observers:
            dispose(observer)

    def outside(self, sink: EventSink) -> EventSink:
        """*sink* for the root's native observer: without the events below the polled mounts
        (those of now, whenever the mount table changes)."""
        return _Outside(sink, self)


class MountTable:
    """Tells when this machine's mount table changed: the kernel flags ``/proc/self/mountinfo``
    (``POLLPRI``) on every mount and unmount. Elsewhere it never says so. Keeps what the probe of
    each directory found (:meth:`probe`: a filesystem of an unknown type is probed once)."""

    def __init__(self) -> None:
        self._probed: dict[Path, bool | None] = {}
        self._file: Any = None
        self._poll: Any = None

    def open(self) -> None:
        """Start following the mount table (until :meth:`close`)."""
        if self._file is not None:
            return
        with contextlib.suppress(OSError, AttributeError):  # no /proc, or no select.poll
            self._file = open("/proc/self/mountinfo", "rb")  # noqa: SIM115 - kept open to poll
            self._poll = select.poll()
            self._poll.register(self._file.fileno(), select.POLLPRI | select.POLLERR)

    def probe(self, directory: Path) -> bool | None:
        """:func:`~cachewatchd.watch.probe.events_arrive`, once per directory."""
        if directory not in self._probed:
            self._probed[directory] = events_arrive(directory)
        return self._probed[directory]

    def changed(self) -> bool:
        if self._poll is None:
            return False
        try:
            return bool(self._poll.poll(0))
        except OSError:
            return False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._poll = None


class _Outside:
    """An :class:`EventSink` passing on only what happens outside the polled mounts."""

    def __init__(self, sink: EventSink, pollers: MountPollers) -> None:
        self._sink = sink
        self._pollers = pollers

    def _below(self, path: Path) -> bool:
        points = self._pollers.mountpoints
        return bool(points) and any(is_under(path, point) for point in points)

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
        # passed on below the mounts too: a pyc written through this machine's kernel raises an
        # inotify event on any mount at once; the mount's poller sees its __pycache__ change only
        # at its next pass (and reports those written on the other side)
        if isinstance(self._sink, PycSink):
            self._sink.pyc_written(path)

    def rescan(self, root: Path, reason: str) -> None:
        self._sink.rescan(root, reason)


def _ignore_gone(path: Path) -> None:
    """A mount's poller never reports the root gone (only the root's own observer does)."""


def start_observer(observer: Any, handler: EventMapper, path: Path) -> None:
    """Schedule *handler* on *path* (recursively, the watchers' event classes; a poller's handler
    gets its directories modified too) and start."""
    events = event_filter(dirs_modified=handler.polled)
    observer.schedule(handler, str(path), recursive=True, event_filter=events)
    for emitter in observer.emitters:
        if hasattr(emitter, "direct"):  # a native emitter that can call the handler itself
            emitter.direct = handler
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
