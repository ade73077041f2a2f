"""The CLI's terminal helpers: colour only on a TTY, never with NO_COLOR."""

from __future__ import annotations

import io

import pytest

from cachewatchd.cli._output import colour


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
