"""The CLI's terminal helpers: colour only on a TTY, never with NO_COLOR."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from cachewatchd.cli._output import colour
from tests.support.wait import compile_pyc


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_follows_the_stdout_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr("sys.stdout", _Terminal())  # e.g. pytest's capture, or a redirect
    assert colour("x", "red") == "\033[31mx\033[0m"
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert colour("x", "red") == "x"
    assert colour("x", "red", _Terminal()) == "\033[31mx\033[0m"
    monkeypatch.setenv("NO_COLOR", "")
    assert colour("x", "red", _Terminal()) == "x"


@pytest.mark.parametrize(("no_color", "coloured"), [(False, True), (True, False)])
def test_scan_on_a_real_terminal(tmp_path: Path, no_color: bool, coloured: bool) -> None:
    """The console script writing to a pseudo-terminal colours its states, unless NO_COLOR."""
    source = tmp_path / "m.py"
    source.write_text("X = 1\n")
    compile_pyc(source)
    source.write_text("X = 12\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color:
        env["NO_COLOR"] = "1"
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cachewatchd", "scan", str(tmp_path)],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode == 0
    assert (b"\033[" in out) is coloured
    assert b"outdated" in out
