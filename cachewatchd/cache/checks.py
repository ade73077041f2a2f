"""The exact check out of process: untrusted pyc bodies and sources are unmarshalled and compiled
in a worker process with memory and time limits, never in this one.

``marshal.loads`` of a hostile body can raise anything (``SystemError`` for a code object with a
negative argument count, ``MemoryError`` for a huge declared length) or allocate what the body
declares (a 21-byte pyc declaring a 2**27-element tuple takes 1 GiB); ``compile()`` of a hostile
source can raise ``RecursionError`` or, on some versions, overflow the C stack and kill the
interpreter. So a :class:`CheckPool` runs them in a worker (:mod:`cachewatchd.cache.check_worker`)
started lazily on the first check and reused for the next ones: ``RLIMIT_AS`` of
:attr:`Limits.memory`, no core files, no file writes, :attr:`Limits.timeout` seconds per request.
Any failure of the worker (killed, crashed, timed out, garbled answer) becomes an
:class:`Outcome`, the worker is discarded, and the next check starts a fresh one.

One pool serves one audit, clean or second look (``with CheckPool() as checks``), so no process
outlives its caller; a forked child (``scan --jobs``) starts its own worker. Thread-safe: checks of
one pool take turns.
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
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from cachewatchd.cache.pyc import RUNNING_MAGIC

__all__ = [
    "MAX_PYC_BYTES",
    "MAX_SOURCE_BYTES",
    "CheckPool",
    "Limits",
    "Outcome",
    "PycBytes",
]

MAX_SOURCE_BYTES = 16 << 20
"""Sources bigger than this are neither compiled nor hashed (the biggest real modules are a few
MiB: generated API clients, data tables); their caches are judged by the header alone."""
MAX_PYC_BYTES = 64 << 20
"""Pyc bodies bigger than this are not unmarshalled."""

_LENGTH = struct.Struct("<I")
_MAX_ANSWER = 64 << 10
"""An answer frame's cap (a pyc's bytes have :data:`MAX_PYC_BYTES`)."""
_WRONG_PYTHON = 3
"""The worker's exit status when its magic number is not this process's."""
_WORKER = Path(__file__).with_name("check_worker.py")
_LOADER = (
    "import sys; p = sys.argv.pop(1); "
    "exec(compile(open(p, 'rb').read(), p, 'exec'), {'__name__': '__main__', '__file__': p})"
)


class Limits(NamedTuple):
    """What one worker may use."""

    memory: int = 1 << 30
    """Address space of the worker (``RLIMIT_AS``): compiling a 16 MiB source fits."""
    timeout: float = 30.0
    """Seconds for one request (unmarshal, compile and compare of one file)."""
    max_source: int = MAX_SOURCE_BYTES
    max_pyc: int = MAX_PYC_BYTES


class Outcome(NamedTuple):
    """The answer to one request.

    ``result``: ``loaded``, ``same``, ``differs``, ``corrupt``, ``no_compile``, ``unchecked``
    (see :mod:`cachewatchd.cache.check_worker`) or ``failed`` (the worker died, was killed or
    timed out; ``loaded`` tells whether the pyc's body had been unmarshalled by then).
    """

    result: str
    detail: str = ""
    loaded: bool = False


class PycBytes(NamedTuple):
    """A pyc compiled by the worker."""

    data: bytes


class _Gone(Exception):
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


def _interpreters() -> list[str]:
    """This Python's executable, then its base installation's (a venv's ``bin/python`` may be a
    symlink into a directory this user cannot enter). The worker refuses another version."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    found = [
        sys.executable,
        getattr(sys, "_base_executable", ""),
        os.path.join(sys.base_exec_prefix, "bin", version),
    ]
    return [exe for i, exe in enumerate(found) if exe and exe not in found[:i]]


