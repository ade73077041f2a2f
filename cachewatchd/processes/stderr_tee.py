"""The own child's stderr passed through: :class:`StderrTee`.

Every byte the child writes to its stderr is copied to the daemon's stderr unchanged, and the last
line is kept, so that the daemon can say why the child exited. The tee is a pipe, or a pty in raw
mode when the daemon's stderr is a terminal (the child sees a terminal as it would without the
daemon: colours, tracebacks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import select
import termios
import threading
import tty

from cachewatchd.log import get_logger

__all__ = ["StderrTee"]

_WRITE_STALL = 1.0
"""Seconds the tee waits for the daemon's stderr to take more bytes before it drops them: a
stalled terminal or log reader must not block the child's writes to its stderr."""

_CHUNK = 4096
"""Bytes per write to the daemon's stderr (PIPE_BUF: a pipe with room takes it whole)."""

_LINE_LIMIT = 8192
"""Bytes of an unfinished stderr line kept (a progress bar never ends its line)."""

_REASON_LIMIT = 300
"""Characters of a reason kept."""

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


def _clean(line: bytes) -> str | None:
    """A line of the child's stderr as a one-line reason: colours and carriage-return overwrites
    removed, whitespace collapsed; ``None`` when nothing is left."""
    text = line.decode("utf-8", "replace").rsplit("\r", 1)[-1]
    text = " ".join(_ANSI.sub("", text).split())
    if not text:
        return None
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


class StderrTee:
    """The child's stderr: copied to *out* (the daemon's stderr) byte for byte, last line kept.

    :meth:`open` makes the pair; the child gets :attr:`child_end` as its stderr and the parent
    closes it (:meth:`started`). A reader thread copies until every writer has closed (EOF). It
    never dies silently (an unexpected error is logged once, and it goes on draining so that the
    child never blocks on a full pipe) and it never blocks the child for long: when *out* takes
    nothing for ``_WRITE_STALL`` seconds (then, until it takes bytes again, at once), or fails
    (a terminal that hung up, a reader that left), the bytes are dropped and counted in
    :attr:`dropped`.
    """

    def __init__(self, read_fd: int, child_end: int, *, name: str, out: int = 2) -> None:
        self.child_end = child_end
        self._fd = read_fd
        self._out = out
        self._name = name
        self._lock = threading.Lock()
        self._partial = bytearray()
        self._last: str | None = None
        self.dropped = 0
        """Bytes of the child's stderr that could not be written to the daemon's stderr."""
        self._stalled = False
        """*out* took nothing for ``_WRITE_STALL`` seconds: drop without waiting until it does."""
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cachewatchd-stderr-{name}", daemon=True
        )

    @classmethod
    def open(cls, *, name: str, out: int = 2) -> StderrTee:
        """A pty in raw mode when *out* is a terminal, else a pipe. Raises :class:`OSError`."""
        if os.isatty(out):
            with contextlib.suppress(OSError):
                master, slave = os.openpty()
                try:
                    tty.setraw(slave)
                    with contextlib.suppress(OSError):
                        size = fcntl.ioctl(out, termios.TIOCGWINSZ, b"\0" * 8)
                        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
                except OSError:
                    os.close(master)
                    os.close(slave)
                    raise
                return cls(master, slave, name=name, out=out)
        read_fd, write_fd = os.pipe()
        return cls(read_fd, write_fd, name=name, out=out)

    def started(self) -> None:
        """The child has its copy of :attr:`child_end`: close ours and start copying."""
        os.close(self.child_end)
        self._thread.start()

    def discard(self) -> None:
        """The child could not be started: close both ends."""
        for fd in (self.child_end, self._fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def last_line(self) -> str | None:
        """The last non-empty line the child wrote to its stderr so far (cleaned), or ``None``."""
        with self._lock:
            pending = _clean(bytes(self._partial)) if self._partial else None
            return pending or self._last

    def wait(self, timeout: float) -> bool:
        """Wait until every writer closed the child's stderr and all of it was read."""
        return self._done.wait(timeout)

    # -- the reader thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._copy()
        except BaseException as exc:  # noqa: BLE001 - never die silently, never block the child
            with contextlib.suppress(Exception):
                get_logger(__name__).error(
                    "error",
                    target=self._name,
                    where="child stderr",
                    error=f"{type(exc).__name__}: {exc}",
                )
            with contextlib.suppress(BaseException):
                self._drain()
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._done.set()

    def _read(self) -> bytes:
        try:
            return os.read(self._fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:  # a pty whose last writer closed: the end
                return b""
            raise

    def _copy(self) -> None:
        while data := self._read():
            self._keep(data)
            self._write(data)
        with self._lock:
            if self._partial:
                self._last = _clean(bytes(self._partial)) or self._last
                self._partial.clear()

    def _drain(self) -> None:
        while self._read():
            pass

    def _keep(self, data: bytes) -> None:
        with self._lock:
            *lines, rest = (bytes(self._partial) + data).split(b"\n")
            for line in reversed(lines):
                cleaned = _clean(line)
                if cleaned:
                    self._last = cleaned
                    break
            self._partial[:] = rest[-_LINE_LIMIT:]

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not self._writable():
                self.dropped += len(view)
                return
            try:
                written = os.write(self._out, view[:_CHUNK])
            except BlockingIOError:
                continue
            except OSError:  # a terminal that hung up (EIO), a reader that left (EPIPE)...
                self.dropped += len(view)
                return
            view = view[written:]

    def _writable(self) -> bool:
        """Whether *out* takes bytes now, waiting up to ``_WRITE_STALL`` (not at all while it
        is known to be stalled: the child's output is drained at full speed meanwhile)."""
        poller = select.poll()
        poller.register(self._out, select.POLLOUT)
        try:
            ready = bool(poller.poll(0 if self._stalled else _WRITE_STALL * 1000))
        except OSError:
            ready = False
        self._stalled = not ready
        return ready
