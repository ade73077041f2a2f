"""A Docker container seen from this host: which watched paths concern it, its processes here,
and whether it runs code older than its mounted sources.

Shared by the Docker target (:mod:`cachewatchd.processes.docker_target`) and ``doctor``. Which
changes concern a container is read from the container itself: the host side (``Source``) of its
bind mounts, where it lies under a watched root (or a root lies under it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import psutil

from cachewatchd.paths import is_under, read_regular
from cachewatchd.processes.docker_model import Container
from cachewatchd.processes.staleness import Change, predates, stale_reason
from cachewatchd.processes.status import ContainerStatus, timestamp

__all__ = [
    "binds",
    "concerned",
    "container_stale",
    "container_status",
    "host_processes",
    "outside_refusal",
]

_DESKTOP_PREFIXES = ("/host_mnt", "/run/desktop/mnt/host")
"""Where Docker Desktop's VM shows the host's directories (macOS, Windows): the host path follows."""
_START_SLACK = 2.0
"""Seconds between dockerd's ``StartedAt`` and the kernel's start time of the same process."""


def _host_path(source: str) -> str:
    """The path on this host of a bind mount's *source* (Docker Desktop's VM prefix removed)."""
    if not os.path.exists(source):
        for prefix in _DESKTOP_PREFIXES:
            if is_under(source, prefix) and source != prefix:
                rest = source[len(prefix) :]
                if os.path.exists(rest):
                    return rest
    return source


def binds(container: Container) -> list[str]:
    """The host sides of *container*'s bind mounts, as paths of this host (resolved)."""
    return [
        os.path.realpath(_host_path(m.source))
        for m in container.mounts
        if m.type == "bind" and m.source.startswith("/")
    ]


def concerned(containers: Iterable[Container], roots: Sequence[Path]) -> list[Path]:
    """The paths under *roots* whose changes concern *containers*, spelled like the roots: a bind
    mount's source under a root, or a root that lies inside a bind mount."""
    found: dict[Path, None] = {}
    sources = [source for container in containers for source in binds(container)]
    for root in roots:
        real = os.path.realpath(root)
        for source in sources:
            if is_under(source, real):
                found[Path(root, os.path.relpath(source, real)) if source != real else root] = None
            elif is_under(real, source):
                found[Path(root)] = None
    return [Path(os.path.normpath(p)) for p in found]


def outside_refusal(containers: Sequence[Container], roots: Sequence[Path]) -> str | None:
    """Why a container of *containers* cannot be a target under *roots* (none of its bind mounts
    lies under one), or ``None``."""
    for container in containers:
        if concerned([container], roots):
            continue
        mounts = ", ".join(
            f"{m.source} -> {m.destination}" for m in container.mounts if m.type == "bind"
        )
        shown = ", ".join(str(r) for r in dict.fromkeys(os.path.abspath(r) for r in roots))
        return (
            f"container {container.label} has no bind mount under the watched roots "
            f"({shown}; its bind mounts: {mounts or 'none'}): no change of theirs reaches it"
        )
    return None


def _cgroup_names(pid: int, ident: str) -> bool:
    try:
        text = read_regular(f"/proc/{pid}/cgroup", 1 << 16).decode("ascii", "replace")
    except OSError:
        return False
    return ident in text


def host_processes(container: Container) -> list[psutil.Process]:
    """The container's main process as a process of this host, when this host shows it: dockerd's
    pid is ours when its cgroup names the container or it started when the container did (a
    dockerd in another PID namespace, or another machine, gives pids that mean nothing here)."""
    if not container.running or container.pid <= 0:
        return []
    try:
        proc = psutil.Process(container.pid)
        started = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []
    close = container.started_at is not None and abs(started - container.started_at) < _START_SLACK
    return [proc] if close or _cgroup_names(proc.pid, container.id) else []


def container_stale(
    container: Container, procs: Sequence[psutil.Process], newest: Change | None
) -> str | None:
    """Why *container* runs code older than *newest* (a change to its mounted sources), or
    ``None``: by the processes that imported the code when this host shows them (*procs*: a
    signal replaces gunicorn's workers, not the container), else by the container's start."""
    if newest is None or not container.running:
        return None
    if procs:
        reason = stale_reason(procs, newest)
        return f"container {container.label}: {reason}" if reason else None
    started = container.started_at
    if started is None or not predates(started, newest):
        return None
    return (
        f"container {container.label} started {_iso(started)}, before {newest.path} "
        f"changed at {_iso(newest.time)}"
    )


def _iso(when: float) -> str:
    return timestamp(datetime.fromtimestamp(when, tz=timezone.utc))


def container_status(container: Container) -> ContainerStatus:
    """How ``status`` shows *container*."""
    started = _iso(container.started_at) if container.started_at is not None else None
    state = container.state
    if not container.running and container.exit_code:
        state = f"{state} (code {container.exit_code})"
    return ContainerStatus(container.name, container.id[:12], state, started)