class _Worker:
    def __init__(self, limits: Limits) -> None:
        config = {
            "memory": limits.memory,
            "max_source": limits.max_source,
            "max_pyc": limits.max_pyc,
            "magic": RUNNING_MAGIC.hex(),
        }
        args = ["-I", "-S", "-B", "-c", _LOADER, str(_WORKER), json.dumps(config)]
        error = "no Python executable"
        for exe in _interpreters():
            try:
                self.proc = subprocess.Popen(
                    [exe, *args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    bufsize=0,
                    close_fds=True,
                )
                break
            except OSError as exc:
                error = f"{exe}: {exc.strerror or exc}"
        else:
            raise _Gone(f"the checking process cannot start ({error})")
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._finalizer = weakref.finalize(self, _stop, self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, request: dict[str, Any]) -> None:
        data = json.dumps(request).encode()
        view = memoryview(_LENGTH.pack(len(data)) + data)
        try:
            while view:
                view = view[os.write(self._in, view) :]
        except OSError as exc:
            raise _Gone(self._death(exc.strerror or str(exc))) from None

    def receive(self, deadline: float, cap: int = _MAX_ANSWER) -> bytes:
        (size,) = _LENGTH.unpack(self._read(_LENGTH.size, deadline))
        if size > cap:
            raise _Gone(f"sent {size} bytes (at most {cap} expected)")
        return self._read(size, deadline)

    def answer(self, deadline: float) -> dict[str, Any]:
        try:
            answer = json.loads(self.receive(deadline))
        except ValueError:
            raise _Gone("sent a garbled answer") from None
        if not isinstance(answer, dict):
            raise _Gone("sent a garbled answer")
        return answer

    def _read(self, n: int, deadline: float) -> bytes:
        chunks = []
        poller = select.poll()
        poller.register(self._out, select.POLLIN)
        while n:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                self.kill()
                raise _Gone("timed out")
            try:
                chunk = os.read(self._out, min(n, 1 << 20))
            except OSError as exc:
                chunk = b""
                if exc.errno not in (errno.EIO, errno.EPIPE, errno.ECONNRESET):
                    raise
            if not chunk:
                raise _Gone(self._death("no answer"))
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

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


class CheckPool:
    """Runs checks of untrusted files in a worker process; see the module's docstring."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self._worker: _Worker | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cannot_start: str | None = None

    def __enter__(self) -> CheckPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def worker_pid(self) -> int | None:
        """The current worker's process id, if one runs (for tests)."""
        worker = self._worker
        return None if worker is None or self._pid != os.getpid() else worker.pid

    def close(self) -> None:
        """Stop the worker, if one runs; the pool starts a new one if used again."""
        with self._lock:
            self._forked()
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def load(self, pyc: str) -> Outcome:
        """Unmarshal *pyc*'s body: ``loaded``, ``corrupt``, or another :class:`Outcome`."""
        return self._ask({"op": "load", "pyc": pyc})

    def exact(self, pyc: str, source: str, optimize: int) -> Outcome:
        """Compare *pyc*'s code with a compile of *source* at *optimize*."""
        return self._ask({"op": "exact", "pyc": pyc, "source": source, "optimize": optimize})

    def compile(self, source: str, optimize: int, mode: str) -> PycBytes | Outcome:
        """The pyc CPython would write for *source* (*mode*: ``timestamp``, ``checked-hash``,
        ``unchecked-hash``), or why not."""
        request = {"op": "compile", "source": source, "optimize": optimize, "mode": mode}
        data: list[bytes] = []
        outcome = self._ask(request, data)
        return PycBytes(data[0]) if outcome.result == "compiled" and data else outcome

    def _forked(self) -> None:
        if self._pid != os.getpid():
            if self._worker is not None:
                self._worker.abandon()
                self._worker = None
            self._pid = os.getpid()

    def _ask(self, request: dict[str, Any], payload: list[bytes] | None = None) -> Outcome:
        with self._lock:
            self._forked()
            if self._cannot_start is not None:
                return Outcome("unchecked", self._cannot_start)
            loaded = False
            try:
                worker = self._worker
                if worker is None:
                    worker = self._worker = _Worker(self.limits)
                deadline = time.monotonic() + self.limits.timeout
                worker.send(request)
                answer = worker.answer(deadline)
                if answer.get("phase") == "loaded":
                    loaded = True
                    answer = worker.answer(deadline)
                result, detail = answer.get("result"), answer.get("detail", "")
                if not isinstance(result, str) or not isinstance(detail, str):
                    return self._lost("sent a garbled answer", loaded)
                if result == "compiled" and payload is not None:
                    payload.append(worker.receive(deadline, self.limits.max_pyc + (1 << 20)))
                return Outcome(result, detail, loaded)
            except _Gone as gone:
                return self._lost(gone.why, loaded)
            except BaseException:  # interrupted mid-request: its answer must not reach the next
                if self._worker is not None:
                    self._worker.kill()
                    self._worker = None
                raise

    def _lost(self, why: str, loaded: bool) -> Outcome:
        worker, self._worker = self._worker, None
        if worker is None or why == f"exited with status {_WRONG_PYTHON}":
            if worker is not None:
                why = f"{sys.executable} is not the Python running cachewatchd"
            self._cannot_start = why
            return Outcome("unchecked", why)
        worker.kill()
        if why == "timed out":
            why = f"timed out after {self.limits.timeout:g} s"
        return Outcome("failed", why, loaded)
