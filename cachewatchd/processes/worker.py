"""One managed target's worker: every action on the target runs on its own thread.

A request (from :meth:`Worker.request`) is handled at once, or, while an action is under way,
collapses with every other request of that time into exactly one more action. Before a restart the
import gate may block it (the old process keeps running). After it, ``restarted`` is logged only
once the new server is up (:mod:`cachewatchd.processes.ready`: the health check, else the port it
listens on, else a moment without exiting); a new process that exits first, or never answers,
fails it (``restart-failed``).
After a signal, the processes that ran the old code get ``grace`` seconds to be replaced before
the target is looked at again (stale or not). Between actions the worker refreshes the target's
pids and stale state. Every fault is one log line (and one ``on_error``) and the worker carries on.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from cachewatchd.errors import CachewatchdError
from cachewatchd.log import get_logger
from cachewatchd.paths import is_under
from cachewatchd.processes.gate import import_check, wait_healthy
from cachewatchd.processes.os_procs import alive
from cachewatchd.processes.ready import (
    STEADY,
    listening_ports,
    named_ports,
    wait_listening,
    wait_steady,
)
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.staleness import SourceClock, importers
from cachewatchd.processes.status import TargetState, TargetStatus, timestamp
from cachewatchd.processes.targets import ActionResult, Target
from cachewatchd.threads import daemon_thread

__all__ = ["REFRESH", "Worker"]

REFRESH = 30.0
"""Seconds between refreshes of a target's pids and stale state while nothing happens."""

_PRESENCE = frozenset(
    {TargetState.STARTING, TargetState.RUNNING, TargetState.NOT_FOUND, TargetState.UNREACHABLE}
)
"""States a refresh may switch between, by whether the target has processes (others record the
outcome of the last action until the next one)."""

_T = TypeVar("_T")


def _variants(path: Path) -> tuple[Path, ...]:
    return tuple({Path(os.path.abspath(path)), Path(os.path.realpath(path))})


