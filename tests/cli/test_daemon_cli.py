"""The run, stop and status command lines: own-child options become a ProcessSpec; misuse is one
line, exit 2; the help shows the COMMAND, every option and the exit status; stop signals only
this user's processes."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cachewatchd.cli import build_parser, main
from cachewatchd.cli._control import _describe
from cachewatchd.cli._daemon import _command_line
from cachewatchd.cli._logfile import LOG_FILE_ENV, LOG_MAX_BYTES, RotatingLog
from cachewatchd.daemon.registry import DaemonRecord
from cachewatchd.paths import daemon_log_file
from cachewatchd.processes.status import TargetState, TargetStatus
from tests.support.daemon import DaemonProc, cli, isolated_env
from tests.support.servers import Reaper
from tests.support.wait import wait_until


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's config, state and registry under *tmp_path* (for main() called in-process)."""
    for var in ("XDG_RUNTIME_DIR", "NOTIFY_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    for var in ("CONFIG", "STATE", "CACHE", "DATA"):
        monkeypatch.setenv(f"XDG_{var}_HOME", str(tmp_path / "home" / var.lower()))
    return tmp_path / "home"


def test_own_child_options_build_the_spec() -> None:
    args = build_parser().parse_args(
        ["run", "--health-url", "http://127.0.0.1:1/", "--health-timeout", "2", "--grace", "3"]
    )
    args.child_command = ["python", "-m", "http.server"]
    spec = _command_line(args).child
    assert spec is not None
    assert spec.command == ("python", "-m", "http.server")
    assert (spec.health_timeout, spec.grace) == (2.0, 3.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--health-timeout", "2", "--", "true"],
        ["run", "--import-check", "app"],
    ],
)
def test_child_options_without_their_partner_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cachewatchd: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["run", "--health-url", "notaurl", "--", "true"],
            "cachewatchd: --health-url: must be a URL like http://host/, not 'notaurl'\n",
        ),
        (
            ["run", "--health-url", "http://127.0.0.1:port/", "--", "true"],
            "cachewatchd: --health-url: is not a valid URL (",
        ),
        (
            ["run", "--import-check", "not a module", "--", "true"],
            "cachewatchd: --import-check: is not a dotted module name: 'not a module'\n",
        ),
        (["run", "--import-check", "", "--", "true"], "cachewatchd: --import-check: must not be "),
        (["run", "--"], "cachewatchd: '--' must be followed by the COMMAND to run: "),
        (["--foreground", ".", "--"], "cachewatchd: '--' must be followed by the COMMAND"),
        (["run", "--", ""], "cachewatchd: the COMMAND after '--' must not be empty\n"),
        (["stop", "/nonexistent/cachewatchd"], "cachewatchd: /nonexistent/cachewatchd: no such "),
        (["run", "--poll-interval", "1e12"], "cachewatchd: --poll-interval: must be a number of "),
        (["run", "--reconcile-interval", "0.001"], "cachewatchd: --reconcile-interval: must be "),
        (["run", "--grace", "1e9", "--", "true"], "cachewatchd: --grace: must be a number of "),
        (["stop", "--timeout", "1e9"], "cachewatchd: --timeout: must be a number of seconds "),
    ],
)
def test_command_line_values_are_checked_like_the_config(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(said)
    assert captured.err.count("\n") == 1
    assert captured.out == ""


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: argparse.ArgumentParser = sub.choices[name]
    return found


@pytest.mark.parametrize("name", ["run", "stop"])
def test_every_option_has_a_help_line(name: str) -> None:
    parser = _subcommand(name)
    unexplained = [a.dest for a in parser._actions if not (a.help or "").strip()]
    assert unexplained == []


def test_run_help_shows_the_command_and_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    usage = text.split("\n\n")[0]
    assert usage.startswith("usage: cachewatchd run ")
    assert "-- COMMAND [ARG ...]" in usage
    section = text.split("exit status:\n")[1]
    codes = [line.split()[0] for line in section.splitlines() if line[:4].strip().isdigit()]
    assert codes == ["0", "2", "3"]
    assert "hangs up" in text  # SIGHUP is explained: reload, or stop on a terminal hang-up
    assert main(["stop", "--help"]) == 0
    assert "exit status:\n" in capsys.readouterr().out


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
def test_stop_signals_only_processes_of_this_user_whatever_the_record_says(
    tmp_path: Path, reaper: Reaper
) -> None:
    env = isolated_env(tmp_path / "home")
    other = reaper.popen(["/bin/sh", "-c", "sleep 60; exit 0"], user=65534, cwd="/")
    victim = psutil.Process(other.pid)
    wait_until(lambda: victim.cmdline()[:2] == ["/bin/sh", "-c"])
    # A record written by a process that claims to be a daemon of uid 65534, whose real uid is
    # indeed 65534: what stop finds in the registry is not ours to signal.
    registry = tmp_path / "home" / "state" / "cachewatchd" / "daemons"
    registry.mkdir(parents=True, mode=0o700)
    host = "".join(c if c.isalnum() or c in "._-" else "_" for c in socket.gethostname())
    record = DaemonRecord(
        pid=victim.pid,
        create_time=victim.create_time(),
        started="2026-11-21T19:59:07+00:00",
        roots=(str(tmp_path),),
        host=host or "localhost",
        uid=65534,
        version="1.0",
    )
    (registry / f"{victim.pid}@{record.host}.json").write_text(json.dumps(record.to_json()))
    listed = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
    assert [d["pid"] for d in listed] == [victim.pid]  # the registry believes the record

    stopped = cli(["stop"], env)
    assert other.poll() is None, "stop signalled another user's process"
    assert stopped.returncode == 3
    assert stopped.stderr == (
        f"cachewatchd: pid {victim.pid} belongs to another user: not signalled\n"
    )
    by_path = cli(["stop", str(tmp_path)], env)
    assert (by_path.returncode, other.poll()) == (3, None)


def test_stop_stops_a_daemon_of_this_user(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home")
    proj = tmp_path / "proj"
    proj.mkdir()
    started = cli(["run", str(proj)], env)  # detached: returns once ready
    assert started.returncode == 0, started.stderr
    (record,) = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
    daemon = psutil.Process(record["pid"])
    stopped = cli(["stop", str(proj)], env)
    assert (stopped.returncode, stopped.stdout) == (0, f"stopped cachewatchd (pid {daemon.pid})\n")
    wait_until(lambda: not daemon.is_running() or daemon.status() == psutil.STATUS_ZOMBIE)
    again = cli(["stop", str(proj)], env)
    assert (again.returncode, again.stdout) == (0, f"no cachewatchd daemon running for {proj}\n")


def _record(*targets: TargetStatus) -> dict[str, Any]:
    core = DaemonRecord(
        pid=1,
        create_time=1.5,
        started="2026-11-21T19:59:07+00:00",
        roots=("/r",),
        host="h",
        uid=1000,
        version="1.0",
    )
    return {**core.to_json(), "state": "ready", "processes": [t.to_json() for t in targets]}


def test_status_text_of_a_daemon() -> None:
    record = _record()
    record["observers"] = {"/r": {"observer": "native", "reason": "ext4", "attached": False}}
    assert _describe(record) == [
        "cachewatchd pid 1 (ready), since 2026-11-21T19:59:07+00:00",
        "  /r: native (ext4, waiting for the root to come back)",
        "  invalidated 0, rescans 0, errors 0; last event none",
    ]


def test_status_text_gives_the_stale_reason() -> None:
    web = TargetStatus(
        name="web",
        kind="process",
        state=TargetState.RUNNING,
        pids=(7,),
        stale_reason="pid 7 started before app.py changed",
    )
    assert "  process web: running pid 7, STALE: pid 7 started before app.py changed" in (
        _describe(_record(web))
    )


def test_status_text_says_why_a_target_has_no_process() -> None:
    w = TargetStatus(
        name="w",
        kind="process",
        state=TargetState.NOT_FOUND,
        problem="pidfile /r/w.pid names pid 9, which is not running",
    )
    assert "  process w: not-found pid - (pidfile /r/w.pid names pid 9, which is not running)" in (
        _describe(_record(w))
    )


def test_status_text_of_an_unreadable_target_entry() -> None:
    record = _record(TargetStatus(name="w", kind="child", state=TargetState.RUNNING, pids=(3, 4)))
    record["processes"].append({"name": "x", "state": "sleeping"})
    lines = _describe(record)
    assert "  process w: running pid 3,4" in lines
    assert lines[-1].startswith("  process ?: unreadable status (")


# -- the detached daemon's log: one file per set of roots, rotated, JSON lines only -----------------
def _log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of *path* parsed as a JSON object (a line that is not one fails the test)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(p, dict) for p in parsed), lines
    return parsed


def _detached(argv: list[str], env: dict[str, str]) -> tuple[int, Path]:
    """``cachewatchd run ARGV`` (detached): the daemon's pid and the log file it names."""
    started = cli(["run", *argv], env)
    assert started.returncode == 0, started.stderr
    match = re.fullmatch(
        r"cachewatchd running in the background \(pid (\d+)\); log: (.+)\n", started.stdout
    )
    assert match is not None, started.stdout
    return int(match[1]), Path(match[2])


def _stopped(env: dict[str, str]) -> None:
    stopped = cli(["stop"], env)
    assert stopped.returncode == 0, stopped.stderr


def test_each_set_of_roots_has_its_own_log_file(tmp_path: Path, home: Path) -> None:
    env = isolated_env(home)
    a, b = (tmp_path / "a").resolve(), (tmp_path / "b").resolve()
    a.mkdir()
    b.mkdir()
    assert daemon_log_file([a, b]) == daemon_log_file([b, a, b])  # a set: order, repeats
    assert daemon_log_file([a]) != daemon_log_file([a, b])
    try:
        pid_a, log_a = _detached([str(a)], env)
        pid_b, log_b = _detached([str(b)], env)
        human = cli(["status"], env).stdout
        listed = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
    finally:
        _stopped(env)
    assert (log_a, log_b) == (daemon_log_file([a]), daemon_log_file([b]))
    assert log_a.parent == log_b.parent == home / "state" / "cachewatchd" / "log"
    assert re.fullmatch(r"cachewatchd-[0-9a-f]{12}\.log", log_a.name)
    assert log_a != log_b
    for pid, log, root in ((pid_a, log_a, a), (pid_b, log_b, b)):
        (ready,) = [e for e in _log_lines(log) if e["event"] == "ready"]
        assert (ready["pid"], ready["roots"]) == (pid, [str(root)])
        assert [e["event"] for e in _log_lines(log)][-1] == "stopping"
    assert {d["pid"]: d["log"] for d in listed} == {pid_a: str(log_a), pid_b: str(log_b)}
    blocks = human.split("cachewatchd pid ")[1:]
    assert [block.splitlines()[-1] for block in blocks] == [f"  log: {log_a}", f"  log: {log_b}"]


def test_a_foreground_daemon_shows_no_log_file(tmp_path: Path, home: Path) -> None:
    env = isolated_env(home)
    proj = tmp_path / "proj"
    proj.mkdir()
    with DaemonProc([str(proj)], env) as daemon:
        daemon.ready()
        (listed,) = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
        human = cli(["status"], env).stdout
        assert daemon.stop() == 0
    assert listed["log"] is None
    assert "log:" not in human


def test_a_refused_detached_daemon_says_so_in_a_json_line(tmp_path: Path, home: Path) -> None:
    env = isolated_env(home)
    proj = (tmp_path / "proj").resolve()
    proj.mkdir()
    try:
        pid, log = _detached([str(proj)], env)
        again = cli(["run", str(proj)], env)
    finally:
        _stopped(env)
    message = f"{proj} is already watched by another cachewatchd (pid {pid})"
    assert (again.returncode, again.stdout, again.stderr) == (3, "", f"cachewatchd: {message}\n")
    events = _log_lines(log)  # the refused daemon wrote to the same log: JSON like the rest
    (failed,) = [e for e in events if e["event"] == "start-failed"]
    assert (failed["error"], failed["exit_code"], failed["level"]) == (message, 3, "error")


def test_a_config_error_at_the_start_of_a_detached_daemon_is_a_json_line(
    tmp_path: Path, home: Path
) -> None:
    # What `cachewatchd run` spawns, by hand: the config turned bad after the command checked it.
    env = isolated_env(home)
    config = tmp_path / "config.toml"
    config.write_text('poll = "sometimes"\n', encoding="utf-8")
    log = home / "detached.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = ["run", "--foreground", "--log-format", "json", "--config", str(config), str(tmp_path)]
    with log.open("ab") as out:
        child = subprocess.run(
            [sys.executable, "-m", "cachewatchd", *argv],
            env={**env, LOG_FILE_ENV: str(log)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            timeout=60,
            check=False,
        )
    assert child.returncode == 2
    (failed,) = _log_lines(log)
    assert failed["event"] == "start-failed"
    assert failed["exit_code"] == 2
    assert failed["error"].startswith(f"{config}:1: poll")


def test_the_log_of_its_roots_is_rotated_when_a_detached_daemon_starts(
    tmp_path: Path, home: Path
) -> None:
    env = isolated_env(home)
    proj = (tmp_path / "proj").resolve()
    proj.mkdir()
    log = daemon_log_file([proj])
    old = b"x" * (LOG_MAX_BYTES + 1) + b"\n"
    log.write_bytes(old)
    Path(f"{log}.1").write_bytes(b"one\n")
    Path(f"{log}.2").write_bytes(b"two\n")  # the oldest: dropped
    try:
        _, named = _detached([str(proj)], env)
    finally:
        _stopped(env)
    assert named == log
    assert Path(f"{log}.1").read_bytes() == old
    assert Path(f"{log}.2").read_bytes() == b"one\n"
    assert not Path(f"{log}.3").exists()
    assert [e["event"] for e in _log_lines(log)][-2:] == ["ready", "stopping"]


_TALKER = """\
import signal, sys
signal.signal(signal.SIGUSR1, lambda *_: sys.stderr.write("child says hi\\n") or sys.stderr.flush())
while True:
    signal.pause()
"""


def test_the_daemon_and_its_childs_stderr_follow_the_log_when_it_rotates(
    tmp_path: Path, home: Path
) -> None:
    env = isolated_env(home)
    proj = (tmp_path / "proj").resolve()
    proj.mkdir()
    log = daemon_log_file([proj])
    filler = b"x" * (LOG_MAX_BYTES - 64) + b"\n"  # the first event of the start crosses the size
    log.write_bytes(filler)
    try:
        pid, _ = _detached([str(proj), "--", sys.executable, "-c", _TALKER], env)
        (record,) = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
        wait_until(lambda: _published_pids(env), 20, message="the own child running")
        (child,) = _published_pids(env)
        os.kill(child, signal.SIGUSR1)
        wait_until(lambda: b"child says hi\n" in log.read_bytes(), 20, message="the child's line")
    finally:
        _stopped(env)
    rotated = Path(f"{log}.1").read_bytes()
    assert rotated.startswith(filler)
    assert b"child says hi" not in rotated
    assert record["log"] == str(log)
    assert len(rotated) < LOG_MAX_BYTES + 4096  # rotated at the first event past the size
    events = [json.loads(line) for line in rotated[len(filler) :].splitlines()]
    assert events
    assert all(isinstance(e, dict) for e in events)
    text = log.read_text(encoding="utf-8")
    assert '"event": "ready"' in text
    assert "child says hi\n" in text.splitlines(keepends=True)
    assert pid == record["pid"]


def _published_pids(env: dict[str, str]) -> list[int]:
    daemons = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
    shown = daemons[0]["processes"] if daemons else []
    return list(shown[0]["pids"]) if shown else []


# -- RotatingLog, on real files ----------------------------------------------------------------------
@pytest.fixture
def fds(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """A log file open twice (the daemon's stdout and stderr stand-ins), closed after the test."""
    path = tmp_path / "cachewatchd-0123456789ab.log"
    opened = [
        os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        for _ in range(2)
    ]
    try:
        yield path, opened
    finally:
        for fd in opened:
            os.close(fd)


def test_rotating_log_keeps_whole_lines_and_its_files(fds: tuple[Path, list[int]]) -> None:
    path, opened = fds
    log = RotatingLog.attach(path, opened, max_bytes=100, files=3)
    assert log is not None
    for n in range(30):
        log.write(f'{{"n": {n:02d}, "pad": "{"p" * 20}"}}')  # the newline comes apart, like
        log.write("\n")  # structlog's print() writes it
        log.flush()
    os.write(opened[1], b"raw\n")  # what the own child's stderr writes: to the current file
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == [path.name, f"{path.name}.1", f"{path.name}.2"]
    kept = [Path(f"{path}.2"), Path(f"{path}.1"), path]
    lines = [line for file in kept for line in file.read_text().splitlines()]
    assert lines[-1] == "raw"
    numbers = [json.loads(line)["n"] for line in lines[:-1]]
    assert numbers == list(range(numbers[0], 30))  # whole lines, in order, the oldest dropped
    assert numbers[0] > 0
    for file in kept[:2]:
        assert 100 <= file.stat().st_size < 100 + 40  # rotated at the first line past the size


def test_rotating_log_follows_a_rotation_done_by_another_process(
    fds: tuple[Path, list[int]],
) -> None:
    path, opened = fds
    log = RotatingLog.attach(path, opened, max_bytes=50, files=3)
    assert log is not None
    log.write("a" * 10 + "\n")
    os.replace(path, f"{path}.1")  # another daemon on the same roots rotated it...
    path.write_text("theirs\n")  # ...and wrote to the new file
    log.write("b" * 60 + "\n")  # ours is full: take the new file as it is, shift nothing
    log.write("c\n")
    assert Path(f"{path}.1").read_text() == "a" * 10 + "\n" + "b" * 60 + "\n"
    assert path.read_text() == "theirs\nc\n"
    assert not Path(f"{path}.2").exists()


def test_rotating_log_that_cannot_rotate_loses_no_line(fds: tuple[Path, list[int]]) -> None:
    path, opened = fds
    Path(f"{path}.1").mkdir()
    (Path(f"{path}.1") / "in-the-way").touch()  # path cannot be renamed to it
    log = RotatingLog.attach(path, opened, max_bytes=50, files=2)
    assert log is not None
    for n in range(10):
        log.write(f"{n:02d} {'x' * 20}\n")
    assert [int(line.split()[0]) for line in path.read_text().splitlines()] == list(range(10))
    (Path(f"{path}.1") / "in-the-way").unlink()
    Path(f"{path}.1").rmdir()
    log.write(f"last {'y' * 50}\n")  # another max_bytes since the last failure: tried again
    log.write("new\n")
    assert path.read_text() == "new\n"
    rotated = Path(f"{path}.1").read_text().splitlines()
    assert [line.split()[0] for line in rotated] == [f"{n:02d}" for n in range(10)] + ["last"]


def test_rotating_log_of_descriptors_that_are_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cachewatchd-0123456789ab.log"
    path.touch()
    with open(os.devnull, "w") as other:
        assert RotatingLog.attach(path, [other.fileno()]) is None
    assert RotatingLog.attach(tmp_path / "missing.log", [1, 2]) is None
