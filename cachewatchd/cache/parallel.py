"""``scan``/``clean --jobs N``: one audit shared by N processes, for big one-shot trees.

The parent lists the first directories breadth-first (the roots and their children at least)
until the rest of the walk is at least ``PIECES_PER_JOB * N`` subtrees; a small tree is listed
whole by then and nothing forks. The pieces (subtrees, shallowest first as likely the biggest, and
the listed directories' own entries) go through a pipe that serves as a work queue for the parent
and N-1 forked children. A child sends back what it found (rows of the entries kept, errors, the
count of fresh entries) with :mod:`marshal` and exits. The parent puts every part back in the
order of a one-process walk, so the report is the one ``--jobs 1`` gives.

Forking is only safe in a process without other threads: the one-shot CLI, never the daemon.
Overlapping roots (or a prefix tree inside a root) need one process to judge each entry once.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import struct
import threading
from collections import deque
from collections.abc import Iterator, Sequence

from cachewatchd.cache.auditor import Auditor
from cachewatchd.cache.plan import AuditOptions, Part, plan, within
from cachewatchd.cache.pyc import LEGACY_SUFFIXES, SOURCE_SUFFIXES
from cachewatchd.cache.rows import Result
from cachewatchd.cache.walk import list_directory, subdirectories
from cachewatchd.errors import RuntimeFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import NoReturn

    from cachewatchd.cache.audit import AuditReport
    from cachewatchd.cache.pyc import StrPath

__all__ = ["PIECES_PER_JOB", "audit_jobs", "audit_results", "default_jobs"]

PIECES_PER_JOB = 8
"""Subtrees per process before forking: the queue balances their unknown sizes."""

_ALWAYS_LISTED = 1
"""Directories this shallow are listed before forking, however many subtrees there are: a
root's one huge child (a site-packages among small modules) is split too."""

_MAX_LISTED = 256
"""At most this many directories are listed before forking (listing is cheap, but serial)."""

_SMALL = 400
"""Fewer sources and pycs than this in the listed directories, and at most one subtree left: the
tree is small, and forking would cost more than it saves."""

_SIZED = SOURCE_SUFFIXES + LEGACY_SUFFIXES
"""A listed directory's work is estimated by its sources and legacy pycs."""

_MAX_ITEMS = 1024
"""Queue records: all of them are written before the fork, so they must fit in the pipe buffer."""

_RECORD = struct.Struct("<I")


