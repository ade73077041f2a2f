"""The run command line: own-child options become a ProcessSpec; misuse is one line, exit 2."""

from __future__ import annotations

import pytest

from cachewatchd.cli import build_parser, main
from cachewatchd.cli._daemon import _command_line, _describe


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


def test_status_text_gives_the_stale_reason() -> None:
    record = {
        "pid": 1,
        "state": "ready",
        "started": "now",
        "roots": ["/r"],
        "processes": [
            {
                "name": "web",
                "state": "running",
                "pids": [7],
                "stale": True,
                "stale_reason": "pid 7 started before app.py changed",
            }
        ],
    }
    assert any("STALE: pid 7 started before app.py changed" in line for line in _describe(record))


def test_status_text_says_why_a_target_has_no_process() -> None:
    record = {
        "pid": 1,
        "state": "ready",
        "started": "now",
        "roots": ["/r"],
        "processes": [
            {
                "name": "w",
                "state": "not-found",
                "pids": [],
                "stale": False,
                "problem": "pidfile /r/w.pid names pid 9, which is not running",
            }
        ],
    }
    assert "  process w: not-found pid - (pidfile /r/w.pid names pid 9, which is not running)" in (
        _describe(record)
    )
