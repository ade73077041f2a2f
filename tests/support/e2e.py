"""End to end: the real daemon (``python -m cachewatchd --foreground``) managing real servers.

:class:`E2E` is one test's world: a project root, an isolated home (config, registry, logs), a
:class:`~tests.support.servers.Reaper` for every server the test starts or the daemon relaunches, and
:meth:`E2E.daemon`, which runs the daemon as a subprocess and always stops it (and, if it had to be
killed, the processes it had started) by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import child_env
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.servers import Reaper
from tests.support.wait import wait_until

__all__ = [
    "E2E",
    "child_command",
    "toml_config",
]


def child_command(argv: Sequence[str]) -> list[str]:
    """*argv* run without ``PYTHONDONTWRITEBYTECODE`` (this machine exports it): the server imports
    and writes pycs like a developer's server does, while the daemon itself keeps it."""
    return ["env", "-u", "PYTHONDONTWRITEBYTECODE", *argv]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def toml_config(path: Path, processes: Sequence[Mapping[str, object]]) -> Path:
    """Write a user config holding one ``[[process]]`` table per mapping; return *path*."""
    lines: list[str] = []
    for table in processes:
        lines.append("[[process]]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class E2E:
    """One end-to-end test: project root, isolated home, reaper, daemons."""

    def __init__(self, tmp: Path, reaper: Reaper) -> None:
        self.tmp = tmp
        self.reaper = reaper
        self.proj = (tmp / "proj").resolve()
        self.proj.mkdir()
        self.home = tmp / "home"
        self.env = isolated_env(self.home)

    # -- servers the test starts ----------------------------------------------------------------
    def serve(self, argv: Sequence[str], cwd: Path, **extra_env: str) -> subprocess.Popen[bytes]:
        """Start a server ourselves (our child, its own session, pycs allowed)."""
        return self.reaper.popen(
            list(argv),
            cwd=cwd,
            env=child_env(**extra_env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def relaunched(self, pids: Sequence[int]) -> None:
        """Processes the daemon relaunched detached: not our children, so track them by pid."""
        for pid in pids:
            self.reaper.track(pid)

    def sweep(self, pattern: str) -> None:
        """Safety net for a failed test: track this user's processes whose cmdline matches
        *pattern* (relaunched servers the test never heard of), so the reaper stops them."""
        regex = re.compile(pattern)
        for proc in psutil.process_iter(["cmdline", "uids"]):
            cmdline, uids = proc.info["cmdline"], proc.info["uids"]
            if uids is None or uids.real != os.getuid() or proc.pid == os.getpid():
                continue
            if cmdline and regex.search(" ".join(cmdline)):
                self.reaper.track(proc.pid)

    # -- the daemon ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def daemon(self, args: Sequence[str], *, cwd: Path | None = None) -> Iterator[DaemonProc]:
        """Run ``cachewatchd --foreground ARGS --log-format json`` until the block ends, then stop
        it with SIGTERM (it stops its own child). If it will not stop, KILL it and its
        descendants by pid."""
        proc = DaemonProc(list(args), self.env, cwd=cwd)
        with proc:
            try:
                yield proc
            finally:
                _stop_daemon(proc)

    def record(self, daemon: DaemonProc) -> dict[str, Any]:
        """The daemon's registry record (what ``cachewatchd status --json`` lists)."""
        folder = self.home / "state" / "cachewatchd" / "daemons"
        (file,) = folder.glob(f"{daemon.pid}@*.json")
        record: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        return record

    def published(self, daemon: DaemonProc) -> dict[str, Any]:
        """A record published after this call: SIGHUP makes the daemon reload (the same config:
        nothing restarts) and publish its status. It also publishes after each batch and each
        change of a target, but only this says "everything up to now" (the batch counter)."""
        seen = len(daemon.events("reloaded"))
        daemon.send(signal.SIGHUP)
        wait_until(lambda: len(daemon.events("reloaded")) > seen, 20, message="reloaded")
        return self.record(daemon)


def _stop_daemon(daemon: DaemonProc) -> None:
    if daemon.proc is None or daemon.proc.poll() is not None:
        return
    try:
        tree = psutil.Process(daemon.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        daemon.stop(signal.SIGTERM, timeout=30)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait(10)
    reaper = Reaper()
    for child in tree:
        reaper.track(child.pid)
    reaper.stop_all()  # nothing is left after a clean stop; after a KILL, the orphans go too
