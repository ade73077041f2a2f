"""After a restart: is the new server up? ``restarted`` is logged only once it is.

What "up" means, in order (the first that applies):

1. **A health check** (``health_url``): it answers HTTP 200 (:func:`~cachewatchd.processes.gate.wait_healthy`).
2. **A port**: the new process, or one of its descendants, listens on a TCP port the old one
   listened on (read from the old processes' sockets just before the restart) — or, when the old
   one listened on none (it had crashed, or never served), on a port its command line names, for a
   server whose options are known (``--port``/``-p``, ``--bind``/``-b HOST:PORT`` of uvicorn,
   gunicorn, hypercorn, daphne, granian, ``flask run``; ``manage.py runserver [ADDR:]PORT``).
   A listening socket is one the kernel accepts connections on. (gunicorn's master binds before
   its workers import the app: a ``health_url`` tells when it serves.)
3. **Otherwise**: the new process has been up for :data:`STEADY` seconds without exiting.

A new process that exits first fails the restart with why (the own child's last stderr line); so
does one that does not listen within ``health_timeout`` seconds.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil

from cachewatchd.processes.netns_ports import foreign_network, listening_ports_of

__all__ = ["STEADY", "listening_ports", "named_ports", "wait_listening", "wait_steady"]

STEADY = 1.0
"""Seconds a restarted process must stay up, when neither a health check nor a port tells when
it serves."""

Ended = Callable[[], "str | None"]
"""Why the new processes are gone (``None`` while one of them runs)."""

_SERVERS = frozenset({"uvicorn", "gunicorn", "hypercorn", "daphne", "granian", "flask"})
_PORT_OPTIONS = frozenset({"--port", "-p"})
_BIND_OPTIONS = frozenset({"--bind", "-b"})
_ADDRPORT = re.compile(r"(?:.*:)?(\d{1,5})")


def _tree(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for proc in procs:
        found.append(proc)
        try:
            found += proc.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _connections(proc: psutil.Process) -> list[Any]:
    method = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
    found: list[Any] = method(kind="tcp")
    return found


def listening_ports(procs: Iterable[psutil.Process]) -> set[int]:
    """The TCP ports *procs* and their descendants listen on (the sockets psutil can read; a
    process in another network namespace, a container's: :mod:`.netns_ports`)."""
    ports: set[int] = set()
    for proc in _tree(procs):
        try:
            if foreign_network(proc.pid):  # a container's: psutil reads our namespace only
                ports.update(listening_ports_of(proc.pid))
                continue
            connections = _connections(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        ports.update(c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN)
    return ports


def _server(cmdline: Sequence[str]) -> str | None:
    """The known server *cmdline* runs (``uvicorn``, ``django``...), or ``None``."""
    head = list(cmdline[:4])
    for i, word in enumerate(head):
        name = os.path.basename(word).removesuffix(".exe").removesuffix(".py")
        if i > 0 and head[i - 1] == "-m" and word in _SERVERS:
            return word
        if name in _SERVERS and not word.startswith("-"):
            return name
        if name == "manage" and "runserver" in cmdline:
            return "django"
    return None


def _port(text: str) -> int | None:
    match = _ADDRPORT.fullmatch(text.strip("[]")) if not text.startswith("unix:") else None
    if match is None:
        return None
    port = int(match.group(1))
    return port if 0 < port < 65536 else None


def named_ports(cmdline: Sequence[str]) -> set[int]:
    """The TCP ports the command line of a known server names (see the module), else none."""
    server = _server(cmdline)
    if server is None:
        return set()
    ports: set[int] = set()
    args = list(cmdline)
    for i, arg in enumerate(args):
        option, _, inline = arg.partition("=")
        value = inline if inline else (args[i + 1] if i + 1 < len(args) else "")
        if option in _PORT_OPTIONS and value.isdigit():
            found = _port(value)
        elif option in _BIND_OPTIONS and ":" in value:
            found = _port(value.rpartition(":")[2])
        elif arg.startswith("-b") and len(arg) > 2 and ":" in arg:  # gunicorn's -bHOST:PORT
            found = _port(arg.rpartition(":")[2])
        elif server == "django" and i > 0 and args[i - 1] == "runserver":
            found = _port(arg)
        else:
            continue
        if found is not None:
            ports.add(found)
    return ports


def _pause(cancel: threading.Event, delay: float, deadline: float) -> bool:
    """Wait *delay* (not past *deadline*); True when cancelled."""
    return cancel.wait(max(0.0, min(delay, deadline - time.monotonic())))


def wait_listening(
    procs: Sequence[psutil.Process],
    ports: Iterable[int],
    timeout: float,
    cancel: threading.Event,
    ended: Ended,
) -> str | None:
    """Wait until *procs* (or a descendant) listen on one of *ports*: ``None``, or why not."""
    wanted = set(ports)
    shown = ", ".join(str(p) for p in sorted(wanted))
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if listening_ports(procs) & wanted:
            return None
        why = ended()
        if why is not None:
            return f"{why}, before it listened on port {shown}"
        if time.monotonic() >= deadline:
            return f"did not listen on port {shown} within {timeout:g}s of the restart"
        if _pause(cancel, delay, deadline):
            return f"cancelled while waiting for port {shown}"
        delay = min(delay * 1.5, 0.1)


def wait_steady(seconds: float, cancel: threading.Event, ended: Ended) -> str | None:
    """Wait until the new processes have been up *seconds* without exiting: ``None``, or why not."""
    deadline = time.monotonic() + seconds
    while True:
        why = ended()
        if why is not None:
            return f"{why}, within {seconds:g}s of the restart"
        if time.monotonic() >= deadline:
            return None
        if _pause(cancel, 0.02, deadline):
            return None  # stopping: it was up until now
