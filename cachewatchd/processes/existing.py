"""The backend for an existing process, found by ``pidfile`` or ``match``: :class:`ProcessTarget`.

It restarts (stop, relaunch with the same command line, environment and cwd) or signals the
processes it finds, behind the :class:`~cachewatchd.processes.targets.Target` interface.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import psutil

from cachewatchd.errors import RuntimeFailure
from cachewatchd.processes.os_procs import (
    ProcessActionError,
    find_by_match,
    find_by_pidfile,
    read_pidfile,
    send_signal,
)
from cachewatchd.processes.pid_namespace import namespace_refusal
from cachewatchd.processes.relaunch import restart_process
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.targets import ActionResult, Target, TargetError, _processes, _refusal

__all__ = ["ProcessTarget"]


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
        return namespace_refusal(found) or _refusal(self.spec, found)

    def processes(self) -> list[psutil.Process]:
        try:
            return self._find()
        except RuntimeFailure:
            return []

    def act(self, cancel: threading.Event) -> ActionResult:
        procs = self._find()
        if not procs:
            raise TargetError(f"no running process for {self._describe()}")
        refusal = namespace_refusal(procs)  # a container's: never relaunched on this host
        if refusal is not None:
            raise TargetError(refusal)
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
