"""Existing processes: find them, stop them safely, signal them (relaunch: :mod:`.relaunch`).

Every psutil call is guarded (the process may vanish, be a zombie, or be hidden from us); processes of
another user are never touched; a pid is only signalled while its create_time still matches (psutil's
own pid-reuse check), so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import psutil

from cachewatchd.errors import RuntimeFailure
from cachewatchd.paths import is_under, read_regular

__all__ = [
    "ProcessActionError",
    "Tree",
    "alive",
    "find_by_match",
    "find_by_pidfile",
    "kill_tree",
    "owned",
    "read_pidfile",
    "send_signal",
    "signal_refusal",
    "signal_tree",
    "terminate_tree",
    "top_level",
    "wait_gone",
]

_KILL_WAIT = 10.0
"""Seconds to wait for processes to vanish after SIGKILL."""

PIDFILE_LIMIT = 4096
"""Bytes a pidfile may hold: a pid and a newline, with room for comments some tools add."""


class ProcessActionError(RuntimeFailure):
    """Acting on a process failed; the message is one line for the log."""


def owned(proc: psutil.Process) -> bool:
    """True when *proc* belongs to the user running cachewatchd: its real uid is ours (what the
    kernel says, never what a record or a pidfile claims)."""
    try:
        return proc.uids().real == os.getuid()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} ({' '.join(proc.cmdline())[:80]})"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return f"pid {proc.pid}"


def find_by_pidfile(pidfile: Path) -> list[psutil.Process]:
    """The process named by *pidfile*; raises :class:`ProcessActionError` when unusable.

    The pidfile is read with :func:`~cachewatchd.paths.read_regular`: a FIFO (or a device, a
    directory) where the pidfile belongs is "cannot read pidfile", never a hang.
    """
    try:
        text = read_pidfile(pidfile)
    except OSError as exc:
        raise ProcessActionError(f"cannot read pidfile {pidfile}: {exc.strerror or exc}") from None
    try:
        pid = int(text.split()[0]) if text else 0
    except ValueError:
        pid = 0
    if pid <= 0:
        raise ProcessActionError(f"pidfile {pidfile} does not hold a pid: {text[:40]!r}")
    try:
        proc = psutil.Process(pid)
        zombie = proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        zombie = True
    except psutil.AccessDenied:
        raise ProcessActionError(f"pid {pid} from {pidfile}: access denied") from None
    if zombie:
        raise ProcessActionError(f"pidfile {pidfile} names pid {pid}, which is not running")
    if not owned(proc):
        raise ProcessActionError(
            f"pid {pid} from {pidfile} belongs to another user; cachewatchd never touches it"
        )
    return [proc]


def read_pidfile(pidfile: Path) -> str:
    """The text of *pidfile*, stripped: a regular file of at most :data:`PIDFILE_LIMIT` bytes, read
    without blocking. Raises :class:`OSError` (``strerror`` says why: ``"a FIFO, not a regular
    file"``, ``"larger than 4096 bytes"``, ``"No such file or directory"``...)."""
    return read_regular(pidfile, PIDFILE_LIMIT).decode("ascii", "replace").strip()


def _cwd_matches(proc: psutil.Process, cwd: Path | None) -> bool:
    if cwd is None:
        return True
    try:
        return os.path.realpath(proc.cwd()) == os.path.realpath(cwd)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


def find_by_match(
    pattern: str, cwd: Path | None = None, under: Sequence[Path] | None = None
) -> list[psutil.Process]:
    """This user's processes whose joined cmdline matches *pattern*: those whose cwd is *cwd*
    when given, else those that lie under one of *under* when given, else all of them.

    A process lies under a root when its cwd does, or a file named on its command line does (the
    script of ``python app/main.py``, a venv's ``bin/gunicorn``, ``--chdir DIR``; relative names
    are taken from its cwd). Options (``-x``, ``--x=...``) and bare words (``app:app``) name no
    file.

    Only the top of each matching tree is returned (a gunicorn master, not its workers); the
    calling process and its ancestors are never returned.
    """
    regex = re.compile(pattern)
    me = os.getpid()
    ours = {me}
    with contextlib.suppress(psutil.Error):
        ours.update(p.pid for p in psutil.Process(me).parents())
    roots = _root_variants(under) if under is not None and cwd is None else None
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if proc.pid in ours or not owned(proc):
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if not cmdline or not regex.search(" ".join(cmdline)) or not _cwd_matches(proc, cwd):
            continue
        if roots is None or _under(proc, cmdline, roots):
            found.append(proc)
    return top_level(found)


def _root_variants(roots: Sequence[Path]) -> list[str]:
    return list(dict.fromkeys(v for r in roots for v in (os.path.abspath(r), os.path.realpath(r))))


def _under(proc: psutil.Process, cmdline: Sequence[str], roots: Sequence[str]) -> bool:
    """Whether *proc* (whose cmdline is *cmdline*) lies under one of *roots* (see
    :func:`find_by_match`)."""
    try:
        cwd: str | None = proc.cwd()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        cwd = None
    candidates = [cwd] if cwd else []
    for arg in cmdline:
        if not arg or arg.startswith("-") or "\0" in arg:
            continue
        if os.path.isabs(arg):
            candidates.append(arg)
        elif cwd and (os.sep in arg or arg.endswith((".py", ".pyw"))):
            candidates.append(os.path.join(cwd, arg))
    for path in candidates:
        for variant in {os.path.abspath(path), os.path.realpath(path)}:
            if any(is_under(variant, root) for root in roots):
                return True
    return False


def top_level(procs: Sequence[psutil.Process]) -> list[psutil.Process]:
    """Drop every process whose ancestor is also in *procs*."""
    pids = {p.pid for p in procs}
    result = []
    for proc in procs:
        try:
            ancestors = {p.pid for p in proc.parents()}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if not ancestors & pids:
            result.append(proc)
    return result


def alive(proc: psutil.Process | int) -> bool:
    """Whether *proc* (a process, or a pid) still runs. A zombie counts as gone: it holds no port
    and runs no code. A recycled pid counts as gone (psutil compares the create_time); a process
    we may not look at counts as running."""
    try:
        if isinstance(proc, int):
            proc = psutil.Process(proc)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none of *procs* is :func:`alive` or *timeout* passes; return the survivors."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    delay = 0.005
    while True:
        pending = [p for p in pending if alive(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        pause.wait(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.02)  # a restart waits on this: notice the exit within 20 ms


def _signal_all(procs: Sequence[psutil.Process], group: int | None, sig: int) -> None:
    if group is not None:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            group = None  # someone else's process joined the group: fall back to our own pids
        else:
            return
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil refuses a recycled pid (create_time check)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            continue


class Tree(NamedTuple):
    """A process and its descendants as they were when signalled, and their group if it is
    theirs alone (:func:`signal_tree`)."""

    procs: list[psutil.Process]
    group: int | None


def signal_tree(proc: psutil.Process, sig: int = signal.SIGTERM) -> Tree | None:
    """Send *sig* to *proc*'s process group (or the process and its descendants); the tree
    signalled, or None when *proc* is gone. Raises :class:`ProcessActionError` when it is not
    ours to touch."""
    if not owned(proc):
        raise ProcessActionError(f"pid {proc.pid} belongs to another user; not touching it")
    try:
        if not proc.is_running():
            return None
        procs = [proc, *proc.children(recursive=True)]
        pgid = os.getpgid(proc.pid)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError):
        return None
    except psutil.AccessDenied:
        raise ProcessActionError(f"pid {proc.pid}: access denied") from None
    procs = [p for p in procs if owned(p)]
    # Signal the whole group only when the process leads it and it is not our own group.
    group = pgid if pgid == proc.pid and pgid != os.getpgrp() else None
    _signal_all(procs, group, sig)
    return Tree(procs, group)


def kill_tree(tree: Tree) -> None:
    """SIGKILL what is left of *tree* and wait until it is gone (:class:`ProcessActionError`)."""
    survivors = [p for p in tree.procs if alive(p)]
    if survivors:
        _signal_all(survivors, tree.group, signal.SIGKILL)
        survivors = wait_gone(survivors, _KILL_WAIT)
    if survivors:
        pids = ", ".join(str(p.pid) for p in survivors)
        raise ProcessActionError(f"pid {pids} still running after SIGKILL")


def terminate_tree(proc: psutil.Process, grace: float) -> None:
    """TERM *proc*'s process group (or the process and its descendants), wait *grace*, KILL,
    then wait until every one of them is gone. Raises :class:`ProcessActionError` if they stay."""
    tree = signal_tree(proc)
    if tree is not None and wait_gone(tree.procs, grace):
        kill_tree(tree)


def _is_uvicorn(cmdline: Sequence[str]) -> bool:
    head = list(cmdline[:4])
    if any(os.path.basename(arg) == "uvicorn" for arg in head[:2]):
        return True
    return any(a == "-m" and b == "uvicorn" for a, b in itertools.pairwise(head))


def _uvicorn_workers(cmdline: Sequence[str], environ: dict[str, str]) -> int:
    args = list(cmdline)
    for i, arg in enumerate(args):
        value = None
        if arg == "--workers" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        if value is not None:
            return int(value) if value.isdigit() else 1
    concurrency = environ.get("WEB_CONCURRENCY", "")
    return int(concurrency) if concurrency.isdigit() else 1


def signal_refusal(proc: psutil.Process, signame: str) -> str | None:
    """Why sending *signame* to *proc* would do harm (a message), or ``None`` when it is fine."""
    if signame.upper().removeprefix("SIG") != "HUP":
        return None
    try:
        cmdline = proc.cmdline()
        environ = proc.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if not _is_uvicorn(cmdline):
        return None
    if any(arg == "--reload" or arg.startswith("--reload=") for arg in cmdline):
        return (
            f"refusing to send HUP to the `uvicorn --reload` parent pid {proc.pid}: it would "
            'orphan the server, which keeps the port; use action = "restart"'
        )
    if _uvicorn_workers(cmdline, environ) <= 1:
        return (
            f"refusing to send HUP to the single-process uvicorn pid {proc.pid}: HUP stops it; "
            'use action = "restart" (HUP reloads only `uvicorn --workers N`)'
        )
    return None


def send_signal(proc: psutil.Process, signame: str) -> None:
    """Send ``SIG<signame>`` to *proc* after the safety checks; raises on refusal or failure."""
    name = signame.upper().removeprefix("SIG")
    try:
        signum = signal.Signals[f"SIG{name}"]
    except KeyError:
        raise ProcessActionError(f"unknown signal {signame!r}") from None
    if not owned(proc):
        raise ProcessActionError(f"pid {proc.pid} belongs to another user; not signalling it")
    refusal = signal_refusal(proc, name)
    if refusal:
        raise ProcessActionError(refusal)
    try:
        proc.send_signal(signum)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        raise ProcessActionError(f"{_describe(proc)} exited before SIG{name}") from None
    except psutil.AccessDenied:
        raise ProcessActionError(f"pid {proc.pid}: not permitted to send SIG{name}") from None
