"""Do native events arrive in a directory? Write a probe file and wait for its event.

A filesystem type known neither as local nor as network (UML's ``hostfs``, a FUSE type seen for the
first time) is judged by what it does: a file is created and removed in the directory while a native
observer watches it. No event within the timeout means the kernel does not report changes there,
and the daemon polls. ``doctor`` runs the same probe, and reads the clock skew of the filesystem
from the probe's mtime.

A probe only ever sees *this* machine's write: on a network or FUSE mount its event arrives, yet a
change made on the server or the far side of the mount raises none. Such types are polled whatever
the probe says (:func:`cachewatchd.watch.mounts.is_network_fs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PROBE_TIMEOUT", "Probed", "Unprobed", "events_arrive", "probe_events"]

PROBE_TIMEOUT = 1.0
"""Seconds the daemon waits for the probe file's event (a local filesystem answers in ms)."""


@dataclass(frozen=True)
class Probed:
    arrived: bool
    """A native event arrived for the probe file."""
    skew: float
    """The probe file's mtime minus this machine's clock when it was written (0 within the write)."""


@dataclass(frozen=True)
class Unprobed:
    reason: str
    no_watcher: bool = False
    """No native watcher could be started at all (an inotify limit): events cannot arrive."""


def events_arrive(directory: Path, timeout: float = PROBE_TIMEOUT) -> bool | None:
    """True when a file written in *directory* raises a native event within *timeout* seconds;
    None when nothing could be probed (not writable, no watcher)."""
    result = probe_events(directory, timeout)
    return result.arrived if isinstance(result, Probed) else None


def probe_events(directory: Path, timeout: float) -> Probed | Unprobed:
    """Write and remove a probe file in *directory* under a native observer."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    if not os.access(directory, os.W_OK):
        return Unprobed("not writable here: native events and the clock were not probed")
    name = f".cachewatchd-probe-{secrets.token_hex(6)}"
    seen = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if os.path.basename(os.fsdecode(event.src_path)) == name:
                seen.set()

    observer = Observer()
    try:
        observer.schedule(Handler(), str(directory), recursive=False)
        observer.start()
    except OSError as exc:  # e.g. the inotify instance or watch limit
        reason = f"no native watcher could be started: {exc.strerror or exc}"
        return Unprobed(reason, no_watcher=True)
    with _quiet_watchdog():
        return _write_probe(directory / name, seen, observer, timeout)


def _write_probe(
    path: Path, seen: threading.Event, observer: Any, timeout: float
) -> Probed | Unprobed:
    try:
        before = time.time()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"cachewatchd probe\n")
        finally:
            os.close(fd)
        after = time.time()
        mtime = path.stat().st_mtime
        arrived = seen.wait(timeout)
    except OSError as exc:
        return Unprobed(f"no probe file could be written ({exc.strerror or exc}): nothing probed")
    finally:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        observer.stop()
        observer.join()
    return Probed(arrived, mtime - after if mtime > after else min(mtime - before, 0.0))


@contextlib.contextmanager
def _quiet_watchdog() -> Iterator[None]:
    """No stray lines from watchdog's loggers on stderr while the probe observer stops (stopping
    races its emitter, which logs "queue_events() called when the thread is inactive" through
    logging's last-resort handler when nothing is configured). Records still propagate."""
    logger = logging.getLogger("watchdog")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
