"""The log file of a detached daemon: one per set of roots, rotated by size.

``cachewatchd run`` without ``--foreground`` spawns the daemon with its stdout and stderr appended
to the log file of its set of roots (``<user log dir>/cachewatchd-<hash>.log``,
:func:`cachewatchd.paths.daemon_log_file`) and names it in :data:`LOG_FILE_ENV`; the daemon takes it
(:func:`take_log_file`) and rotates it by size (:class:`RotatingLog`). ``status`` names the log file
a running daemon holds open (:func:`log_of`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LOG_FILES", "LOG_FILE_ENV", "LOG_MAX_BYTES", "RotatingLog", "log_of", "take_log_file"]

LOG_FILE_ENV = "CACHEWATCHD_LOG_FILE"
"""Set by :func:`cachewatchd.cli._detach.detach` for the daemon it spawns: the log file its stdout
and stderr are."""
LOG_MAX_BYTES = 5 * 1024 * 1024
"""A detached daemon's log file is rotated once it holds this many bytes..."""
LOG_FILES = 3
"""...and this many files are kept: ``X.log``, ``X.log.1``, ``X.log.2`` (the oldest dropped)."""
_LOG_NAME = re.compile(r"cachewatchd-[0-9a-f]{12}\.log")
"""The name of a detached daemon's log file (:func:`cachewatchd.paths.daemon_log_file`)."""


def take_log_file() -> RotatingLog | None:
    """The log file :func:`~cachewatchd.cli._detach.detach` made this daemon's stdout and stderr
    (popped from the environment: managed processes do not inherit it), or ``None`` when there is
    none."""
    value = os.environ.pop(LOG_FILE_ENV, None)
    return RotatingLog.attach(Path(value)) if value else None


class RotatingLog:
    """A detached daemon's log file, rotated by size; its stdout and stderr follow it.

    Log lines are written whole (what :meth:`write` gets is held until its newline) to the file
    descriptors that are *path*; once the file holds *max_bytes* (also at start), it becomes
    ``<path>.1`` (``.1`` becomes ``.2``..., *files* kept in all) and a new *path* is opened onto the
    same descriptors: the own child's stderr, Python's own messages and the next lines go to the new
    file. When another process rotated the file first (a second daemon on the same roots that was
    refused), the new *path* is taken as it is. A rotation that fails is tried again after another
    *max_bytes*; it never loses a line. Write errors are raised (:class:`~cachewatchd.log.LogSink`
    counts them).
    """

    def __init__(
        self,
        path: Path,
        fds: Sequence[int],
        *,
        max_bytes: int = LOG_MAX_BYTES,
        files: int = LOG_FILES,
    ) -> None:
        self.path = path
        self._fds = tuple(fds)
        self._max_bytes = max_bytes
        self._files = max(files, 1)
        self._limit = max_bytes
        self._pending = ""
        self._lock = threading.Lock()
        self._rotate_when_full()

    @classmethod
    def attach(cls, path: Path, fds: Sequence[int] = (1, 2), **limits: int) -> RotatingLog | None:
        """The log of the *fds* that are *path* (the same file); ``None`` when none of them is."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        ours = [fd for fd in fds if _same_file(fd, st)]
        return cls(path, ours, **limits) if ours else None

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            whole, newline, rest = self._pending.rpartition("\n")
            if newline:
                self._pending = rest
                self._write(whole + newline)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                text, self._pending = self._pending, ""
                self._write(text)

    def _write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "replace"))
        while data:
            data = data[os.write(self._fds[0], data) :]
        self._rotate_when_full()

    def _rotate_when_full(self) -> None:
        try:
            size = os.fstat(self._fds[0]).st_size
        except OSError:
            return
        if size < self._limit:
            return
        try:
            self._rotate()
        except OSError:
            self._limit = size + self._max_bytes  # not now; a line is never lost for it
        else:
            self._limit = self._max_bytes

    def _rotate(self) -> None:
        if _same_file(self._fds[0], _stat_or_none(self.path)):  # else rotated by another already
            names = [self.path, *(Path(f"{self.path}.{n}") for n in range(1, self._files))]
            if len(names) == 1:
                os.unlink(self.path)
            for n in range(len(names) - 1, 0, -1):  # .1 -> .2 first: the oldest is overwritten
                with contextlib.suppress(FileNotFoundError):
                    os.replace(names[n - 1], names[n])
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        try:
            for target in self._fds:
                os.dup2(fd, target)
        finally:
            os.close(fd)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _same_file(fd: int, st: os.stat_result | None) -> bool:
    if st is None:
        return False
    try:
        mine = os.fstat(fd)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def log_of(record: Mapping[str, Any]) -> str | None:
    """The log file the daemon of *record* writes to when it was detached (the
    ``cachewatchd-<hash>.log`` it holds open as its stdout and stderr), else ``None``."""
    import psutil

    from cachewatchd.daemon.registry import process_of

    proc = process_of(record)
    if proc is None:
        return None
    try:
        files = proc.open_files()
    except (psutil.Error, OSError):
        return None
    return next((f.path for f in files if _LOG_NAME.fullmatch(os.path.basename(f.path))), None)
