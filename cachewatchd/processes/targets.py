"""Managed targets behind one small interface, and the factory that picks a backend per spec.

Backends: the own child (``command``), a supervisord program (``supervisor``), an existing
process (``pidfile`` or ``match``, in :mod:`cachewatchd.processes.existing`) and a systemd user
unit (``systemd``). Each one knows how to act (restart or signal) and which processes it currently
runs; failures are :class:`~cachewatchd.errors.CachewatchdError` with a one-line message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import psutil

from cachewatchd.errors import RuntimeFailure
from cachewatchd.log import get_logger
from cachewatchd.processes.gate import Probe, probe_from_command, probe_from_process
from cachewatchd.processes.handover import not_taken
from cachewatchd.processes.listen import Listener, held, parse_address, release_held
from cachewatchd.processes.os_procs import alive, send_signal, signal_refusal
from cachewatchd.processes.own_child import ChildError, OwnChild
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.staleness import Change, importers, stale_reason
from cachewatchd.processes.status import ContainerStatus, Observed, TargetState
from cachewatchd.processes.supervisord import SupervisorClient
from cachewatchd.processes.warm import warm_starter

__all__ = [
    "ActionResult",
    "ChildTarget",
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

    def scope(self, roots: Sequence[Path]) -> Sequence[Path]:
        """The paths under *roots* (the target's roots) whose changes concern the target: all of
        them, but for a container, its bind mounts (cheap: called for every batch)."""
        return roots

    def stale(self, procs: Sequence[psutil.Process], newest: Change | None) -> str | None:
        """Why the target runs code older than *newest*, or ``None`` (*procs*: :meth:`processes`)."""
        return stale_reason(procs, newest)

    def containers(self) -> tuple[ContainerStatus, ...]:
        """A Docker target's containers as last seen (cheap: no request to dockerd)."""
        return ()

    def probe(self) -> Probe | None:
        """How to run the target's Python (for the import gate), from its running processes."""
        procs = self.processes()
        for proc in [*importers(procs), *procs]:
            found = probe_from_process(proc)
            if found is not None:
                return found
        return None


UNACCEPTED_AFTER = 10.0
"""With ``listen``: seconds connections may wait unaccepted while the child runs before
``listen-unaccepted`` says so (once per generation)."""


class ChildTarget(Target):
    """The daemon's own child, restarted after each batch; with ``listen``, each generation gets
    the socket the daemon holds (:mod:`cachewatchd.processes.handover`)."""

    kind = "child"

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        backoff: tuple[float, float] = (0.5, 30.0),
        roots: Sequence[Path] = (),
    ) -> None:
        super().__init__(spec)
        assert spec.command is not None
        warm = (
            warm_starter(spec.command, cwd=spec.cwd, roots=roots, name=spec.name)
            if spec.warm
            else None
        )
        self.child = OwnChild(
            spec.command, cwd=spec.cwd, grace=spec.grace, backoff=backoff, name=spec.name, warm=warm
        )
        self._address = parse_address(spec.listen) if spec.listen else None
        self._own_listener: Listener | None = None
        self._not_taken: str | None = None
        self._waiting_since: tuple[int, float] | None = None
        self._unaccepted_told: int | None = None
        self._log = get_logger(__name__)

    def start(self) -> None:
        if self._address is not None and self.child.listener is None:
            # the daemon's socket (held by the CLI for its lifetime), else one for this target
            listener = held(self._address)
            if listener is None:  # after a reload that changed the address, the old one goes
                release_held()
                listener = self._own_listener = Listener.bind(self._address)  # ListenError
            self.child.listener = listener
            self._log.info("listening", target=self.spec.name, address=listener.name)
        try:
            self.child.start()
        except ChildError:
            self.child.retry_later()  # when the daemon carries on (a reload), backoff retries
            raise

    def stop(self) -> None:
        self.child.stop()
        if self.child.warm is not None:
            self.child.warm.close()
        if self._own_listener is not None:
            self._own_listener.close()

    def tick(self) -> float | None:
        wait = self.child.poll()
        listener = self.child.listener
        if listener is not None:
            self._check_taken(listener)
        return wait

    def _check_taken(self, listener: Listener) -> None:
        """Say once when the child binds the address itself (it exits: address in use), and once
        per generation when connections wait unaccepted for :data:`UNACCEPTED_AFTER` seconds."""
        if self._not_taken is None:
            message = not_taken(self.child.last_reason, listener, self.child.command)
            if message is not None:
                self._not_taken = message
                self._log.error("listen-not-taken", target=self.spec.name, error=message)
        pid, waiting = self.child.pid, listener.pending()
        if pid is None or not waiting:
            self._waiting_since = None
            return
        now = time.monotonic()
        if self._waiting_since is None or self._waiting_since[0] != pid:
            self._waiting_since = (pid, now)
        elif now - self._waiting_since[1] >= UNACCEPTED_AFTER and self._unaccepted_told != pid:
            self._unaccepted_told = pid
            self._log.warning(
                "listen-unaccepted",
                target=self.spec.name,
                pid=pid,
                waiting=waiting,
                error=f"{waiting} connection(s) on {listener.name} waited "
                f"{UNACCEPTED_AFTER:g} s unaccepted: does the command take the socket of --listen "
                "(uvicorn --fd, gunicorn --bind fd://, systemd LISTEN_FDS), or is it stuck?",
            )

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
        problem = child.last_error or self._not_taken or last_exit
        return Observed((), problem, state, crashes, last_exit)

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


def make_target(spec: ProcessSpec, roots: Sequence[Path] = ()) -> Target:
    """The backend for *spec*, chosen by its one selector; *roots* are the target's roots (its
    ``root``, else the daemon's): a ``match`` acts only on processes under them (``scope``)."""
    from cachewatchd.processes.docker_target import DockerTarget  # they build on this module
    from cachewatchd.processes.existing import ProcessTarget

    factories: dict[str, Callable[[ProcessSpec, Sequence[Path]], Target]] = {
        "command": lambda spec, roots: ChildTarget(spec, roots=roots),
        "supervisor": lambda spec, roots: SupervisorTarget(spec),
        "pidfile": ProcessTarget,
        "match": ProcessTarget,
        "systemd": lambda spec, roots: SystemdTarget(spec),
        "docker": DockerTarget,
    }
    for selector, factory in factories.items():
        if getattr(spec, selector) is not None:
            return factory(spec, roots)
    raise TargetError(
        f"process {spec.name!r} needs one of command, supervisor, pidfile, match, systemd, "
        "docker or compose"
    )
