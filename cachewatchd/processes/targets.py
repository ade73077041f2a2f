"""Managed targets behind one small interface, and the factory that picks a backend per spec.

Backends: the own child (``command``), a supervisord program (``supervisor``), an existing
process (``pidfile`` or ``match``) and a systemd user unit (``systemd``). Each one knows how to
act (restart or signal) and which processes it currently runs; failures are
:class:`~cachewatchd.errors.CachewatchdError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import psutil

from cachewatchd.errors import RuntimeFailure
from cachewatchd.processes.gate import Probe, probe_from_command, probe_from_process
from cachewatchd.processes.os_procs import (
    ProcessActionError,
    alive,
    find_by_match,
    find_by_pidfile,
    read_pidfile,
    restart_process,
    send_signal,
    signal_refusal,
)
from cachewatchd.processes.own_child import ChildError, OwnChild
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.staleness import importers
from cachewatchd.processes.status import Observed, TargetState
from cachewatchd.processes.supervisord import SupervisorClient

__all__ = [
    "ActionResult",
    "ChildTarget",
    "ProcessTarget",
    "SupervisorTarget",
    "SystemdTarget",
    "Target",
    "TargetError",
    "make_target",
]


class TargetError(RuntimeFailure):
    """A target could not act; the message is one line."""


@dataclass(frozen=True)
class ActionResult:
    """What an action did: ``restarted`` or ``signalled``, and the pids running afterwards."""

    event: str
    pids: list[int] = field(default_factory=list)


def _processes(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _refusal(spec: ProcessSpec, procs: list[psutil.Process]) -> str | None:
    """For ``action = "signal"``: why the signal would harm one of *procs* (docs/design.md, "Signals that harm")."""
    if spec.action != "signal":
        return None
    for proc in procs:
        refusal = signal_refusal(proc, spec.signal or "HUP")
        if refusal:
            return refusal
    return None


class Target(ABC):
    """One managed target. ``act`` runs on the target's worker thread only."""

    kind: ClassVar[str]

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec

    def start(self) -> None:
        """Called once when the controller starts, before its worker thread (the own child
        launches here; :class:`~cachewatchd.processes.own_child.ChildError` when it cannot be executed)."""
        return

    def stop(self) -> None:
        """Called once when the controller stops (the own child stops here)."""
        return

    def tick(self) -> float | None:
        """Housekeeping between batches; seconds until the next useful call, or ``None``."""
        return None

    def check(self) -> str | None:
        """A problem worth one log line at start (unreachable, not found...), or ``None``."""
        return None

    def failures(self) -> int:
        """How many faults the target logged itself so far (counted with the controller's)."""
        return 0

    def observed(self) -> Observed | None:
        """The target's process as the target itself keeps track of it, cheap to read at any
        time; ``None`` when only :meth:`processes` can tell (which the controller calls between
        actions and every ``REFRESH`` seconds)."""
        return None

    def ended(self, procs: Sequence[psutil.Process]) -> str | None:
        """Why *procs* (what an action started) are all gone, or ``None`` while one runs."""
        if not procs or any(alive(proc) for proc in procs):
            return None
        pids = ", ".join(str(proc.pid) for proc in procs)
        return f"pid {pids} exited"

    @abstractmethod
    def act(self, cancel: threading.Event) -> ActionResult:
        """Restart or signal, per ``spec.action``."""

    @abstractmethod
    def processes(self) -> list[psutil.Process]:
        """The target's top-level processes right now (possibly none)."""

    def probe(self) -> Probe | None:
        """How to run the target's Python (for the import gate), from its running processes."""
        procs = self.processes()
        for proc in [*importers(procs), *procs]:
            found = probe_from_process(proc)
            if found is not None:
                return found
        return None


