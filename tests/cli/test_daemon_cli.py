"""The run, stop and status command lines: own-child options become a ProcessSpec; misuse is one
line, exit 2; the help shows the COMMAND, every option and the exit status; stop signals only
this user's processes."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

from cachewatchd.cli import build_parser, main
from cachewatchd.cli._daemon import _command_line, _describe
from cachewatchd.daemon.registry import DaemonRecord
from cachewatchd.processes.status import TargetState, TargetStatus
from tests.support.daemon import cli, isolated_env
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
