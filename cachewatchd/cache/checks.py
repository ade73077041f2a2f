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

A pyc of another CPython version (2.7, 3.3+) is checked by a worker run by that version's
interpreter (:mod:`cachewatchd.cache.interpreters` finds it; the worker's code runs on 2.7 and
3.6+), with the same limits: each request goes to the worker of the magic number its pyc starts
with, one worker per interpreter (per ``-O`` level for 2.7, whose ``compile()`` has none). Without
such an interpreter the answer is ``unchecked``, naming the missing version.

One pool serves one audit, clean or second look (``with CheckPool() as checks``), so no process
outlives its caller; a forked child (``scan --jobs``) starts its own workers. Thread-safe: checks
of one pool take turns.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType

from cachewatchd.cache.named import TYPE_CHECKING, NamedTuple
from cachewatchd.cache.pyc import RUNNING_MAGIC, version_of_magic

if TYPE_CHECKING:
    from typing import Any

    from cachewatchd.cache.check_process import CheckProcess
    from cachewatchd.cache.interpreters import Finder, Interpreter

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


Key = tuple[str, int] | None
"""Which worker serves a request: ``None`` for this Python's, ``(executable, level)`` for another
version's interpreter (*level*: the ``-O`` level of a 2.7 one, else 0)."""


