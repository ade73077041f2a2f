"""The run command line: own-child options become a ProcessSpec; misuse is one line, exit 2."""

from __future__ import annotations

from typing import Any

import pytest

from cachewatchd.cli import build_parser, main
from cachewatchd.cli._daemon import _command_line, _describe
from cachewatchd.daemon.registry import DaemonRecord
from cachewatchd.processes.status import TargetState, TargetStatus


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
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cachewatchd: ")
    assert err.count("\n") == 1


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
