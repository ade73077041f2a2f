"""The daemon's own child: ``cachewatchd --foreground PATH -- COMMAND ARGS...``.

COMMAND runs in its own process group, is restarted after each batch, and, when it dies on its own
with an error, is started again after a delay that doubles while it keeps crashing (crash-loop
backoff).

Its output passes through: its stdout is the daemon's stdout; its stderr goes through a
:class:`StderrTee`, which copies every byte to the daemon's stderr unchanged and keeps the last
line, so that the daemon can say why the child exited (``child-exited`` carries it as ``reason``,
``cachewatchd status`` shows it). The tee is a pipe, or a pty in raw mode when the daemon's stderr
is a terminal (the child sees a terminal as it would without the daemon: colours, tracebacks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from cachewatchd.errors import RuntimeFailure
from cachewatchd.log import get_logger
from cachewatchd.processes.os_procs import terminate_tree

__all__ = ["ChildError", "OwnChild", "StderrTee", "stop_own_children"]

_STABLE_AFTER = 10.0
"""A child that ran this long before dying resets the backoff."""

_TEE_DRAIN = 1.0
"""Seconds to wait, once the child exited, for the tee to read the last of its stderr."""

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


_children: weakref.WeakSet[OwnChild] = weakref.WeakSet()
_children_lock = threading.Lock()


def stop_own_children() -> None:
    """Stop every own child of this process still running, and refuse new starts: the last word
    of a daemon on its way out, whatever stopped it (its controller normally stopped them)."""
    with _children_lock:
        children = list(_children)
    for child in children:
        with contextlib.suppress(Exception):
            child.close()


class ChildError(RuntimeFailure):
    """The command could not be started."""


class OwnChild:
    """One COMMAND, started and restarted by the daemon. Thread-safe."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        grace: float = 10.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        name: str = "child",
    ) -> None:
        if not command:
            raise ChildError("the child command is empty")
        self.command = tuple(command)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.grace = grace
        self.name = name
        self._backoff_min, self._backoff_max = backoff
        self._delay = self._backoff_min
        self._last_delay = self._backoff_min
        self._lock = threading.RLock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._restart_at: float | None = None
        self.crashes = 0
        self.start_failures = 0
        """Crash restarts that could not start COMMAND (each logged as ``restart-failed``)."""
        self.last_error: str | None = None
        """Why the last start failed; ``None`` once COMMAND started."""
        self.last_exit: int | None = None
        self.last_reason: str | None = None
        """How COMMAND last ended on its own, e.g. ``exited with code 1: ... address already in
        use`` (its last stderr line); ``None`` until it did."""
        self._tee: StderrTee | None = None
        self._closed = False
        self._log = get_logger(__name__)

    # -- state --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        with self._lock:
            if self._popen is None or self._popen.poll() is not None:
                return None
            return self._popen.pid

    @property
    def waiting_until(self) -> float | None:
        """Monotonic time of the scheduled crash restart, if one is pending."""
        with self._lock:
            return self._restart_at

    # -- actions ------------------------------------------------------------------------------
    def start(self) -> int:
        """Start COMMAND in its own process group; return its pid."""
        with self._lock:
            if self._closed:
                raise ChildError(f"not starting {self.command[0]!r}: the daemon is stopping")
            if self.pid is not None:
                return self.pid
            group: dict[str, Any] = (
                {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
            )
            try:
                tee = StderrTee.open(name=self.name)
            except OSError as exc:
                self.last_error = f"cannot pass {self.command[0]!r}'s stderr through: {exc}"
                raise ChildError(self.last_error) from None
            try:
                self._popen = subprocess.Popen(
                    self.command,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stderr=tee.child_end,
                    **group,
                )
            except OSError as exc:
                tee.discard()
                self._popen = None
                self.last_error = f"cannot start {self.command[0]!r}: {exc.strerror or exc}"
                raise ChildError(self.last_error) from None
            tee.started()
            self._tee = tee
            with _children_lock:
                _children.add(self)
            self._started_at = time.monotonic()
            self._restart_at = None
            self.last_error = None
            return self._popen.pid

    def close(self) -> None:
        """Stop COMMAND for good: :meth:`start` refuses from now on."""
        with self._lock:
            self._closed = True
        self.stop()

    def stop(self) -> int | None:
        """TERM the child's group, wait ``grace``, KILL, reap; return its exit code."""
        with self._lock:
            popen, self._popen = self._popen, None
            tee, self._tee = self._tee, None
            self._restart_at = None
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                terminate_tree(psutil.Process(popen.pid), self.grace)
        code = popen.wait()
        self.last_exit = code
        if tee is not None:
            tee.wait(_TEE_DRAIN)
        return code

    def restart(self) -> int:
        """Stop, then start again; return the new pid."""
        self.stop()
        return self.start()

    def retry_later(self) -> None:
        """After a start that failed: start again when the backoff delay is over (see :meth:`poll`)."""
        with self._lock:
            self._schedule(time.monotonic())

    def poll(self) -> float | None:
        """Notice a child that died on its own and (re)start it when its backoff is over.

        Returns the seconds until the next call is useful, or ``None`` when nothing is pending.
        """
        now = time.monotonic()
        with self._lock:
            popen, tee = self._popen, self._tee
            code = popen.poll() if popen is not None else None
            if popen is not None and code is None:
                return 0.25
        if popen is not None and code is not None:
            if tee is not None:
                tee.wait(_TEE_DRAIN)  # its last line is the reason; outside the lock
            with self._lock:
                if self._popen is popen:  # not stopped or restarted meanwhile
                    self._popen = self._tee = None
                    self.last_exit = code
                    self._exited(code, now, tee.last_line if tee is not None else None)
        with self._lock:
            if self._restart_at is None:
                return None
            if now < self._restart_at:
                return self._restart_at - now
        try:
            self.start()
        except ChildError as exc:
            self._log.error("restart-failed", target=self.name, error=str(exc))
            with self._lock:
                self.start_failures += 1
                self._schedule(time.monotonic())
                return self._last_delay
        return 0.25

    def _exited(self, code: int, now: float, line: str | None) -> None:
        how = f"exited with code {code}" if code >= 0 else f"killed by {_signal_name(-code)}"
        self.last_reason = f"{how}: {line}" if line else how
        if code == 0:
            self._log.info(
                "child-exited", target=self.name, code=code, restart_in=None, reason=line
            )
            return
        self.crashes += 1
        if now - self._started_at >= _STABLE_AFTER:
            self._delay = self._backoff_min
        self._schedule(now)
        self._log.warning(
            "child-exited", target=self.name, code=code, restart_in=self._last_delay, reason=line
        )

    def _schedule(self, now: float) -> None:
        self._last_delay = self._delay
        self._restart_at = now + self._delay
        self._delay = min(self._delay * 2, self._backoff_max)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
