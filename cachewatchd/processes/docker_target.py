"""The backend for a Docker container (``docker``) or a compose service's containers (``compose``).

It restarts the containers (``POST /containers/{id}/restart``, the stop timeout honoured) or sends
their main process a signal (``POST /containers/{id}/kill``) over the Engine API
(:mod:`cachewatchd.processes.docker_api`): never the host's ``kill`` or a relaunch of a command line
on this host. Which changes concern it is read from the containers: their bind mounts under the
watched roots (:mod:`cachewatchd.processes.containers`); a container none of whose bind mounts lies
under a root is refused. The import gate runs the module's import inside the container
(``docker exec``) with the interpreter its process runs; so does the exact check of the pycs the
container writes in its bind mounts (:mod:`cachewatchd.processes.container_pythons`).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from cachewatchd.cache.remote_pythons import Command, provide
from cachewatchd.paths import read_regular
from cachewatchd.processes.container_pythons import exec_commands
from cachewatchd.processes.containers import (
    concerned,
    container_stale,
    container_status,
    host_processes,
    outside_refusal,
)
from cachewatchd.processes.docker_api import DockerClient, DockerError, DockerNotFound
from cachewatchd.processes.docker_model import Container
from cachewatchd.processes.gate import Probe
from cachewatchd.processes.os_procs import alive
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.staleness import Change, importers
from cachewatchd.processes.status import ContainerStatus
from cachewatchd.processes.targets import ActionResult, Target, TargetError, _refusal

__all__ = ["COMPOSE_PROJECT", "COMPOSE_SERVICE", "DockerTarget"]

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
_COMPOSE_ONEOFF = "com.docker.compose.oneoff"
"""``True`` on the containers of ``docker compose run``: not the service's."""
_PYTHON = re.compile(r"(python|pypy)[0-9.]*[a-z]?")
_RESTART_MARGIN = 60.0
"""Seconds a restart may take beyond the stop timeout (the start, an image's entrypoint...)."""


class DockerTarget(Target):
    """The containers of one ``docker``/``compose`` target. See the module docstring."""

    kind = "docker"

    def __init__(self, spec: ProcessSpec, roots: Sequence[Path] = ()) -> None:
        super().__init__(spec)
        assert spec.docker is not None
        self.docker = spec.docker
        self.roots = tuple(Path(r) for r in roots)
        self._lock = threading.Lock()
        self._seen: tuple[Container, ...] = ()
        """The containers as last looked at (any thread reads; only the worker writes)."""

    # -- looking -----------------------------------------------------------------------------
    def _client(self, timeout: float = 10.0) -> DockerClient:
        return DockerClient(self.docker.host, timeout=timeout)

    def _look(self) -> list[Container]:
        """The target's containers now; :class:`DockerError` when dockerd cannot be asked."""
        client = self._client()
        found: list[Container] = []
        if self.docker.container is not None:
            try:
                found = [client.container(self.docker.container)]
            except DockerNotFound:
                found = []
        else:
            labels = {
                COMPOSE_PROJECT: str(self.docker.project),
                COMPOSE_SERVICE: str(self.docker.service),
            }
            for ident in client.container_ids(labels):
                try:
                    container = client.container(ident)
                except DockerNotFound:  # removed meanwhile
                    continue
                if container.labels.get(_COMPOSE_ONEOFF, "False") != "True":
                    found.append(container)
        with self._lock:
            self._seen = tuple(found)
        return found

    def _missing(self) -> str:
        if self.docker.container is not None:
            return f"no container {self.docker.container!r}"
        return (
            f"no container of {self.docker.describe()} (labels {COMPOSE_PROJECT}="
            f"{self.docker.project}, {COMPOSE_SERVICE}={self.docker.service})"
        )

    def _seen_now(self) -> tuple[Container, ...]:
        with self._lock:
            return self._seen

    # -- the Target interface -----------------------------------------------------------------
    def start(self) -> None:
        """Refuse a container none of whose bind mounts lies under the roots (the daemon says
        why and exits at start). dockerd unreachable, or no container yet: :meth:`check` says so
        and the worker looks again."""
        try:
            found = self._look()
        except DockerError:
            found = []
        refusal = outside_refusal(found, self.roots)
        if refusal is not None:
            raise TargetError(refusal)
        provide(self, self._pythons)

    def stop(self) -> None:
        provide(self, None)

    def _pythons(self, pyc: str) -> list[Command]:
        """How to run the Python of the containers that bind-mount *pyc*, for its exact check."""
        return exec_commands(self._seen_now(), pyc, self.docker.host, _main_python)

    def check(self) -> str | None:
        try:
            found = self._look()
        except DockerError as exc:
            return exc.message
        if not found:
            return self._missing()
        refusal = outside_refusal(found, self.roots)
        if refusal is not None:
            return refusal
        running = [c for c in found if c.running]
        if not running:
            states = ", ".join(f"{c.label} {c.state}" for c in found)
            return f"{self.docker.describe()} is not running: {states}"
        return _refusal(self.spec, [p for c in running for p in host_processes(c)])

    def processes(self) -> list[psutil.Process]:
        try:
            found = self._look()
        except DockerError:
            return []
        return [proc for container in found for proc in host_processes(container)]

    def scope(self, roots: Sequence[Path]) -> Sequence[Path]:
        """The bind mounts' sources under *roots*; every root until a container was seen."""
        seen = self._seen_now()
        return concerned(seen, roots) if seen else roots

    def stale(self, procs: Sequence[psutil.Process], newest: Change | None) -> str | None:
        for container in self._seen_now():
            mine = [p for p in procs if p.pid == container.pid]
            reason = container_stale(container, mine, newest)
            if reason is not None:
                return reason
        return None

    def containers(self) -> tuple[ContainerStatus, ...]:
        return tuple(container_status(c) for c in self._seen_now())

    def ended(self, procs: Sequence[psutil.Process]) -> str | None:
        """``None`` while a container runs (its main process, when this host shows it); else
        what dockerd says: ``container NAME (ID) exited (code 1)``."""
        if procs and any(alive(proc) for proc in procs):
            return None
        try:
            found = self._look()
        except DockerError:
            return None
        for container in found:
            if not container.running:
                return f"container {container.label} {container.state} (code {container.exit_code})"
        return None if found else self._missing()

    def act(self, cancel: threading.Event) -> ActionResult:
        found = self._look()
        if not found:
            raise TargetError(self._missing())
        refusal = outside_refusal(found, self.roots)
        if refusal is not None:
            raise TargetError(refusal)
        if self.spec.action == "signal":
            return self._signal([c for c in found if c.running])
        stop = self.docker.stop_timeout
        for container in found:
            if cancel.is_set():
                break
            grace = stop if stop is not None else float(container.stop_timeout or 10)
            client = self._client(timeout=grace + _RESTART_MARGIN)
            client.restart(container.id, stop, timeout=grace + _RESTART_MARGIN)
        after = self._look()
        for container in after:
            if not container.running:
                raise TargetError(
                    f"container {container.label} is {container.state} after the restart "
                    f"(exit code {container.exit_code})"
                )
        procs = [p for c in after for p in host_processes(c)]
        return ActionResult("restarted", [p.pid for p in procs if _readable(p)])

    def _signal(self, running: list[Container]) -> ActionResult:
        signame = self.spec.signal or "HUP"
        if not running:
            raise TargetError(f"{self.docker.describe()} is not running: nothing to signal")
        procs = [p for c in running for p in host_processes(c)]
        refusal = _refusal(self.spec, procs)
        if refusal is not None:
            raise TargetError(refusal)
        client = self._client()
        for container in running:
            client.kill(container.id, signame)
        return ActionResult("signalled", [p.pid for p in procs])

    def probe(self) -> Probe | None:
        """The import gate runs inside a running container, with the Python its code-importing
        process runs (read through ``/proc/PID/root``), in that process's cwd and environment."""
        for container in self._seen_now():
            for proc in importers(host_processes(container)):
                probe = _probe_inside(container, proc, self._client)
                if probe is not None:
                    return probe
        return None


