"""``doctor`` and Docker: the running containers that bind-mount code under the roots, and those
of them started before the newest change to their mounted sources (they may run old code).

Asked from dockerd over its unix socket (``$DOCKER_HOST``, else the default sockets); where there is
no Docker socket, there is nothing to say. The staleness rule is the Docker target's
(:func:`cachewatchd.processes.containers.container_stale`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cachewatchd.config.settings import RootPlan
from cachewatchd.doctor.findings import MAX_DETAILS, Finding, plural
from cachewatchd.paths import is_under
from cachewatchd.processes.containers import concerned, container_stale, host_processes
from cachewatchd.processes.docker_api import DockerClient, DockerError, DockerNotFound
from cachewatchd.processes.docker_model import Container
from cachewatchd.processes.staleness import scan_sources

__all__ = ["check_containers"]


def _running(client: DockerClient) -> list[Container]:
    found = []
    for ident in client.container_ids({}, running=True):
        try:
            found.append(client.container(ident))
        except DockerNotFound:  # gone meanwhile
            continue
    return found


def check_containers(plans: Sequence[RootPlan], environ: Mapping[str, str]) -> list[Finding]:
    """Running containers that mount code under the roots; the stale ones as a warning."""
    try:
        client = DockerClient(environ=environ, timeout=5.0)
    except DockerError as exc:
        return [Finding("containers", "info", f"cannot ask Docker about containers: {exc.message}")]
    if not os.path.exists(client.path):
        return []
    try:
        containers = _running(client)
    except DockerError as exc:
        return [Finding("containers", "info", f"cannot ask Docker about containers: {exc.message}")]
    roots = [plan.path for plan in plans]
    mounting: list[str] = []
    stale: list[str] = []
    names: list[str] = []
    for container in containers:
        paths = concerned([container], roots)
        if not paths:
            continue
        mounting.append(container.label)
        newest = scan_sources({p: _excludes(p, plans) for p in paths}).newest
        reason = container_stale(container, host_processes(container), newest)
        if reason is not None:
            stale.append(reason)
            names.append(container.name)
    findings = []
    if stale:
        one = len(stale) == 1
        message = (
            f"{plural(len(stale), 'Docker container')} started before the newest change to "
            f"{'its' if one else 'their'} mounted sources: {'it' if one else 'they'} may run old code"
        )
        action = (
            f"docker restart {' '.join(names)}; or let cachewatchd restart "
            f'{"it" if one else "them"}: [[process]] docker = {{ container = "{names[0]}" }}'
        )
        details = tuple(stale[:MAX_DETAILS])
        findings.append(Finding("stale-containers", "warning", message, action, None, details))
    if mounting:
        message = f"{plural(len(mounting), 'Docker container')} mount code under the roots"
        findings.append(Finding("containers", "info", message, "", None, tuple(mounting)))
    return findings


def _excludes(path: Path, plans: Sequence[RootPlan]) -> tuple[str, ...]:
    within = [plan for plan in plans if is_under(path, plan.path)]
    return max(within, key=lambda plan: len(plan.path.parts)).exclude if within else ()
