"""Relaunching an existing process: read how it was started, stop it, start it again detached.

The relaunched process is started through a throw-away interpreter in its own session, so it is not
our child and outlives cachewatchd.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from cachewatchd.processes.os_procs import ProcessActionError, terminate_tree

__all__ = ["Snapshot", "launch_detached", "restart_process", "snapshot"]

_LAUNCHER = """\
import os, subprocess, sys
log = sys.argv[1]
out = open(log, "ab") if log else subprocess.DEVNULL
try:
    p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True)
except OSError as exc:
    sys.stderr.write("%s\\n" % exc)
    sys.stderr.flush()
    os._exit(127)
sys.stdout.write("%d\\n" % p.pid)
sys.stdout.flush()
os._exit(0)
"""
"""Run by a throw-away interpreter so the relaunched server is not our child (double fork)."""


@dataclass(frozen=True)
class Snapshot:
    """What is needed to start a process again the way it was started."""

    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    cwd: str
    environ: dict[str, str]


def snapshot(proc: psutil.Process) -> Snapshot:
    """Read cmdline, cwd and environment of *proc* (to relaunch it later)."""
    try:
        with proc.oneshot():
            snap = Snapshot(
                pid=proc.pid,
                create_time=proc.create_time(),
                cmdline=tuple(proc.cmdline()),
                cwd=proc.cwd(),
                environ=dict(proc.environ()),
            )
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        raise ProcessActionError(f"pid {proc.pid} exited before it could be restarted") from None
    except psutil.AccessDenied:
        raise ProcessActionError(
            f"pid {proc.pid}: access denied reading its command line, cwd or environment"
        ) from None
    if not snap.cmdline:
        raise ProcessActionError(f"pid {proc.pid} has an empty command line; cannot relaunch it")
    return snap


def launch_detached(
    cmdline: Sequence[str], cwd: str, environ: dict[str, str], log: Path | None = None
) -> int:
    """Start *cmdline* in its own session, stdio to /dev/null (or appended to *log*).

    The process is started through a throw-away interpreter, so it is not our child and outlives
    cachewatchd. Returns its pid; raises :class:`ProcessActionError` when it cannot be started.
    """
    argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(log) if log else "", *cmdline]
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProcessActionError(f"cannot relaunch {cmdline[0]!r} in {cwd}: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise ProcessActionError(f"cannot relaunch {cmdline[0]!r} in {cwd}: {reason[0]}")
    return int(done.stdout.strip())


def restart_process(proc: psutil.Process, grace: float, log: Path | None = None) -> int:
    """Stop *proc* (and its group) and start the same cmdline, cwd and environment again."""
    snap = snapshot(proc)
    terminate_tree(proc, grace)
    return launch_detached(snap.cmdline, snap.cwd, snap.environ, log)