class ChildTarget(Target):
    """The daemon's own child, restarted after each batch."""

    kind = "child"

    def __init__(self, spec: ProcessSpec, *, backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        super().__init__(spec)
        assert spec.command is not None
        self.child = OwnChild(
            spec.command, cwd=spec.cwd, grace=spec.grace, backoff=backoff, name=spec.name
        )

    def start(self) -> None:
        try:
            self.child.start()
        except ChildError:
            self.child.retry_later()  # when the daemon carries on (a reload), backoff retries
            raise

    def stop(self) -> None:
        self.child.stop()

    def tick(self) -> float | None:
        return self.child.poll()

    def failures(self) -> int:
        """Crash restarts that could not start COMMAND, and crashes (non-zero exits)."""
        return self.child.start_failures + self.child.crashes

    def observed(self) -> Observed:
        """The child's pid, read live; without one, ``backoff`` while a crash restart is
        scheduled, else ``exited``, and why: the last start's error, or how it exited (with its
        last stderr line). The crashes so far, and the last exit, either way."""
        child = self.child
        crashes, last_exit = child.crashes, child.last_reason
        pid = child.pid
        if pid is not None:
            return Observed((pid,), crashes=crashes, last_exit=last_exit)
        state = TargetState.BACKOFF if child.waiting_until is not None else TargetState.EXITED
        return Observed((), child.last_error or last_exit, state, crashes, last_exit)

    def ended(self, procs: Sequence[psutil.Process]) -> str | None:
        """``None`` while the child runs; else how it exited, with its last stderr line (its
        exit is taken in now: ``child-exited``, and the crash-loop backoff)."""
        if self.child.pid is not None:
            return None
        self.child.poll()
        return self.child.last_reason or "exited"

    def act(self, cancel: threading.Event) -> ActionResult:
        if self.spec.action == "signal" and self.child.pid is not None:
            send_signal(psutil.Process(self.child.pid), self.spec.signal or "HUP")
            return ActionResult("signalled", [self.child.pid])
        return ActionResult("restarted", [self.child.restart()])

    def processes(self) -> list[psutil.Process]:
        pid = self.child.pid
        return _processes([pid]) if pid is not None else []

    def probe(self) -> Probe | None:
        found = super().probe()
        if found is not None:
            return found
        cwd = str(self.spec.cwd) if self.spec.cwd else None
        return probe_from_command(self.child.command, cwd, dict(os.environ))


class SupervisorTarget(Target):
    """A supervisord program: ``stopProcess`` + ``startProcess``, or ``signalProcess``."""

    kind = "supervisor"

    def __init__(self, spec: ProcessSpec) -> None:
        super().__init__(spec)
        assert spec.supervisor is not None
        self.client = SupervisorClient(spec.supervisor, timeout=max(60.0, spec.grace + 30.0))

    def check(self) -> str | None:
        try:
            self.client.infos()
        except RuntimeFailure as exc:
            return exc.message
        return _refusal(self.spec, self.processes())

    def act(self, cancel: threading.Event) -> ActionResult:
        if self.spec.action == "signal":
            refusal = _refusal(self.spec, _processes(self.client.pids()))
            if refusal:
                raise TargetError(refusal)
            self.client.signal(self.spec.signal or "HUP")
            return ActionResult("signalled", self.client.pids())
        return ActionResult("restarted", self.client.restart())

    def processes(self) -> list[psutil.Process]:
        try:
            return _processes(self.client.pids())
        except RuntimeFailure:
            return []


class ProcessTarget(Target):
    """An existing process found by ``pidfile`` or ``match`` (+ ``cwd``, else ``scope``).

    A ``match`` without ``cwd`` finds, by default (``scope = "roots"``), only the processes that
    run code of the target's *roots* (their cwd, or a file on their command line, lies under one):
    the same pattern in another project is not touched unless the user asks for
    ``scope = "any"``.
    """

    kind = "process"

    def __init__(
        self, spec: ProcessSpec, roots: Sequence[Path] = (), *, log: Path | None = None
    ) -> None:
        super().__init__(spec)
        self.roots = tuple(Path(r) for r in roots)
        self.log = log if log is not None else spec.log
        self._launched: list[psutil.Process] = []
        """Processes we relaunched (used when the pidfile is not rewritten by the app)."""

    @property
    def _under(self) -> tuple[Path, ...] | None:
        """The roots a ``match`` is limited to; ``None`` when it is not (``cwd``, ``scope``)."""
        if self.spec.cwd is not None or self.spec.scope == "any":
            return None
        return self.roots

    def _describe(self) -> str:
        if self.spec.pidfile is not None:
            return f"pidfile {self.spec.pidfile}"
        if self.spec.cwd is not None:
            return f"match {self.spec.match!r} in {self.spec.cwd}"
        under = self._under
        if under is None:
            return f"match {self.spec.match!r}"
        return f"match {self.spec.match!r} under {', '.join(map(str, under))}"

    def _find(self) -> list[psutil.Process]:
        launched = [p for p in self._launched if p.is_running()]
        if self.spec.pidfile is not None:
            try:
                return find_by_pidfile(self.spec.pidfile)
            except ProcessActionError:
                if launched:
                    return launched
                raise
        assert self.spec.match is not None
        return find_by_match(self.spec.match, self.spec.cwd, self._under)

    def check(self) -> str | None:
        try:
            found = self._find()
        except RuntimeFailure as exc:
            return exc.message
        if not found:
            return f"no running process for {self._describe()}"
        return _refusal(self.spec, found)

    def processes(self) -> list[psutil.Process]:
        try:
            return self._find()
        except RuntimeFailure:
            return []

    def act(self, cancel: threading.Event) -> ActionResult:
        procs = self._find()
        if not procs:
            raise TargetError(f"no running process for {self._describe()}")
        if self.spec.action == "signal":
            for proc in procs:
                send_signal(proc, self.spec.signal or "HUP")
            return ActionResult("signalled", [p.pid for p in procs])
        new_pids = []
        for proc in procs:
            pid = restart_process(proc, self.spec.grace, self.log)
            new_pids.append(pid)
            self._rewrite_pidfile(proc.pid, pid)
        self._launched = _processes(new_pids)
        return ActionResult("restarted", new_pids)

    def _rewrite_pidfile(self, old: int, new: int) -> None:
        """Point the pidfile at the relaunched process, unless the app already rewrote it."""
        pidfile = self.spec.pidfile
        if pidfile is None:
            return
        try:  # never a blocking open: a FIFO here (or at a fixed temporary name) would hang us
            if read_pidfile(pidfile) != str(old):
                return
            mode = stat.S_IMODE(os.stat(pidfile).st_mode)
            fd, tmp = tempfile.mkstemp(prefix=f".{pidfile.name}.", dir=pidfile.parent)
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                os.fchmod(out.fileno(), mode)
                out.write(f"{new}\n")
            os.replace(tmp, pidfile)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class SystemdTarget(Target):
    """A systemd user unit: ``systemctl --user restart`` (or ``kill --signal``)."""

    kind = "systemd"

    def __init__(self, spec: ProcessSpec) -> None:
        super().__init__(spec)
        assert spec.systemd is not None
        self.unit = spec.systemd

    def _systemctl(self, *args: str, timeout: float) -> str:
        exe = shutil.which("systemctl")
        if exe is None:
            raise TargetError(f"systemctl not found: cannot manage systemd unit {self.unit}")
        try:
            done = subprocess.run(
                [exe, "--user", *args],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise TargetError(f"systemctl --user {' '.join(args)} timed out") from None
        except OSError as exc:
            raise TargetError(f"cannot run systemctl: {exc.strerror or exc}") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            raise TargetError(f"systemctl --user {' '.join(args)} failed: {lines[-1].strip()}")
        return done.stdout

    def check(self) -> str | None:
        if shutil.which("systemctl") is None:
            return f"systemctl not found: cannot manage systemd unit {self.unit}"
        return None

    def act(self, cancel: threading.Event) -> ActionResult:
        timeout = self.spec.grace + 60.0
        if self.spec.action == "signal":
            signame = f"SIG{(self.spec.signal or 'HUP').upper().removeprefix('SIG')}"
            self._systemctl(
                "kill", "--kill-whom=main", f"--signal={signame}", self.unit, timeout=timeout
            )
            return ActionResult("signalled", [p.pid for p in self.processes()])
        self._systemctl("restart", self.unit, timeout=timeout)
        return ActionResult("restarted", [p.pid for p in self.processes()])

    def processes(self) -> list[psutil.Process]:
        try:
            out = self._systemctl("show", "-p", "MainPID", "--value", self.unit, timeout=10.0)
        except RuntimeFailure:
            return []
        text = out.strip()
        return _processes([int(text)]) if text.isdigit() and int(text) > 0 else []


_FACTORIES: dict[str, Callable[[ProcessSpec, Sequence[Path]], Target]] = {
    "command": lambda spec, roots: ChildTarget(spec),
    "supervisor": lambda spec, roots: SupervisorTarget(spec),
    "pidfile": ProcessTarget,
    "match": ProcessTarget,
    "systemd": lambda spec, roots: SystemdTarget(spec),
}


def make_target(spec: ProcessSpec, roots: Sequence[Path] = ()) -> Target:
    """The backend for *spec*, chosen by its one selector; *roots* are the target's roots (its
    ``root``, else the daemon's): a ``match`` acts only on processes under them (``scope``)."""
    for selector, factory in _FACTORIES.items():
        if getattr(spec, selector) is not None:
            return factory(spec, roots)
    raise TargetError(
        f"process {spec.name!r} needs one of command, supervisor, pidfile, match or systemd"
    )
