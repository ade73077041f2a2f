"""Kernel faults injected under watchdog's inotify internals, on watchdog 7 and watchdog 6 alike.

watchdog 7 (Python 3.11+) shares one ``InotifyFD`` between every root; watchdog 6 (Python 3.10)
opens one ``inotify_c.Inotify`` per root and calls libc through the module's ``inotify_init`` and
``inotify_add_watch``. Each helper fails what the kernel would fail, where each version asks it.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
from pathlib import Path
from typing import Any

import pytest

from cachewatchd.watch.observers import Watcher

__all__ = ["WATCHDOG_7", "fail_instances", "fail_watches", "inject_overflow", "reader_lock"]

inotify_c: Any = importlib.import_module("watchdog.observers.inotify_c")
WATCHDOG_7 = hasattr(inotify_c, "InotifyFD")


def _failed(err: int) -> int:
    """What a libc call returns when it fails with *err*: -1, errno set."""
    ctypes.set_errno(err)
    return -1


def fail_watches(monkeypatch: pytest.MonkeyPatch, marker: bytes, err: int) -> None:
    """Every new watch on a path containing *marker* fails with *err*."""
    if WATCHDOG_7:
        original = inotify_c.InotifyFD._get_or_create_watch

        def failing(self: Any, path: bytes, mask: int) -> Any:
            if marker in path:
                raise OSError(err, os.strerror(err))
            return original(self, path, mask)

        monkeypatch.setattr(inotify_c.InotifyFD, "_get_or_create_watch", failing)
        return
    add_watch = inotify_c.inotify_add_watch

    def failing_add(fd: int, path: bytes, mask: int) -> int:
        return _failed(err) if marker in path else int(add_watch(fd, path, mask))

    monkeypatch.setattr(inotify_c, "inotify_add_watch", failing_add)


def fail_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    """No new inotify instance: the per-user instance limit is reached (EMFILE)."""
    if WATCHDOG_7:

        def no_instance(cls: Any) -> int:
            raise OSError(errno.EMFILE, "inotify instance limit reached")

        monkeypatch.setattr(inotify_c.InotifyFD, "_create_inotify_fd", classmethod(no_instance))
        return
    monkeypatch.setattr(inotify_c, "inotify_init", lambda: _failed(errno.EMFILE))


def inject_overflow(watcher: Watcher, root: Path) -> None:
    """Deliver an ``IN_Q_OVERFLOW`` (the kernel dropped events) to *root*'s native observer."""
    if WATCHDOG_7:
        overflow = inotify_c.InotifyEvent(
            inotify_c.WatchDescriptor(-1), inotify_c.InotifyConstants.IN_Q_OVERFLOW, 0, b""
        )
        watcher._fd.handle_event(overflow)
        return
    guard = watcher._roots[root].guard
    assert guard is not None
    guard.group.on_queue_overflow()


def reader_lock(watcher: Watcher, root: Path) -> Any:
    """The lock (a ``threading.Lock``) that, held, keeps *root*'s events in the kernel's queue."""
    if WATCHDOG_7:
        return watcher._fd._lock
    guard = watcher._roots[root].guard
    assert guard is not None
    return guard.group._lock
