"""The Python of a running container, for the exact check of the pycs it writes in its bind mounts.

A container's interpreter is often another CPython version than any on this host, so the pycs it
writes in a bind mount would be judged by their headers only (``suspect`` when their source
changed since). A Docker target registers :func:`exec_commands` with
:mod:`cachewatchd.cache.remote_pythons`: the exact check of such a pyc then runs in the container
(``docker exec -i CONTAINER PYTHON``, the worker piped to it), with the container's paths (the bind
mount's ``Source`` -> ``Destination``). Without the ``docker`` command, or with the container not
running, the pyc stays ``suspect``, and the audit's note says why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable

from cachewatchd.cache.remote_pythons import Command
from cachewatchd.paths import is_under
from cachewatchd.processes.containers import _host_path
from cachewatchd.processes.docker_model import Container

__all__ = ["FALLBACK_PYTHON", "exec_commands"]

FALLBACK_PYTHON = "python3"
"""The container's Python when this host does not show its main process (found on its PATH)."""


def exec_commands(
    containers: Iterable[Container],
    pyc: str,
    host: str | None,
    python_of: Callable[[Container], str | None],
) -> list[Command]:
    """How to run the Python of each of *containers* that bind-mounts *pyc* (a real path of this
    host): ``docker [-H HOST] exec -i ID PYTHON`` (*python_of*: the interpreter its main process
    runs, if this host shows it), or why it cannot run."""
    real = os.path.realpath(pyc)
    docker: str | bool | None = False  # looked up on the first need
    found: list[Command] = []
    for container in containers:
        for mount in container.mounts:
            if mount.type != "bind" or not mount.destination.startswith("/"):
                continue
            source = os.path.realpath(_host_path(mount.source))
            if not mount.source.startswith("/") or not is_under(real, source):
                continue
            name = f"container {container.label}"
            if docker is False:
                docker = shutil.which("docker")
            if not container.running:
                why = f"is {container.state}: its Python cannot check them"
                found.append(Command((), source, mount.destination, name, why))
            elif not docker:
                why = "no docker command on PATH to run its Python"
                found.append(Command((), source, mount.destination, name, why))
            else:
                python = python_of(container) or FALLBACK_PYTHON
                argv = (str(docker), *(("-H", host) if host else ()), "exec", "-i")
                command = Command((*argv, container.id, python), source, mount.destination, name)
                found.append(command)
    return found
