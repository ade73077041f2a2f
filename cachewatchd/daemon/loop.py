"""The daemon loop: watchers -> batches -> invalidation -> managed processes; reconcile; status.

Threads: the invalidation thread (:class:`~cachewatchd.daemon.invalidate.Invalidator`) removes a
source's cache entries the moment its event arrives; the batcher hands every batch to
:class:`~cachewatchd.daemon.batch_handler.BatchHandler` on its own thread (audits, git moves,
rescans) and offers the touched paths to the managed processes through
:class:`~cachewatchd.daemon.hold.RestartHold` (one restart per git operation), which waits for the
invalidations their events asked for before it asks for a restart. The thread calling :meth:`Daemon.run`
owns the lifecycle: it waits on an inbox for ``stop`` / ``reload`` (the CLI's signal handlers post
them: ``queue.SimpleQueue`` is signal-safe) and runs the periodic reconciliation and second looks.

No thread dies silently: every thread is made by :func:`cachewatchd.threads.daemon_thread`; one
that dies (its own or watchdog's), or an unexpected error on the loop's thread, logs
``thread-died`` and posts ``fatal``: the daemon stops everything like on ``stop`` and
:meth:`Daemon.run` returns :data:`~cachewatchd.errors.EXIT_FAILURE`, never "ready" while part of it is dead.

Start: register in the daemon registry (refusing overlapping roots), attach every root, audit every
root once, and only then start the managed processes, so that none of them imports a stale cache;
then log ``ready`` (each root's observer and why) and tell systemd ``READY=1``. An own child that
cannot be executed at start ends the run with its error (one line from the CLI, exit 3); on a
reload it is logged and retried with the crash-loop backoff. Stop: detach the watchers,
finish the batch under way plus what is pending, stop the managed processes, remove the record.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from cachewatchd.config.settings import DaemonSettings
from cachewatchd.daemon.batch_handler import BatchHandler, Counters
from cachewatchd.daemon.contracts import (
    ControllerFactory,
    ControllerLike,
    Notifier,
    controller_inputs,
)
from cachewatchd.daemon.hold import RestartHold
from cachewatchd.daemon.invalidate import Invalidator
from cachewatchd.daemon.status import STATUS_REFRESH, DaemonState, status_document, status_line
from cachewatchd.daemon.watching import Watching
from cachewatchd.errors import EXIT_FAILURE, EXIT_OK, CachewatchdError
from cachewatchd.log import ReportedPaths, get_logger
from cachewatchd.threads import died, on_death
from cachewatchd.watch.batch import DEFAULT_MAX_WINDOW, DEFAULT_QUIET, Batch, Batcher

__all__ = ["Daemon"]
_STORM_RECHECK = 0.1  # s: while batches are under way, the second looks wait this long
_SETTLE = 10.0  # s: at most, for the invalidations under way before a reload swaps the handler


class Daemon:
    """One daemon run: construct, then :meth:`run` (blocks until stopped; 0, or 3: a thread died)."""

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        reload_settings: Callable[[], DaemonSettings] | None = None,
        make_controller: ControllerFactory | None = None,
        notifier: Notifier | None = None,
        on_ready: Callable[[], None] | None = None,
        quiet: float = DEFAULT_QUIET,
        max_window: float = DEFAULT_MAX_WINDOW,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings
        self._make_controller = make_controller
        self._notifier = notifier
        self._on_ready = on_ready
        self._inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._counters = Counters()
        self._reported = ReportedPaths(on_first=lambda _path: self._count_error())
        """Paths whose problem was already logged, by a watcher or the handler: one report each,
        counted in ``errors`` wherever it happens."""
        self._handler = self._new_handler(settings)
        self._batcher = Batcher(self._on_batch, quiet=quiet, max_window=max_window)
        self._invalidator = Invalidator(
            self._batcher, self._invalidate_now, on_error=self._count_error
        )
        self._hold = RestartHold(
            self._git_busy, self._restart, draining=lambda: self._batcher.pending() > 0
        )
        self._watching: Watching | None = None
        self._controller: ControllerLike | None = None
        self._registration: Any = None
        self._state = DaemonState.STARTING
        self._pending_start: set[Path] = set()
        self._failure: str | None = None
        """The first thread that died, and of what (set once, under the state lock)."""
        self._state_lock = threading.Lock()
        self._published: dict[str, Any] | None = None  # the last status document written
        self._publish_lock = threading.Lock()
        self._log = get_logger(__name__)

    # -- requests (any thread, signal handlers included) ------------------------------------------
    def request_stop(self) -> None:
        self._inbox.put("stop")

    def request_reload(self) -> None:
        self._inbox.put("reload")

    # -- lifecycle -------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped: :data:`~cachewatchd.errors.EXIT_OK`, or
        :data:`~cachewatchd.errors.EXIT_FAILURE` when a thread died (``thread-died`` says which).

        Raises :class:`~cachewatchd.errors.CachewatchdError` when the daemon cannot start: its
        record cannot be written, another daemon watches an overlapping root, the own child cannot
        be executed.
        """
        from cachewatchd.daemon.registry import register_daemon

        for warning in self.settings.warnings:
            self._log.warning("config-warning", warning=warning)
        with on_death(self._thread_died):
            self._registration = register_daemon(self.settings.paths)
            try:
                self._batcher.start()
                self._invalidator.start()
                self._start_watching()
                if self._wait_for_start() and self._become_ready():
                    self._loop()
            except CachewatchdError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop's own thread: one line, exit 3
                died(threading.current_thread().name, exc)
            finally:
                self._shutdown()
        return EXIT_FAILURE if self._failed() else EXIT_OK

    def _thread_died(self, name: str, exc: BaseException) -> None:
        """A thread died (logged already): stop everything (on the dying thread: post only)."""
        with self._state_lock:
            if self._failure is None:
                self._failure = f"{name}: {type(exc).__name__}: {exc}"
            self._state = DaemonState.STOPPING
        self._inbox.put("fatal")

    def _failed(self) -> bool:  # a thread died
        return self._failure is not None

    def _start_watching(self, reason: str = "start") -> None:
        """Attach every root and audit each once (the ``rescan`` gives *reason*)."""
        self._watching = Watching(self.settings, self._batcher, self._reported, self._invalidator)
        self._watching.start()
        with self._state_lock:
            self._pending_start = set(self.settings.paths)
        for root in self.settings.paths:
            self._batcher.rescan(root, reason)
        self._batcher.flush()

    def _wait_for_start(self) -> bool:
        """Wait for the first audit of every root; False when a stop came first."""
        reload = False
        while True:
            with self._state_lock:
                if not self._pending_start:
                    break
            message = self._inbox.get()
            if message in ("stop", "fatal"):
                return False
            reload = reload or message == "reload"
        if reload:
            self._inbox.put("reload")  # handled by the loop, once ready
        return True

    def _become_ready(self) -> bool:
        """Start the managed processes and say ``ready``; False when a thread died meanwhile."""
        if self._failed():
            return False
        self._start_controller()  # raises when the own child cannot be executed
        with self._state_lock:
            if self._failed():  # meanwhile
                return False
            self._state = DaemonState.READY
        observers = self._watching.observers() if self._watching else {}
        plans = {str(p.path): p for p in self.settings.roots}
        for root, info in observers.items():
            plan = plans.get(root)
            if plan is not None:
                info["poll"] = f"{plan.poll} ({plan.poll_source})"
        self._log.info("ready", pid=os.getpid(), roots=list(observers), observers=observers)
        self._publish()
        if self._notifier is not None:
            self._notifier.ready(status_line(self.status()))
        if self._on_ready is not None:
            self._on_ready()
        return True

    def _loop(self) -> None:
        next_reconcile = time.monotonic() + self.settings.reconcile_interval
        while True:
            now = time.monotonic()
            recheck = self._handler.rechecker.next_due()
            storm = not self._quiet()  # the second looks wait (see _quiet)
            wait = min(next_reconcile - now, STATUS_REFRESH if not storm else _STORM_RECHECK * 10)
            if recheck is not None:
                wait = min(wait, max(recheck - now, _STORM_RECHECK if storm else 0.0))
            try:
                message = self._inbox.get(timeout=max(0.0, wait))
            except queue.Empty:
                message = "tick"
            if message in ("stop", "fatal"):
                return
            if self._quiet():
                self._recheck()
            if message == "reload":
                self._reload()
                next_reconcile = time.monotonic() + self.settings.reconcile_interval
            elif time.monotonic() >= next_reconcile:
                for root in self.settings.paths:
                    self._batcher.rescan(root, "reconcile interval")
                next_reconcile = time.monotonic() + self.settings.reconcile_interval
            elif message in ("tick", "publish"):
                self._hold.offer(())  # a hold whose report never comes goes after REPORT_MAX
                self._publish()  # a target changed; or roots may have come back

    def _shutdown(self) -> None:
        """Stop everything; a step that fails is reported and the next ones still run."""
        with self._state_lock:
            self._state = DaemonState.STOPPING
        self._log.info("stopping")
        steps: list[Callable[[], object]] = [self._publish]
        if self._notifier is not None:
            notifier, failure = self._notifier, self._failure
            steps.append(lambda: notifier.stopping(failure and f"a thread died: {failure}"))
        if self._watching is not None:
            steps.append(self._watching.stop)
        steps.append(self._invalidator.stop)  # what the last events asked for
        steps.append(self._batcher.stop)  # finishes the batch under way and what is pending
        if self._controller is not None:
            steps.append(self._controller.stop)
        if self._registration is not None:
            steps.append(self._registration.close)
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - reported; the processes must still stop
                died(threading.current_thread().name, exc)

    # -- reload (SIGHUP) ---------------------------------------------------------------------------
    def _reload(self) -> None:
        if self._reload_settings is None:
            return
        if self._notifier is not None:
            self._notifier.reloading("reloading the configuration")
        try:
            new = self._reload_settings()
            if new.paths != self.settings.paths:
                self._registration.set_roots(new.paths)
        except CachewatchdError as exc:
            self._error(error=f"reload failed, keeping the old settings: {exc}")
            if self._notifier is not None:
                self._notifier.ready(status_line(self.status()))
            return
        old = self.settings
        for warning in new.warnings:
            self._log.warning("config-warning", warning=warning)
        if new != old:
            if self._watching is not None:
                self._watching.stop()
            self.settings = new
            self._invalidator.sync(_SETTLE)  # the old handler's invalidations and looks are over
            old_handler, self._handler = self._handler, self._new_handler(new)
            self._handler.rechecker.adopt(old_handler.rechecker)
            self._start_watching("reload")
            if controller_inputs(new) != controller_inputs(old):
                if self._controller is not None:
                    self._controller.stop()
                    self._controller = None
                    self._hold.drop()
                try:
                    self._start_controller()
                except CachewatchdError as exc:  # the workers run; the backoff tries again
                    self._error(error=exc.message)
        observers = self._watching.observers() if self._watching else {}
        self._log.info("reloaded", changed=new != old, roots=list(observers), observers=observers)
        self._publish()
        if self._notifier is not None:
            self._notifier.ready(status_line(self.status()))

    def _quiet(self) -> bool:  # no batch, invalidation or held restart (git: pycs merely old)
        return self._batcher.idle() and self._invalidator.idle() and not self._hold.holding()

    def _recheck(self) -> None:  # caches written with old code during an edit; restart again
        touched = self._handler.recheck()
        if touched:
            self._hold.offer(touched)
            self._publish()

    # -- batches (batcher thread) ------------------------------------------------------------------
    def _on_batch(self, batch: Batch) -> None:
        try:
            if batch.rescans and self._watching is not None:
                self._watching.refresh_git()
            if batch.git_moves or batch.rescans:
                self._invalidator.sync()  # the audit then finds those caches gone: no work twice
            outcome = self._handler.handle(batch)
            if self._handler.rechecker.next_due() is not None:
                self._inbox.put("recheck")  # the loop's next wake-up moves to the second look
            if self._controller is not None:
                reported = {move.repo for move in batch.git_moves} | batch.git_settled
                self._hold.offer(outcome.touched, reported)  # git at work, more events: held
        except Exception:  # logged by the batcher, which carries on: the batch is over
            self._count_error()
            self._batch_over(batch)
            raise
        # Anything else kills the batcher thread (thread-died, fatal): the start is not over.
        self._batch_over(batch)

    def _batch_over(self, batch: Batch) -> None:
        """Publish; the roots this batch audited are started (the last one: post ``started``)."""
        with self._state_lock:
            was_pending = bool(self._pending_start)
            self._pending_start -= {rescan.root for rescan in batch.rescans}
            started = was_pending and not self._pending_start
        self._publish()
        if started:
            self._inbox.put("started")

    def _invalidate_now(self, changed: Sequence[Path], removed: Sequence[Path]) -> None:
        """The invalidation thread; the loop wakes for the second look."""
        self._handler.invalidate_now(changed, removed)
        self._inbox.put("recheck")

    def _git_busy(self, paths: Collection[Path]) -> list[Path]:
        return self._watching.git_busy(paths) if self._watching is not None else []

    def _restart(self, paths: list[Path]) -> None:
        """Restart for *paths*, once the invalidations their events asked for are over."""
        controller = self._controller
        if controller is not None:
            self._invalidator.sync()
            controller.notify(paths)

    # -- helpers -----------------------------------------------------------------------------------
    def _new_handler(self, settings: DaemonSettings) -> BatchHandler:
        excludes = {plan.path: plan.exclude for plan in settings.roots}
        return BatchHandler(
            excludes,
            pycache_prefix=settings.pycache_prefix,
            counters=self._counters,
            reported=self._reported,
            eager=True,
        )

    def _start_controller(self) -> None:
        if self._controller is None and self.settings.processes and self._make_controller:
            settings = self.settings
            excludes = {plan.path: plan.exclude for plan in settings.roots}
            self._controller = self._make_controller(settings.processes, settings.paths, excludes)
            self._controller.subscribe(lambda: self._inbox.put("publish"))
            self._controller.subscribe_errors(self._count_error)
            self._controller.start()

    def _error(self, **fields: Any) -> None:
        """Log one ``error`` of the daemon's own and count it."""
        self._log.error("error", **fields)
        self._count_error()

    def _count_error(self) -> None:
        """One more error in the counters (a managed target's faults come here too)."""
        with self._handler.lock:
            self._counters.errors += 1
        self._inbox.put("publish")

    def healthy(self) -> bool:
        """No thread died and the batcher thread is alive (the systemd watchdog pings only then)."""
        return not self._failed() and self._batcher.alive() and self._invalidator.alive()

    def status(self) -> dict[str, Any]:
        """What ``cachewatchd status`` shows for this daemon."""
        with self._handler.lock:
            counters = self._counters.as_dict()
            last_event = self._counters.last_event
        controller = self._controller
        return status_document(
            self._state,
            self._watching.observers() if self._watching else {},
            counters,
            last_event,
            controller.status() if controller else [],
            self.settings.config_path,
        )

    def _publish(self) -> None:
        """Write the status record, unless it would say what it says already."""
        if self._registration is not None:
            with self._publish_lock:  # one publisher at a time: the newest document is written last
                document = self.status()
                if document != self._published:
                    self._published = document
                    self._registration.update(document)
