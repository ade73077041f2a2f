"""No traceback ever reaches a user: errors the commands do not expect are one line, exit 3."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from cachewatchd.cli import _control, main
from cachewatchd.errors import EXIT_FAILURE
from tests.support.users import REPO, unprivileged


def test_an_unwritable_home_is_one_line_exit_three() -> None:
    """A real refusal no command expects: the state directory (the registry) cannot be made."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env |= {"HOME": "/nonexistent", "PYTHONPATH": str(REPO)}
    for command in ("status", "stop"):
        proc = subprocess.run(
            [*unprivileged(), sys.executable, "-m", "cachewatchd", command],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert proc.returncode == EXIT_FAILURE, proc.stderr
        assert proc.stderr == "cachewatchd: /nonexistent: Permission denied\n", command


def test_a_bug_is_one_line_naming_where(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def buggy(args: argparse.Namespace) -> int:
        raise KeyError("two\nlines")

    monkeypatch.setattr(_control, "_status", buggy)
    assert main(["status"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cachewatchd: unexpected error (please report it): KeyError: ")
    assert err.rstrip().endswith(
        f"at test_unexpected_errors.py:{buggy.__code__.co_firstlineno + 1}"
    )
