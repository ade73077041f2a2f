"""The controller: one worker thread per managed target, restarts coalesced per batch.

``notify(touched)`` never blocks: each target whose root contains a touched path gets a request,
which its :class:`~cachewatchd.processes.worker.Worker` handles on its own thread (one at a time;
requests arriving during a restart collapse into exactly one more). Every fault is one log line and
the worker carries on, except an own child that cannot be executed at all: :meth:`Controller.start`
raises that one, and the daemon decides.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.staleness import SourceClock
from cachewatchd.processes.status import TargetStatus
from cachewatchd.processes.targets import make_target
from cachewatchd.processes.worker import Worker

__all__ = ["Controller"]


class Controller:
    """Acts on the managed targets after each batch. See the module docstring."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        roots: Sequence[Path],
        excludes: Mapping[Path, Sequence[str]] | None = None,
    ) -> None:
        """*excludes*: each root's exclude globs, left out when dating its sources (stale)."""
        self._roots = [Path(r) for r in roots]
        self._clock = SourceClock(
            {Path(os.path.abspath(r)): globs for r, globs in (excludes or {}).items()}
        )
        self._cancel = threading.Event()
        self._started = False
        self._subscribers: list[Callable[[], None]] = []
        self._error_subscribers: list[Callable[[], None]] = []
        self._workers = []
        for spec in specs:
            target_roots = [spec.root] if spec.root else self._roots
            self._workers.append(
                Worker(
                    make_target(spec, target_roots),
                    target_roots,
                    self._clock,
                    self._cancel,
                    self._changed,
                    self._error,
                )
            )

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call *callback* (from a worker thread; keep it short) whenever a target's status
        changes: restarting, restarted, blocked, failed, new pids, turned stale... Call before
        :meth:`start`."""
        self._subscribers.append(callback)

    def subscribe_errors(self, callback: Callable[[], None]) -> None:
        """Call *callback* (from a worker thread) once per fault a target logs: ``error``,
        ``restart-failed``, ``restart-blocked``. The daemon counts them. Call before :meth:`start`."""
        self._error_subscribers.append(callback)

    def _changed(self) -> None:
        for callback in self._subscribers:
            callback()

    def _error(self) -> None:
        for callback in self._error_subscribers:
            callback()

    def start(self) -> None:
        """Launch the own child, then start one worker thread per target.

        Raises :class:`~cachewatchd.processes.own_child.ChildError` (after starting the workers) when the own
        child cannot be executed (no such file, not executable): the daemon exits on it at start,
        and logs it on a reload, where the child's crash-loop backoff tries again.
        """
        if self._started:
            return
        self._started = True
        failures = [error for worker in self._workers if (error := worker.launch()) is not None]
        for worker in self._workers:
            worker.thread.start()
        if failures:
            raise failures[0]

    def notify(self, touched: Collection[Path]) -> None:
        """A batch touched these paths: request one restart of every affected target."""
        paths = [Path(os.path.abspath(p)) for p in touched]
        if not paths or not self._workers:
            return
        self._clock.touch(paths)
        for worker in self._workers:
            if worker.affected(paths):
                worker.request()

    def stop(self) -> None:
        """Stop the worker threads (interrupting health waits) and the own child: also the child
        of a worker that never started, or whose thread died (:meth:`Worker.finish` runs once)."""
        self._cancel.set()
        for worker in self._workers:
            worker.stop()
        for worker in self._workers:
            if worker.thread.is_alive():
                worker.thread.join()
            worker.finish()

    def status(self) -> list[TargetStatus]:
        """Each target's status, in the order of the specs."""
        return [worker.status() for worker in self._workers]