def _main_python(container: Container) -> str | None:
    """The interpreter the main process of *container* runs, when this host shows it."""
    for proc in host_processes(container):
        try:
            cmdline = proc.cmdline()
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        python = _python_inside(proc.pid, cmdline, env)
        if python is not None:
            return python
    return None


def _readable(proc: psutil.Process) -> bool:
    """Whether this user may read what *proc* listens on (a root container's process, for
    another user: no). Only then is a restarted container waited for on its ports; else it is up
    when it runs (or when ``health_url`` answers)."""
    try:
        proc.cwd()
    except (psutil.Error, OSError):
        return False
    return True


def _probe_inside(
    container: Container, proc: psutil.Process, client: Callable[[], DockerClient]
) -> Probe | None:
    """How to run the Python of *proc* (a process of *container*) inside the container."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    try:
        cwd: str | None = proc.cwd()
        env: dict[str, str] | None = proc.environ()
    except (psutil.Error, OSError):
        cwd, env = None, None
    python = _python_inside(proc.pid, cmdline, env or {})
    if python is None:
        return None
    env_list = [f"{k}={v}" for k, v in env.items()] if env is not None else None

    def run(argv: Sequence[str], timeout: float) -> tuple[int, str]:
        code, output = client().exec_run(
            container.id, argv, workdir=cwd, env=env_list, timeout=timeout
        )
        return code, output.decode("utf-8", "replace")

    return Probe(python, cwd, env, run)


def _inside(pid: int, path: str) -> str:
    return f"/proc/{pid}/root{path}"


def _which_inside(pid: int, name: str, env: dict[str, str]) -> str | None:
    """*name* as the container would find it (its ``PATH``), a path inside the container."""
    if "/" in name:
        return name if name.startswith("/") and os.path.lexists(_inside(pid, name)) else None
    for folder in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        candidate = f"{folder.rstrip('/')}/{name}"
        if folder.startswith("/") and os.path.lexists(_inside(pid, candidate)):
            return candidate
    return None


def _python_inside(pid: int, cmdline: Sequence[str], env: dict[str, str]) -> str | None:
    """The interpreter *cmdline* runs on inside the container: ``argv[0]`` when it is a Python,
    else its script's shebang Python."""
    if not cmdline:
        return None
    first = cmdline[0]
    if _PYTHON.fullmatch(os.path.basename(first)):
        return first
    script = _which_inside(pid, first, env)
    if script is None:
        return None
    try:
        head = read_regular(_inside(pid, script), 1 << 20)[:256].split(b"\n", 1)[0]
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    if not words or not _PYTHON.fullmatch(os.path.basename(words[0])):
        return None
    return words[0]
