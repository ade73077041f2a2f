"""One checking process, seen from this side: start it, send a request, read its answers with a
deadline, stop it. Used by :class:`cachewatchd.cache.checks.CheckPool`, which imports this module
on the first exact check (``subprocess`` and ``json`` cost a plain scan nothing).

Frames both ways: a 4-byte little-endian length, then the payload (see
:mod:`cachewatchd.cache.check_worker`). An answer is read with a deadline and a size cap; any
misbehaviour raises :class:`ProcessGone` saying how (``timed out``, ``killed by SIGKILL``,
``exited with status 1``, ``sent a garbled answer``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachewatchd.cache.pyc import RUNNING_MAGIC

if TYPE_CHECKING:
    from cachewatchd.cache.interpreters import Interpreter

__all__ = ["STARTUP_TIMEOUT", "WRONG_PYTHON", "CheckProcess", "ProcessGone", "interpreters"]

STARTUP_TIMEOUT = 10.0
"""Seconds for a new checking process to say it is ready (not counted in a request's time)."""

_LENGTH = struct.Struct("<I")
_MAX_ANSWER = 64 << 10
"""An answer frame's cap (the pyc bytes of a ``compile`` answer have their own)."""
WRONG_PYTHON = 3
"""The worker's exit status when its magic number is not this process's."""
_WORKER = Path(__file__).with_name("check_worker.py")
_LOADER = (
    "import sys; p = sys.argv.pop(1); "
    "exec(compile(open(p, 'rb').read(), p, 'exec'), {'__name__': '__main__', '__file__': p})"
)
_STUB = """\
import os, sys
n = int(sys.argv.pop(1))
s = b''
while len(s) < n:
    c = os.read(0, n - len(s))
    if not c:
        sys.exit(4)
    s += c
exec(compile(s, 'check_worker.py', 'exec'), {'__name__': '__main__'})
"""
"""How an interpreter reached through a command (:mod:`cachewatchd.cache.remote_pythons`) gets
the worker: its first *n* bytes of standard input, the requests after them (no file is copied)."""
_PATHS = ("pyc", "source")


class ProcessGone(Exception):
    """The worker is gone or misbehaved: *why* says how."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close the worker's input (it exits on EOF), wait a moment, then kill it."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def interpreters() -> list[str]:
    """This Python's executable, then its base installation's (a venv's ``bin/python`` may be a
    symlink into a directory this user cannot enter). The worker refuses another version."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    found = [
        sys.executable,
        getattr(sys, "_base_executable", ""),
        os.path.join(sys.base_exec_prefix, "bin", version),
    ]
    return [exe for i, exe in enumerate(found) if exe and exe not in found[:i]]


