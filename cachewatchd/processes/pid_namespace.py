"""Processes in another PID namespace (a container's): never signalled or relaunched from here.

A ``match`` or ``pidfile`` target that finds a process of a container would stop it and start its
command line *on this host* (or signal it past the container's own supervisor). Such a target is
refused, naming the container when it can be found: the container whose main process is the
process or one of its ancestors (asked from dockerd), else the container id its cgroup names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import psutil

from cachewatchd.paths import read_regular
from cachewatchd.processes.docker_api import DockerClient, DockerError

__all__ = ["container_of", "foreign", "namespace_refusal"]

_CONTAINER_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
_ASK_TIMEOUT = 3.0


def _namespace(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def foreign(proc: psutil.Process) -> bool:
    """Whether *proc* runs in another PID namespace than cachewatchd (``False`` when either
    cannot be read: not Linux, or a process of another user)."""
    ours, theirs = _namespace("self"), _namespace(proc.pid)
    return ours is not None and theirs is not None and ours != theirs


def _cgroup_ids(pid: int) -> list[str]:
    try:
        text = read_regular(f"/proc/{pid}/cgroup", 1 << 16).decode("ascii", "replace")
    except OSError:
        return []
    return list(dict.fromkeys(_CONTAINER_ID.findall(text)))


def container_of(proc: psutil.Process, host: str | None = None) -> str | None:
    """The container *proc* runs in, as ``name (short id)``, or ``None`` when not found."""
    ids = _cgroup_ids(proc.pid)
    try:
        lineage = {proc.pid, *(p.pid for p in proc.parents())}
    except psutil.Error:
        lineage = {proc.pid}
    try:
        client = DockerClient(host, timeout=_ASK_TIMEOUT)
        for ident in client.container_ids({}, running=True):
            container = client.container(ident)
            if container.id in ids or container.pid in lineage:
                return container.label
    except DockerError:
        pass
    return ids[0][:12] if ids else None


def namespace_refusal(procs: Sequence[psutil.Process]) -> str | None:
    """Why *procs* must not be acted on from this host (one runs in another PID namespace), or
    ``None``."""
    for proc in procs:
        if not foreign(proc):
            continue
        try:
            command = " ".join(proc.cmdline())[:80]
        except psutil.Error:
            command = "?"
        where = container_of(proc)
        inside = f" (container {where})" if where else ""
        name = where.partition(" ")[0] if where else "NAME"
        return (
            f"pid {proc.pid} ({command}) runs in another PID namespace{inside}: cachewatchd "
            "never signals it or starts its command line on this host; manage the container "
            f'instead: docker = {{ container = "{name}" }}'
        )
    return None
