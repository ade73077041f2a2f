"""Whether a generation of the own child still accepts connections on the daemon's socket.

With ``--listen`` every generation serves the one socket the daemon holds, so a restart need not
wait for the old generation to *exit*: only for it to stop *accepting*. An asyncio server (uvicorn)
stops accepting at its next main-loop tick after SIGTERM and then drains its connections, sleeps,
runs the app's shutdown and exits, about 0.1 s later. Starting the next generation as soon as the
old one stopped accepting overlaps that drain with the start-up, and two generations never accept
side by side.

The evidence is read from ``/proc``: an event loop watches the listening socket in an epoll
instance, whose ``fdinfo`` lists the inode of every file it watches (``tfd: ... ino:HEX``). Only
positive evidence counts: a generation that never showed the socket in an epoll (a server accepting
in ``select``/``poll`` or a blocking ``accept``, or another platform) is stopped as before, waiting
for its exit. Servers that keep a duplicate of the descriptor (uvicorn ``--fd``: ``socket.fromfd``)
are fine: the epoll registration is what accepting needs, the descriptor alone is not.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Protocol

import psutil

from cachewatchd.processes.os_procs import Tree, kill_tree, signal_tree, wait_gone

__all__ = ["Draining", "accepting", "retire", "socket_inode"]

_EVENTPOLL = "anon_inode:[eventpoll]"
_LOOK = 0.002
"""Seconds between two looks at whether the old generation still accepts."""
_TEE_DRAIN = 1.0


class _Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class _Tee(Protocol):
    def wait(self, timeout: float) -> bool | None: ...


class Draining:
    """An old generation that stopped accepting and drains on its own: reaped by :meth:`done`,
    SIGKILLed once its grace is over, ended by :meth:`finish` when the daemon stops."""

    def __init__(self, process: _Process, tee: _Tee | None, tree: Tree, kill_at: float) -> None:
        self.process, self.tee, self.tree, self.kill_at = process, tee, tree, kill_at
        self.code: int | None = None

    def done(self) -> bool:
        """Reaped and its whole tree gone; kills what is left once past its grace."""
        if self.code is None:
            self.code = self.process.poll()
        if self.code is not None and not any(p.is_running() for p in self.tree.procs[1:]):
            self._drain_tee()
            return True
        if time.monotonic() >= self.kill_at:
            self.finish()
            return True
        return False

    def finish(self) -> None:
        """Wait out the rest of its grace, KILL what is left, reap it."""
        survivors = wait_gone(self.tree.procs, max(0.0, self.kill_at - time.monotonic()))
        if survivors:
            kill_tree(self.tree)
        self.code = self.process.wait()
        self._drain_tee()

    def _drain_tee(self) -> None:
        tee, self.tee = self.tee, None
        if tee is not None:
            tee.wait(_TEE_DRAIN)


def retire(pid: int, inode: int, grace: float) -> Tree | None:
    """TERM the generation *pid*, seen accepting on the socket *inode*, and return its tree once
    it stopped accepting (it then drains on its own). None when it was never seen accepting
    (nothing was sent: stop it the usual way), or when it still accepted after *grace* (it was
    KILLed)."""
    try:
        proc = psutil.Process(pid)
        pids = [pid, *(p.pid for p in proc.children(recursive=True))]
    except psutil.Error:
        return None
    if not accepting(pids, inode):
        return None
    tree = signal_tree(proc)
    if tree is None:
        return None
    deadline = time.monotonic() + grace
    pause = threading.Event()
    while accepting([p.pid for p in tree.procs], inode):
        if time.monotonic() >= deadline:
            kill_tree(tree)
            return None
        pause.wait(_LOOK)
    return tree


def socket_inode(fd: int) -> int:
    """The inode of the socket at *fd* (``socket:[INODE]`` in ``/proc/PID/fd``)."""
    return os.fstat(fd).st_ino


def accepting(pids: Iterable[int], inode: int) -> bool:
    """Whether an epoll instance of any of *pids* watches the socket *inode*; False where
    ``/proc`` cannot tell (gone, not ours, not Linux)."""
    needle = f"ino:{inode:x}"
    return any(_watches(pid, needle) for pid in pids)


def _watches(pid: int, needle: str) -> bool:
    base = f"/proc/{pid}"
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{base}/fd/{fd}") != _EVENTPOLL:
                continue
            with open(f"{base}/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
                for line in info:
                    if line.startswith("tfd:") and needle in line.split():
                        return True
        except OSError:
            continue
    return False