class CheckProcess:
    """A started checking process that has said it is ready (its limits are set): run by this
    Python, or by *python* (another version's CPython, whose pycs it checks; a Python 2.7 one
    compiles at level *optimize*: ``-O``, ``-OO``).

    Raises :class:`ProcessGone` when no candidate (of :func:`interpreters`, or *python*) starts
    and says so within :data:`STARTUP_TIMEOUT` seconds (one reading another magic number exits
    with :data:`WRONG_PYTHON`).
    """

    def __init__(
        self,
        memory: int,
        max_source: int,
        max_pyc: int,
        python: Interpreter | None = None,
        optimize: int = 0,
    ) -> None:
        magic = RUNNING_MAGIC if python is None else python.magic
        config = {
            "memory": memory,
            "max_source": max_source,
            "max_pyc": max_pyc,
            "magic": magic.hex(),
        }
        if python is not None and python.version < (3, 4):  # no -I; 2.7 compiles at its -O level
            flags = ["-E", "-s", "-S", "-B", *(["-O"] * optimize)]
        else:
            flags = ["-I", "-S", "-B"]
        self._via = None if python is None else python.via
        script = b""
        if self._via is None:
            args = [*flags, "-c", _LOADER, str(_WORKER), json.dumps(config)]
            commands = [[exe] for exe in (interpreters() if python is None else [python.exe])]
        else:
            script = _WORKER.read_bytes()
            args = [*flags, "-c", _STUB, str(len(script)), json.dumps(config)]
            commands = [list(self._via.argv)]
        error = "no Python executable"
        for command in commands:
            exe = command[0] if self._via is None else f"{self._via.name}: {command[-1]}"
            try:
                self._spawn([*command, *args])
            except OSError as exc:
                error = f"{exe}: {exc.strerror or exc}"
                continue
            try:
                deadline = time.monotonic() + STARTUP_TIMEOUT
                if script:
                    self._write(script, deadline)
                ready = self.answer(deadline)
            except ProcessGone as gone:
                ready = {"failed": gone.why}
            if ready == {"ready": True}:
                return
            self.kill()
            error = f"{exe}: {ready.get('failed', 'sent a garbled greeting')}"
            if error.endswith(f"exited with status {WRONG_PYTHON}"):
                error = (
                    f"{exe} is not the Python running cachewatchd"
                    if python is None
                    else f"{exe} does not read magic {int.from_bytes(magic[:2], 'little')}"
                )
        raise ProcessGone(f"the checking process cannot start ({error})")

    def _spawn(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            close_fds=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._finalizer = weakref.finalize(self, _stop, self.proc)
        os.set_blocking(self._in, False)
        self._writable = select.poll()
        self._writable.register(self._in, select.POLLOUT)
        self._poller = select.poll()
        self._poller.register(self._out, select.POLLIN)
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, request: dict[str, Any], deadline: float) -> int:
        """Write one request by *deadline* (``time.monotonic()``); its size in bytes. The paths
        of an interpreter reached through a command are the ones it sees."""
        via = self._via
        if via is not None:
            request = {
                k: via.path(v) if k in _PATHS and isinstance(v, str) else v
                for k, v in request.items()
            }
        data = json.dumps(request).encode()
        frame = _LENGTH.pack(len(data)) + data
        self._write(frame, deadline)
        return len(frame)

    def _write(self, frame: bytes, deadline: float) -> None:
        view = memoryview(frame)
        while view:
            try:
                view = view[os.write(self._in, view) :]
            except BlockingIOError:  # the pipe is full: the worker is busy
                left = deadline - time.monotonic()
                if left <= 0 or not self._writable.poll(left * 1000):
                    self.kill()
                    raise ProcessGone("timed out") from None
            except OSError as exc:
                raise ProcessGone(self._death(exc.strerror or str(exc))) from None

    def receive(self, deadline: float, cap: int = _MAX_ANSWER) -> bytes:
        (size,) = _LENGTH.unpack(self._read(_LENGTH.size, deadline))
        if size > cap:
            raise ProcessGone(f"sent {size} bytes (at most {cap} expected)")
        return self._read(size, deadline)

    def answer(self, deadline: float) -> dict[str, Any]:
        try:
            answer = json.loads(self.receive(deadline))
        except ValueError:
            raise ProcessGone("sent a garbled answer") from None
        if not isinstance(answer, dict):
            raise ProcessGone("sent a garbled answer")
        return answer

    def _read(self, n: int, deadline: float) -> bytes:
        """*n* bytes of the worker's output, by *deadline* (``time.monotonic()``)."""
        buffer = self._buffer
        while len(buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poller.poll(left * 1000):
                self.kill()
                raise ProcessGone("timed out")
            try:
                chunk = os.read(self._out, max(1 << 16, min(n - len(buffer), 1 << 20)))
            except OSError as exc:
                chunk = b""
                if exc.errno not in (errno.EIO, errno.EPIPE, errno.ECONNRESET):
                    raise
            if not chunk:
                raise ProcessGone(self._death("no answer"))
            buffer += chunk
        data, self._buffer = buffer[:n], buffer[n:]
        return data

    def _death(self, default: str) -> str:
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.kill()
            return default
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        self.close()

    def close(self) -> None:
        self._finalizer()

    def abandon(self) -> None:
        """In a forked child: forget the parent's worker without touching it."""
        self._finalizer.detach()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc.returncode = 0  # not ours to wait for
