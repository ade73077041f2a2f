"""The TCP ports a process listens on when it runs in another network namespace (a container's).

psutil matches a process's sockets against this process's own ``/proc/net/tcp``: the sockets of a
process in another network namespace are not there, so a container's server never seemed to
listen. Its own namespace's tables are ``/proc/PID/net/tcp`` and ``tcp6``; its sockets are the
``socket:[INODE]`` links in ``/proc/PID/fd`` (readable by its user, or root).
"""

from __future__ import annotations

import os

from cachewatchd.paths import read_regular

__all__ = ["foreign_network", "listening_ports_of"]

_LISTEN = "0A"
"""``TCP_LISTEN`` in the ``st`` column of ``/proc/net/tcp``."""
_TABLE_LIMIT = 32 << 20
"""Bytes of one socket table read (150 bytes a socket: some 200k sockets)."""


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def foreign_network(pid: int) -> bool:
    """Whether *pid* runs in another network namespace than this process (``False`` when either
    cannot be read)."""
    ours, theirs = _inode("/proc/self/ns/net"), _inode(f"/proc/{pid}/ns/net")
    return ours is not None and theirs is not None and ours != theirs


def _socket_inodes(pid: int) -> set[str]:
    found: set[str] = set()
    folder = f"/proc/{pid}/fd"
    for fd in os.listdir(folder):  # OSError: the caller's
        try:
            link = os.readlink(f"{folder}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            found.add(link[8:-1])
    return found


def listening_ports_of(pid: int) -> set[int]:
    """The TCP ports *pid* listens on, read from its own network namespace's tables; raises
    :class:`OSError` when its descriptors cannot be read."""
    inodes = _socket_inodes(pid)
    ports: set[int] = set()
    if not inodes:
        return ports
    for table in ("tcp", "tcp6"):
        try:
            text = read_regular(f"/proc/{pid}/net/{table}", _TABLE_LIMIT).decode("ascii", "replace")
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN or fields[9] not in inodes:
                continue
            try:
                ports.add(int(fields[1].rpartition(":")[2], 16))
            except ValueError:
                continue
    return ports