def default_jobs(*, deep: bool = False) -> int:
    """Processes for a one-shot audit: one per core this process may run on, at most two (a
    plain audit is bound by reads); with *deep*, every core (its exact checks are compiles)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores if deep else min(2, cores))


def audit_jobs(roots: Sequence[Path], options: AuditOptions, jobs: int) -> AuditReport:
    """:func:`~cachewatchd.cache.audit.audit` over up to *jobs* processes; the same report."""
    from cachewatchd.cache.audit import build_report  # the API's report: Entry, pathlib

    return build_report(roots, audit_results(roots, options, jobs))


def audit_results(roots: Sequence[StrPath], options: AuditOptions, jobs: int) -> list[Result]:
    """What the audit of *roots* found, as plain rows in report order, over up to *jobs* processes
    (``cachewatchd scan`` prints them without building the API's report).

    Runs in this process alone when *jobs* is 1, when other threads run, when roots overlap, or
    when the tree is small. Raises :class:`RuntimeFailure` when a worker process fails.
    """
    if jobs <= 1 or threading.active_count() > 1:
        return [_one_process(roots, options)]
    parts = plan(roots, options)
    if _overlapping(parts):
        return [_one_process(roots, options)]
    work = _Plan(parts, options, PIECES_PER_JOB * jobs)
    with work.auditor:
        if work.worth_forking:
            results = _run_forked(work, min(jobs, len(work.pending)))
        else:
            results = {i: work.run(i) for i in range(len(work.pending))}
        return work.results(results)


def _one_process(roots: Sequence[StrPath], options: AuditOptions) -> Result:
    with Auditor(options) as auditor:
        for part in plan(roots, options):
            auditor.part(part)
        return auditor.take()


def _overlapping(parts: Sequence[Part]) -> bool:
    """Any part inside another (resolved): one process must judge each entry once."""
    areas = [os.path.realpath(part.path) for part in parts]
    return any(i != j and within(a, b) for i, a in enumerate(areas) for j, b in enumerate(areas))


class _Node:
    """A part of the walk: a subtree to audit, a part of the prefix tree (``mirror``), or a listed
    directory whose entries are judged as one piece (``entries``) and whose subtrees
    (``children``, in walk order) follow it. ``result`` is set once the part has been judged."""

    __slots__ = (
        "children",
        "depth",
        "entries",
        "mirror",
        "path",
        "rel",
        "result",
        "root",
        "size",
    )

    def __init__(
        self, path: str, rel: str, depth: int, *, root: bool = False, mirror: Part | None = None
    ) -> None:
        self.path = path
        self.rel = rel
        self.depth = depth
        self.root = root
        self.mirror = mirror
        self.entries: list[os.DirEntry[str]] | None = None
        self.size = 0
        self.result: Result | None = None
        self.children: list[_Node] = []

    def order(self) -> tuple[int, int]:
        """Queue order, likely biggest first: shallow subtrees, then big listed directories."""
        if self.entries is None:
            return self.depth, 0
        return self.depth + 1, -self.size


class _Plan:
    """The audit cut into pieces: ``pending[i]`` is run by :meth:`run` in any process."""

    def __init__(self, parts: Sequence[Part], options: AuditOptions, pieces: int) -> None:
        self.options = options
        self.auditor = Auditor(options, dedup=False)
        self.top: list[_Node] = [
            _Node(part.path, "", 0, root=True)
            if part.source is None
            else _Node(part.path, "", 0, mirror=part)
            for part in parts
        ]
        self._expand(pieces)
        pending = [node for node in self._walk_order() if node.result is None]
        self.pending = sorted(pending, key=_Node.order)
        subtrees = sum(node.entries is None for node in pending)
        listed = sum(node.size for node in pending)
        self.worth_forking = len(pending) > 1 and (subtrees > 1 or listed >= _SMALL)

    def _expand(self, pieces: int) -> None:
        """List directories breadth-first (the shallowest always) until *pieces* subtrees remain.

        A listed directory with caches to read becomes a piece of its own; one without is
        judged here (no I/O).
        """
        auditor = self.auditor
        queue = deque(node for node in self.top if node.mirror is None)
        subtrees = len(queue)
        listed = 0
        while (
            queue
            and listed < _MAX_LISTED
            and (subtrees < pieces or queue[0].depth <= _ALWAYS_LISTED)
        ):
            node = queue.popleft()
            subtrees -= 1
            listed += 1
            entries = list_directory(node.path, auditor.excluder, auditor.on_error, root=node.root)
            if entries is not None:
                found = subdirectories(entries, node.rel, auditor.excluder)
                # a walk pops its stack from the end: the last subdirectory comes first
                node.children = [_Node(p, rel, node.depth + 1) for p, rel in reversed(found)]
                queue.extend(node.children)
                subtrees += len(node.children)
                if any(
                    e.name == "__pycache__" or e.name.endswith(LEGACY_SUFFIXES) for e in entries
                ):
                    node.entries = entries
                    node.size = sum(e.name.endswith(_SIZED) for e in entries)
                    continue
                auditor.directory(node.path, entries)
            node.result = auditor.take()

    def _walk_order(self) -> Iterator[_Node]:
        stack = list(reversed(self.top))
        while stack:
            node = stack.pop()
            yield node
            stack += reversed(node.children)

    def run(self, index: int) -> Result:
        node = self.pending[index]
        if node.mirror is not None:
            self.auditor.part(node.mirror)
        elif node.entries is not None:
            self.auditor.directory(node.path, node.entries)
        else:
            self.auditor.tree(node.path, node.rel, root=node.root)
        return self.auditor.take()

    def results(self, results: dict[int, Result]) -> list[Result]:
        """The pieces' *results* (by index in ``pending``) in the order of a one-process walk."""
        for index, node in enumerate(self.pending):
            node.result = results[index]
        return [node.result for node in self._walk_order() if node.result is not None]


def _run_forked(plan: _Plan, jobs: int) -> dict[int, Result]:
    """Run every pending piece on this process and *jobs* - 1 forked children."""
    size = -(-len(plan.pending) // _MAX_ITEMS)
    items = [
        range(start, min(start + size, len(plan.pending)))
        for start in range(0, len(plan.pending), size)
    ]
    queue, queue_in = os.pipe()
    try:
        os.write(queue_in, b"".join(_RECORD.pack(i) for i in range(len(items))))
    finally:
        os.close(queue_in)  # readers see the end of the queue once it is empty
    workers: dict[int, int] = {}  # pid -> read end of its result pipe
    try:
        for _ in range(jobs - 1):
            result_out, result_in = os.pipe()
            try:
                pid = os.fork()
            except OSError:  # no more processes: this one does the rest
                os.close(result_out)
                os.close(result_in)
                break
            if pid == 0:
                os.close(result_out)
                for fd in workers.values():
                    os.close(fd)
                _child(plan, items, queue, result_in)
            os.close(result_in)
            workers[pid] = result_out
        results = _work(plan, items, queue)
        for pid in list(workers):
            results.update(_collect(pid, workers.pop(pid)))
        return results
    finally:
        os.close(queue)
        for pid, fd in workers.items():  # only after a failure here
            os.close(fd)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _work(plan: _Plan, items: list[range], queue: int) -> dict[int, Result]:
    results: dict[int, Result] = {}
    while record := os.read(queue, _RECORD.size):
        (item,) = _RECORD.unpack(record)
        for index in items[item]:
            results[index] = plan.run(index)
    return results


def _child(plan: _Plan, items: list[range], queue: int, result_in: int) -> NoReturn:
    """A forked worker: run pieces from the queue, send the results, exit without cleanup."""
    code = 0
    try:
        payload = marshal.dumps(("ok", _work(plan, items, queue)))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent, which then fails
        payload = marshal.dumps(("failed", f"{type(exc).__name__}: {exc}"))
        code = 1
    with contextlib.suppress(BaseException):  # exiting anyway: the worker exits on EOF then
        plan.auditor.close()  # this child's checking process, if it started one
    try:
        with os.fdopen(result_in, "wb") as out:
            out.write(payload)
    finally:
        os._exit(code)


def _collect(pid: int, result_out: int) -> dict[int, Result]:
    """A child's results; :class:`RuntimeFailure` when it failed or died."""
    try:
        with os.fdopen(result_out, "rb") as src:
            payload = src.read()
    finally:
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        kind, value = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        kind, value = "lost", None
    if kind == "ok" and code == 0:
        results: dict[int, Result] = value
        return results
    if kind != "failed":
        value = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    raise RuntimeFailure(f"a scan worker process (pid {pid}) failed: {value}; try --jobs 1")
