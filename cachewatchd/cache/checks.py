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

import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from cachewatchd.cache.check_process import CheckProcess

__all__ = [
    "MAX_PYC_BYTES",
    "MAX_SOURCE_BYTES",
    "WINDOW",
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
WINDOW = 16 << 10
"""Bytes of requests in flight in :meth:`CheckPool.exact_many`: below a pipe's buffer, so writing
a request rarely waits (and never past the timeout); answers are smaller still."""


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

    ``result``: ``loaded``, ``same``, ``differs``, ``corrupt``, ``no_compile``, ``unchecked``,
    ``gone``, ``unreadable``, ``compiled`` (see :mod:`cachewatchd.cache.check_worker`) or
    ``failed`` (the worker died, was killed, timed out or misbehaved: *detail* says how).
    """

    result: str
    detail: str = ""
    source_failed: bool = False
    """With ``failed`` from :meth:`CheckPool.exact`: the body unmarshals; compiling the source
    failed."""


class PycBytes(NamedTuple):
    """A pyc compiled by the worker."""

    data: bytes


class CheckPool:
    """Runs checks of untrusted files in a worker process; see the module's docstring."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self._worker: CheckProcess | None = None
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
        """Compare *pyc*'s code with a compile of *source* at *optimize*.

        When the worker fails (``failed``), a fresh one unmarshals the body alone, to tell which
        file is to blame: the body (its outcome, ``corrupt`` or ``failed``, is returned) or the
        source (``failed``, with ``source_failed``).
        """
        outcome = self._ask({"op": "exact", "pyc": pyc, "source": source, "optimize": optimize})
        if outcome.result != "failed":
            return outcome
        body = self.load(pyc)
        if body.result == "loaded":
            return outcome._replace(source_failed=True)
        return body

    def exact_many(self, requests: Sequence[tuple[str, str, int]]) -> list[Outcome]:
        """:meth:`exact` of each ``(pyc, source, optimize)``, in order, pipelined: up to
        :data:`WINDOW` bytes of requests are in flight, so the worker rarely waits for this
        process. From a failure of the worker on, the rest are checked one by one with
        :meth:`exact`."""
        outcomes = self._pipelined(
            [{"op": "exact", "pyc": p, "source": s, "optimize": o} for p, s, o in requests]
        )
        outcomes += [self.exact(*request) for request in requests[len(outcomes) :]]
        return outcomes

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

    def _pipelined(self, requests: list[dict[str, Any]]) -> list[Outcome]:
        """The outcomes of *requests* answered before the worker failed (all, usually)."""
        from cachewatchd.cache.check_process import ProcessGone

        outcomes: list[Outcome] = []
        if len(requests) < 2:
            return outcomes
        with self._lock:
            self._forked()
            if self._cannot_start is not None:
                return outcomes
            sizes: deque[int] = deque()  # of the requests sent and not answered yet
            try:
                worker = self._worker
                if worker is None:
                    worker = self._worker = _start(self.limits)
                while len(outcomes) < len(requests):
                    # the worker answers in order: this one's time runs from the last answer
                    deadline = time.monotonic() + self.limits.timeout
                    sent = len(outcomes) + len(sizes)
                    while sent < len(requests) and (not sizes or sum(sizes) < WINDOW):
                        sizes.append(worker.send(requests[sent], deadline))
                        sent += 1
                    answer = worker.answer(deadline)
                    result, detail = answer.get("result"), answer.get("detail", "")
                    if not isinstance(result, str) or not isinstance(detail, str):
                        self._lost("sent a garbled answer")
                        break
                    outcomes.append(Outcome(result, detail))
                    sizes.popleft()
            except ProcessGone as gone:
                self._lost(gone.why)
            except BaseException:
                if self._worker is not None:
                    self._worker.kill()
                    self._worker = None
                raise
        return outcomes

    def _ask(self, request: dict[str, Any], payload: list[bytes] | None = None) -> Outcome:
        from cachewatchd.cache.check_process import ProcessGone

        with self._lock:
            self._forked()
            if self._cannot_start is not None:
                return Outcome("unchecked", self._cannot_start)
            try:
                worker = self._worker
                if worker is None:
                    worker = self._worker = _start(self.limits)
                deadline = time.monotonic() + self.limits.timeout
                worker.send(request, deadline)
                answer = worker.answer(deadline)
                result, detail = answer.get("result"), answer.get("detail", "")
                if not isinstance(result, str) or not isinstance(detail, str):
                    return self._lost("sent a garbled answer")
                if result == "compiled" and payload is not None:
                    payload.append(worker.receive(deadline, self.limits.max_pyc + (1 << 20)))
                return Outcome(result, detail)
            except ProcessGone as gone:
                return self._lost(gone.why)
            except BaseException:  # interrupted mid-request: its answer must not reach the next
                if self._worker is not None:
                    self._worker.kill()
                    self._worker = None
                raise

    def _lost(self, why: str) -> Outcome:
        worker, self._worker = self._worker, None
        if worker is None:  # it did not start: no use trying again for every file
            self._cannot_start = why
            return Outcome("unchecked", why)
        worker.kill()
        if why == "timed out":
            why = f"timed out after {self.limits.timeout:g} s"
        return Outcome("failed", why)


def _start(limits: Limits) -> CheckProcess:
    """A new checking process (the module holding it is imported on the first need: a plain scan
    never pays for ``subprocess``)."""
    from cachewatchd.cache.check_process import CheckProcess

    return CheckProcess(limits.memory, limits.max_source, limits.max_pyc)