class Worker:
    """Runs every action of one target on its own thread."""

    def __init__(
        self,
        target: Target,
        roots: Sequence[Path],
        clock: SourceClock,
        cancel: threading.Event,
        on_change: Callable[[], None] = lambda: None,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.target = target
        self._on_change = on_change
        self._on_error = on_error
        self._failures_seen = 0
        self._shown: TargetStatus | None = None
        self.spec: ProcessSpec = target.spec
        self.roots = [v for r in roots for v in _variants(r)]
        self._scan_roots = [Path(os.path.abspath(r)) for r in roots]
        self._clock = clock
        self._cancel = cancel
        self._interrupt = threading.Event()
        """Set by a new request or a stop: the wait for a restarted process to be up ends."""
        self._log = get_logger(__name__)
        self._cond = threading.Condition()
        self._pending = False
        self._busy = False
        self._stopping = False
        self.state = TargetState.STARTING
        self.restarts = 0
        self.last_action: str | None = None
        self.last_action_at: str | None = None
        self.pids: list[int] = []
        self.stale: str | None = None
        self.problem: str | None = None
        """Why the target has no process right now (pidfile unusable, supervisord unreachable...)."""
        self._stale_logged: str | None = None
        self.thread = daemon_thread(self._run, f"cachewatchd-target-{self.spec.name}")

    # -- called from other threads ------------------------------------------------------------
    def affected(self, paths: Sequence[Path]) -> bool:
        roots = self.target.scope(self.roots)
        return any(is_under(p, r) for p in paths for r in roots)

    def request(self) -> None:
        with self._cond:
            self._pending = True
            self._interrupt.set()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._interrupt.set()
            self._cond.notify()

    def status(self) -> TargetStatus:
        """The target as ``cachewatchd status`` shows it now."""
        with self._cond:
            state = TargetState.RESTARTING if self._busy else self.state
            pids, problem = tuple(self.pids), self.problem
            seen = self.target.observed()
            if seen is not None and state is not TargetState.STOPPED:  # its own view, live
                pids, problem = seen.pids, seen.problem
                idle = state not in (TargetState.RESTARTING, TargetState.STARTING)
                if seen.idle_state is not None and idle:
                    state = seen.idle_state
            return TargetStatus(
                name=self.spec.name,
                kind=self.target.kind,
                state=state,
                pids=pids,
                restarts=self.restarts,
                last_action=self.last_action,
                last_action_at=self.last_action_at,
                pending=self._pending,
                stale_reason=self.stale,
                problem=problem,
                crashes=seen.crashes if seen is not None else 0,
                last_exit=seen.last_exit if seen is not None else None,
                containers=self.target.containers(),
            )

    # -- the worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        finally:  # also when the thread dies: the own child never outlives its worker
            self.finish()

    def finish(self) -> None:
        """Stop the target (the own child's group) once; the state becomes ``stopped``."""
        with self._cond:
            if self.state is TargetState.STOPPED:
                return
            self.state = TargetState.STOPPED
        self._guard(self.target.stop)

    def _serve(self) -> None:
        self._guard(self._startup)
        next_wake: float | None = 0.0  # tick once right away
        refresh_at = time.monotonic() + REFRESH
        while True:
            self._guard(self._changed)
            with self._cond:
                if not self._pending and not self._stopping:
                    self._cond.wait(timeout=next_wake)
                if self._stopping:
                    break
                run, self._pending = self._pending, False
                self._busy = run
                if run:
                    self._interrupt.clear()
            if run:
                self._guard(self._changed)  # now "restarting"
                self._guard(self._handle)
                with self._cond:
                    self._busy = False
            tick = self._guard(self.target.tick)
            self._count_target_failures()
            if run or time.monotonic() >= refresh_at:
                self._guard(self._refresh)
                refresh_at = time.monotonic() + REFRESH
            next_wake = min(tick, REFRESH) if tick is not None else REFRESH

    def _changed(self) -> None:
        """Call ``on_change`` when what :meth:`status` shows differs from the last call."""
        # pending is set by notify(), whose caller publishes anyway
        shown = dataclasses.replace(self.status(), pending=False)
        if shown != self._shown:
            self._shown = shown
            self._on_change()

    def _guard(self, fn: Callable[[], _T]) -> _T | None:
        try:
            return fn()
        except CachewatchdError as exc:
            self._fault("error", error=exc.message)
        except Exception as exc:  # noqa: BLE001 - one line, and the worker keeps going
            self._fault("error", error=f"{type(exc).__name__}: {exc}")
        return None

    def _fault(self, event: str, *, warning: bool = False, **fields: Any) -> None:
        """Log one fault of this target (``error``, ``restart-failed``, ``restart-blocked``) and
        count it (``on_error``)."""
        log = self._log.warning if warning else self._log.error
        log(event, target=self.spec.name, **fields)
        self._on_error()

    def _count_target_failures(self) -> None:
        """Count the faults the target logged itself (the own child's failed crash restarts)."""
        failures = self.target.failures()
        for _ in range(failures - self._failures_seen):
            self._on_error()
        self._failures_seen = failures

    def launch(self) -> CachewatchdError | None:
        """Start the target (launch the own child) on the caller's thread; the failure, if any."""
        try:
            self.target.start()
        except CachewatchdError as exc:
            return exc
        return None

    def _startup(self) -> None:
        problem = self.target.check()
        if problem:
            self._fault("error", warning=True, error=problem)
        for root in self._scan_roots:
            self._clock.scan(root)
        self._refresh(problem)

    def _refresh(self, problem: str | None = None) -> None:
        """Look at the target's processes now: pids, presence (with the problem), stale or not."""
        procs = self.target.processes()
        absent = not procs and self.target.observed() is None  # else status() reads it live
        if absent and problem is None:
            problem = self.target.check()
        reason = self.target.stale(procs, self._clock.newest(self.target.scope(self._scan_roots)))
        with self._cond:
            self.pids = [p.pid for p in procs]
            self.stale = reason
            self.problem = (problem or "no running process") if absent else None
            if self.state in _PRESENCE:
                self.state = self._absent_state(problem) if absent else TargetState.RUNNING
        if reason is not None and reason != self._stale_logged:
            self._log.warning("stale-process", target=self.spec.name, reason=reason)
        self._stale_logged = reason

    def _absent_state(self, problem: str | None) -> TargetState:
        """``unreachable`` when supervisord or systemd cannot be asked, else ``not-found``."""
        if problem and self.target.kind in ("supervisor", "systemd"):
            return TargetState.UNREACHABLE
        return TargetState.NOT_FOUND

    def _record(self, state: TargetState, action: str) -> None:
        with self._cond:
            if state is TargetState.RUNNING:
                self.problem = None  # the action found the process (the refresh follows)
            self.state = state
            self.last_action = action
            self.last_action_at = timestamp()

    def _gate(self) -> bool:
        """Run the import gate; ``False`` (and a ``restart-blocked`` line) when it fails."""
        module = self.spec.import_check
        if module is None:
            return True
        probe = self.target.probe()
        if probe is None:
            self._log.warning(
                "import-check-skipped",
                target=self.spec.name,
                module=module,
                reason="no running Python process to copy the interpreter from",
            )
            return True
        error = import_check(module, probe)
        if error is None:
            return True
        self._fault("restart-blocked", warning=True, module=module, error=error)
        self._record(TargetState.BLOCKED, f"blocked: import {module} failed: {error}")
        return False

    def _handle(self) -> None:
        name = self.spec.name
        if not self._gate():
            return
        started = time.monotonic()
        before = self.target.processes()
        old = importers(before) if self.spec.action == "signal" else []
        ports = set() if self.spec.health_url else listening_ports(before)
        try:
            result = self.target.act(self._cancel)
        except CachewatchdError as exc:
            self._fault("restart-failed", error=exc.message)
            self._record(TargetState.FAILED, f"failed: {exc.message}")
            return
        if result.event == "signalled":
            self._wait_replaced(old)
        problem = self._wait_up(result, ports)
        if self._interrupt.is_set():  # a newer change (restarted at once) or a stop: no verdict
            with self._cond:
                self.restarts += 1
            if not self._stopping:
                self._log.info(
                    "restart-superseded",
                    target=name,
                    pids=result.pids,
                    seconds=round(time.monotonic() - started, 3),
                )
            return
        if problem is not None:
            self._fault("restart-failed", error=problem, pids=result.pids)
            self._record(TargetState.FAILED, f"failed: {problem}")
            return
        seconds = round(time.monotonic() - started, 3)
        with self._cond:
            self.restarts += 1
        if result.event == "signalled":
            self._log.info(
                "signalled", target=name, signal=self.spec.signal, pids=result.pids, seconds=seconds
            )
        else:
            self._log.info("restarted", target=name, seconds=seconds, pids=result.pids)
        self._record(TargetState.RUNNING, f"{result.event} in {seconds:g}s")

    def _wait_up(self, result: ActionResult, old_ports: set[int]) -> str | None:
        """Wait until what *result* started is up (see :mod:`cachewatchd.processes.ready`):
        ``None``, or why it is not. *old_ports*: where the old processes listened."""
        new = [proc for pid in result.pids if (proc := _process(pid)) is not None]
        if result.event == "restarted" and result.pids and not new:
            return f"pid {', '.join(map(str, result.pids))} exited at once"

        def ended() -> str | None:
            return self.target.ended(new) if result.event == "restarted" else None

        if self.spec.health_url:
            url, timeout = self.spec.health_url, self.spec.health_timeout
            return wait_healthy(url, timeout, cancel=self._interrupt, ended=ended)
        if result.event != "restarted" or not new:
            return None  # a signal: its processes kept running; no pid to watch (systemd)
        ports = old_ports or {port for proc in new for port in _named_ports(proc)}
        if ports:
            return wait_listening(new, ports, self.spec.health_timeout, self._interrupt, ended)
        return wait_steady(STEADY, self._interrupt, ended)

    def _wait_replaced(self, old: Sequence[psutil.Process]) -> None:
        """After a signal, give the processes that ran the old code up to ``grace`` seconds to be
        replaced (gunicorn's HUP swaps its workers), so that the refresh which follows does not
        call the target stale while the swap is under way."""
        deadline = time.monotonic() + self.spec.grace
        while any(alive(proc) for proc in old):
            left = deadline - time.monotonic()
            if left <= 0 or self._cancel.wait(min(0.05, left)):
                return


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _named_ports(proc: psutil.Process) -> set[int]:
    try:
        return named_ports(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return set()
