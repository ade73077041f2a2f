"""Run commands as a real unprivileged user (``setpriv`` when the tests run as root)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["NOBODY", "unprivileged"]

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]


def unprivileged() -> list[str]:
    """The command prefix that drops to user ``nobody`` (empty when not root).

    Skips the test, saying why, when permissions cannot be enforced (root without ``setpriv``) or
    when ``nobody`` cannot run this interpreter on this checkout (a clone, a venv or a Python under
    a private 0700 directory such as root's home).
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions are not enforced")
    command = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    reason = _unreachable(tuple(command))
    if reason:
        pytest.skip(reason)
    return command


@functools.cache
def _unreachable(command: tuple[str, ...]) -> str | None:
    probe = subprocess.run(
        [*command, sys.executable, "-c", "import cachewatchd, watchdog"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": "/nonexistent"},
        cwd="/",
        check=False,
    )
    if probe.returncode == 0:
        return None
    last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return f"user {NOBODY} cannot run {sys.executable} on {REPO} (a private directory?): {last}"
