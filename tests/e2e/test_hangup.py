"""The terminal the daemon runs in hangs up: the daemon stops and its own child with it.

Real ptys: the daemon (``python -m cachewatchd --foreground ROOT -- uvicorn ...``) runs with the
slave side as its controlling terminal, its stdin, stdout and stderr, like in a terminal window or
an SSH session; closing the master side is what a closed window or a dropped connection does to
it. A SIGHUP while the terminal is fine, or to a daemon without a terminal, still reloads.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cachewatchd.processes.os_procs import alive
from tests.support.daemon import cli, isolated_env
from tests.support.servers import Reaper, fetch, free_port, uvicorn_command, write_asgi_app
from tests.support.wait import wait_until

_IN_TERMINAL = """\
import fcntl, os, signal, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty becomes this session's controlling terminal
if sys.argv[1] == "nohup":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
os.execvp(sys.argv[2], sys.argv[2:])
"""
"""Run argv[2:] as the leader of a new session whose controlling terminal is stdin (a pty slave);
with ``nohup``, SIGHUP ignored (as ``nohup`` leaves it)."""


class Terminal:
    """A real pty: what the test runs in it has it as its controlling terminal."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        self.output = b""

    def run(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        reaper: Reaper,
        cwd: Path,
        *,
        nohup: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start *argv* in the terminal (a new session) in *cwd*; with *nohup*, SIGHUP ignored
        and its output appended to that file, as ``nohup`` does."""
        out: Any = self._slave
        if nohup is not None:
            out = nohup.open("ab")
        try:
            return reaper.popen(
                [sys.executable, "-c", _IN_TERMINAL, "nohup" if nohup else "-", *argv],
                env=env,
                cwd=cwd,
                stdin=self._slave,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            if nohup is not None:
                out.close()

    def read(self) -> str:
        """Everything written to the terminal so far (what a user would see)."""
        while self.master >= 0 and select.select([self.master], [], [], 0)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: nothing holds the slave side any more
                break
            if not data:
                break
            self.output += data
        return self.output.decode("utf-8", "replace").replace("\r\n", "\n")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The daemon's JSON log events named *name*, as shown in the terminal."""
        return _events(self.read(), name)

    def hang_up(self) -> None:
        """Close the master side: the window closes, the SSH connection drops."""
        self.read()
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        for fd in (self.master, self._slave):
            if fd >= 0:
                os.close(fd)
        self.master = self._slave = -1


def _events(text: str, name: str) -> list[dict[str, Any]]:
    """The JSON log events named *name* in *text* (other lines are the server's own)."""
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            found.append(event)
    return found


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_env(tmp_path / "home", TERM="xterm")


def _serve(tmp_path: Path, *, detach: bool = False) -> tuple[Path, int, list[str]]:
    """The project, the port and the daemon's command line: ``--foreground`` (or ``run``,
    detached) on the project, a real uvicorn as its own child."""
    proj = (tmp_path / "proj").resolve()
    write_asgi_app(proj, "served")
    port = free_port()
    how = ["run"] if detach else ["--foreground"]
    daemon = [sys.executable, "-m", "cachewatchd", *how, str(proj), "--log-format", "json"]
    daemon += ["--grace", "5", "--", *uvicorn_command(port)]
    return proj, port, daemon


def _child(env: dict[str, str], reaper: Reaper) -> tuple[int, int]:
    """(daemon pid, own child pid) once the child runs, from ``cachewatchd status --json``."""
    found: list[tuple[int, int]] = []

    def running() -> bool:
        daemons = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
        pids = daemons[0]["processes"][0]["pids"] if daemons and daemons[0]["processes"] else []
        if pids:
            found.append((daemons[0]["pid"], pids[0]))
        return bool(pids)

    wait_until(running, 30, message="the own child running")
    daemon, child = found[-1]
    reaper.track(daemon)
    reaper.track(child)
    return daemon, child


def _port_free(port: int) -> bool:
    """Nothing listens on *port* (a server could bind it; the test's own connections to the old
    server may linger in TIME_WAIT, as a restarting server's SO_REUSEADDR allows)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


@pytest.mark.parametrize("how", ["session-leader", "under-a-shell", "sighup-first"])
def test_a_terminal_hang_up_stops_the_daemon_and_its_own_child(
    tmp_path: Path, env: dict[str, str], terminal: Terminal, reaper: Reaper, how: str
) -> None:
    proj, port, daemon_argv = _serve(tmp_path)
    if how == "under-a-shell":  # the shell leads the session; the daemon is its foreground job
        script = " ".join(f"'{arg}'" for arg in daemon_argv) + "; echo daemon exited"
        argv = ["/bin/sh", "-c", script]
    else:  # the daemon leads the session (as after `exec cachewatchd ...` in a login shell)
        argv = daemon_argv
    leader = terminal.run(argv, env, reaper, proj)
    wait_until(lambda: terminal.events("ready"), 30, message="ready")
    daemon_pid, child_pid = _child(env, reaper)
    wait_until(lambda: fetch(port) == "served", 30, message="the server")
    assert os.getsid(daemon_pid) == leader.pid  # the daemon runs in the terminal's session
    if sys.version_info >= (3, 11):  # process_group=0: the child stays in that session
        assert os.getsid(child_pid) == leader.pid
    else:  # 3.10's subprocess has no process_group: the child gets a session of its own
        assert os.getsid(child_pid) == child_pid
    assert os.getpgid(child_pid) == child_pid  # the child leads its own process group

    if how == "sighup-first":  # some terminals signal the shell first, then close
        os.kill(daemon_pid, signal.SIGHUP)
    terminal.hang_up()

    wait_until(lambda: not alive(daemon_pid), 30, message="the daemon to exit")
    wait_until(lambda: not alive(child_pid), 10, message="the own child to be stopped")
    assert _port_free(port), "the old server still holds the port"
    code = leader.wait(timeout=10)
    if how == "under-a-shell":
        assert code == -signal.SIGHUP  # the shell died of the hang-up, the daemon stopped
    else:
        assert code == 0


def test_sighup_while_the_terminal_is_there_reloads(
    tmp_path: Path, env: dict[str, str], terminal: Terminal, reaper: Reaper
) -> None:
    proj, _, daemon_argv = _serve(tmp_path)
    daemon = terminal.run(daemon_argv, env, reaper, proj)
    wait_until(lambda: terminal.events("ready"), 30, message="ready")
    _, child_pid = _child(env, reaper)
    daemon.send_signal(signal.SIGHUP)  # `kill -HUP` from another terminal
    wait_until(lambda: terminal.events("reloaded"), 30, message="reloaded")
    assert daemon.poll() is None
    assert alive(child_pid)
    assert terminal.events("terminal-hangup") == []
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert not alive(child_pid)


def test_a_detached_daemon_outlives_the_terminal_and_sighup_reloads_it(
    tmp_path: Path, env: dict[str, str], terminal: Terminal, reaper: Reaper
) -> None:
    proj, _, detach = _serve(tmp_path, detach=True)
    starter = terminal.run(detach, env, reaper, proj)  # `cachewatchd run` typed in the terminal
    assert starter.wait(timeout=60) == 0, terminal.read()
    daemon_pid, child_pid = _child(env, reaper)
    assert os.getsid(daemon_pid) == daemon_pid  # its own session: no controlling terminal
    terminal.hang_up()
    (log,) = (tmp_path / "home" / "state" / "cachewatchd" / "log").glob("cachewatchd-*.log")

    def logged(name: str) -> list[dict[str, Any]]:
        return _events(log.read_text(encoding="utf-8"), name)

    os.kill(daemon_pid, signal.SIGHUP)
    wait_until(lambda: logged("reloaded"), 30, message="reloaded")
    assert alive(daemon_pid)
    assert alive(child_pid)
    assert logged("terminal-hangup") == []
    stopped = cli(["stop", str(proj)], env)
    assert stopped.returncode == 0, stopped.stderr
    wait_until(lambda: not alive(child_pid), 10, message="the own child to be stopped")


def test_under_nohup_the_hang_up_is_ignored(
    tmp_path: Path, env: dict[str, str], terminal: Terminal, reaper: Reaper
) -> None:
    proj, port, daemon_argv = _serve(tmp_path)
    out = tmp_path / "nohup.out"
    daemon = terminal.run(daemon_argv, env, reaper, proj, nohup=out)

    def logged(name: str) -> list[dict[str, Any]]:
        return _events(out.read_text(encoding="utf-8"), name)

    wait_until(lambda: logged("ready"), 30, message="ready")
    _, child_pid = _child(env, reaper)
    wait_until(lambda: fetch(port) == "served", 30, message="the server")
    terminal.hang_up()
    wait_until(lambda: logged("terminal-hangup"), 30, message="terminal-hangup")
    assert logged("terminal-hangup")[0]["action"] == "ignored"
    assert daemon.poll() is None
    assert fetch(port) == "served"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert not alive(child_pid)


def test_in_a_terminal_the_own_childs_stderr_is_a_terminal_and_passes_through_unchanged(
    tmp_path: Path, env: dict[str, str], terminal: Terminal, reaper: Reaper
) -> None:
    proj = (tmp_path / "proj").resolve()
    proj.mkdir()
    script = proj / "talk.py"
    script.write_text(
        "import signal, sys\n"
        "print('stdout', sys.stdout.isatty(), flush=True)\n"
        "sys.stderr.write('stderr %s \\x1b[31mred\\x1b[0m\\tend\\n' % sys.stderr.isatty())\n"
        "sys.stderr.flush()\n"
        "signal.pause()\n",
        encoding="utf-8",
    )
    argv = [sys.executable, "-m", "cachewatchd", "--foreground", str(proj), "--log-format"]
    argv += ["json", "--", sys.executable, str(script)]
    daemon = terminal.run(argv, env, reaper, proj)
    wait_until(lambda: "\x1b[0m\tend" in terminal.read(), 30, message="the child's stderr")
    _, child_pid = _child(env, reaper)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert not alive(child_pid)
    shown = terminal.read()
    assert "stdout True\n" in shown
    # Byte for byte, one newline translation (the terminal's own): no second pty in cooked mode.
    assert "stderr True \x1b[31mred\x1b[0m\tend\n" in shown