class CheckPool:
    """Runs checks of untrusted files in worker processes; see the module's docstring.

    A pyc of another CPython version is checked by a worker run by that version's interpreter,
    found by *finder* (:mod:`cachewatchd.cache.interpreters`); without one, its requests are
    answered ``unchecked`` saying which version is missing (:attr:`missing`).
    """

    def __init__(self, limits: Limits | None = None, *, finder: Finder | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self._finder = finder
        self._workers: dict[Key, CheckProcess] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cannot_start: dict[Key, str] = {}
        self._pythons: dict[str, Interpreter] = {}

    def __enter__(self) -> CheckPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def worker_pid(self) -> int | None:
        """This Python's worker's process id, if one runs (for tests)."""
        worker = self._workers.get(None)
        return None if worker is None or self._pid != os.getpid() else worker.pid

    @property
    def missing(self) -> dict[tuple[int, int], str]:
        """The CPython versions whose pycs needed a check and whose interpreter was not found."""
        return {} if self._finder is None else dict(self._finder.missing)

    def close(self) -> None:
        """Stop the workers, if any run; the pool starts new ones if used again."""
        with self._lock:
            self._forked()
            for worker in self._workers.values():
                worker.close()
            self._workers.clear()

    def load(self, pyc: str) -> Outcome:
        """Unmarshal *pyc*'s body: ``loaded``, ``corrupt``, or another :class:`Outcome`."""
        key = self._route(pyc, 0)
        if isinstance(key, Outcome):
            return key
        return self._ask(key, {"op": "load", "pyc": pyc})

    def exact(self, pyc: str, source: str, optimize: int) -> Outcome:
        """Compare *pyc*'s code with a compile of *source* at *optimize*, in the worker of the
        interpreter that reads *pyc* (by its magic number).

        When the worker fails (``failed``), a fresh one unmarshals the body alone, to tell which
        file is to blame: the body (its outcome, ``corrupt`` or ``failed``, is returned) or the
        source (``failed``, with ``source_failed``).
        """
        key = self._route(pyc, optimize)
        if isinstance(key, Outcome):
            return key
        request = {"op": "exact", "pyc": pyc, "source": source, "optimize": optimize}
        outcome = self._ask(key, request)
        if outcome.result != "failed":
            return outcome
        body = self._ask(key, {"op": "load", "pyc": pyc})
        if body.result == "loaded":
            return outcome._replace(source_failed=True)
        return body

    def exact_many(self, requests: Sequence[tuple[str, str, int]]) -> list[Outcome]:
        """:meth:`exact` of each ``(pyc, source, optimize)``, in order, pipelined per worker: up
        to :data:`WINDOW` bytes of requests are in flight, so a worker rarely waits for this
        process. From a failure of a worker on, the rest of its requests are checked one by one
        with :meth:`exact`."""
        outcomes: list[Outcome | None] = [None] * len(requests)
        groups: dict[Key, list[int]] = {}
        for i, (pyc, _, optimize) in enumerate(requests):
            key = self._route(pyc, optimize)
            if isinstance(key, Outcome):
                outcomes[i] = key
            else:
                groups.setdefault(key, []).append(i)
        for key, indices in groups.items():
            done = self._pipelined(
                key,
                [
                    {"op": "exact", "pyc": p, "source": s, "optimize": o}
                    for p, s, o in (requests[i] for i in indices)
                ],
            )
            for i, outcome in zip(indices, done, strict=False):
                outcomes[i] = outcome
            for i in indices[len(done) :]:
                outcomes[i] = self.exact(*requests[i])
        return [o if o is not None else Outcome("unchecked", "not asked") for o in outcomes]

    def compile(self, source: str, optimize: int, mode: str) -> PycBytes | Outcome:
        """The pyc this CPython would write for *source* (*mode*: ``timestamp``,
        ``checked-hash``, ``unchecked-hash``), or why not."""
        request = {"op": "compile", "source": source, "optimize": optimize, "mode": mode}
        data: list[bytes] = []
        outcome = self._ask(None, request, data)
        return PycBytes(data[0]) if outcome.result == "compiled" and data else outcome

    def _route(self, pyc: str, optimize: int) -> Key | Outcome:
        """The worker for *pyc*, by its magic number; or the outcome when it has none here. A
        pyc that cannot be read goes to this Python's worker, which says why."""
        magic = _magic_of(pyc)
        if magic is None or magic == RUNNING_MAGIC or version_of_magic(magic) is None:
            return None
        if self._finder is None:
            from cachewatchd.cache.interpreters import Finder

            self._finder = Finder()
        python = self._finder.find(magic, pyc)
        if python is None:
            from cachewatchd.cache.interpreters import why_missing

            version = version_of_magic(magic)
            assert version is not None
            return Outcome("unchecked", self._finder.missing.get(version) or why_missing(version))
        self._pythons[python.exe] = python
        return python.exe, min(max(optimize, 0), 2) if python.version < (3, 0) else 0

    def _forked(self) -> None:
        if self._pid != os.getpid():
            for worker in self._workers.values():
                worker.abandon()
            self._workers.clear()
            self._pid = os.getpid()

    def _worker(self, key: Key) -> CheckProcess:
        worker = self._workers.get(key)
        if worker is None:
            python = None if key is None else self._pythons[key[0]]
            level = 0 if key is None else key[1]
            worker = self._workers[key] = _start(self.limits, python, level)
        return worker

    def _pipelined(self, key: Key, requests: list[dict[str, Any]]) -> list[Outcome]:
        """The outcomes of *requests* answered before the worker failed (all, usually)."""
        from cachewatchd.cache.check_process import ProcessGone

        outcomes: list[Outcome] = []
        if len(requests) < 2:
            return outcomes
        with self._lock:
            self._forked()
            if key in self._cannot_start:
                return outcomes
            sizes: deque[int] = deque()  # of the requests sent and not answered yet
            try:
                worker = self._worker(key)
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
                        self._lost(key, "sent a garbled answer")
                        break
                    outcomes.append(Outcome(result, detail))
                    sizes.popleft()
            except ProcessGone as gone:
                self._lost(key, gone.why)
            except BaseException:
                self._kill(key)
                raise
        return outcomes

    def _ask(
        self, key: Key, request: dict[str, Any], payload: list[bytes] | None = None
    ) -> Outcome:
        from cachewatchd.cache.check_process import ProcessGone

        with self._lock:
            self._forked()
            if key in self._cannot_start:
                return Outcome("unchecked", self._cannot_start[key])
            try:
                worker = self._worker(key)
                deadline = time.monotonic() + self.limits.timeout
                worker.send(request, deadline)
                answer = worker.answer(deadline)
                result, detail = answer.get("result"), answer.get("detail", "")
                if not isinstance(result, str) or not isinstance(detail, str):
                    return self._lost(key, "sent a garbled answer")
                if result == "compiled" and payload is not None:
                    payload.append(worker.receive(deadline, self.limits.max_pyc + (1 << 20)))
                return Outcome(result, detail)
            except ProcessGone as gone:
                return self._lost(key, gone.why)
            except BaseException:  # interrupted mid-request: its answer must not reach the next
                self._kill(key)
                raise

    def _kill(self, key: Key) -> None:
        worker = self._workers.pop(key, None)
        if worker is not None:
            worker.kill()

    def _lost(self, key: Key, why: str) -> Outcome:
        worker = self._workers.pop(key, None)
        if worker is None:  # it did not start: no use trying again for every file
            self._cannot_start[key] = why
            return Outcome("unchecked", why)
        worker.kill()
        if why == "timed out":
            why = f"timed out after {self.limits.timeout:g} s"
        return Outcome("failed", why)


def _magic_of(pyc: str) -> bytes | None:
    """The first 4 bytes of *pyc*, if it is a regular file that can be read (never blocks)."""
    try:
        fd = os.open(pyc, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _start(limits: Limits, python: Interpreter | None, optimize: int) -> CheckProcess:
    """A new checking process (the module holding it is imported on the first need: a plain scan
    never pays for ``subprocess``)."""
    from cachewatchd.cache.check_process import CheckProcess

    return CheckProcess(limits.memory, limits.max_source, limits.max_pyc, python, optimize)
