"""Test helpers: wait on a condition with a deadline, real interpreters, real pycs."""

from __future__ import annotations

import functools
import os
import py_compile
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "compile_pyc",
    "find_interpreters",
    "git",
    "other_interpreter",
    "wait_until",
]


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    *,
    interval: float = 0.01,
    raise_on_timeout: bool = True,
    message: str = "condition",
) -> bool:
    """Poll *predicate* until it is truthy or *timeout* passes. Never a fixed sleep."""
    deadline = time.monotonic() + timeout
    waiter = threading.Event()
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            if raise_on_timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}")
            return False
        waiter.wait(interval)
        interval = min(interval * 1.5, 0.2)


def compile_pyc(
    source: Path,
    *,
    mode: str = "timestamp",
    optimize: int = -1,
    cfile: Path | None = None,
) -> Path:
    """Write a real pyc for *source* with the running CPython and return its path."""
    modes = {
        "timestamp": py_compile.PycInvalidationMode.TIMESTAMP,
        "checked-hash": py_compile.PycInvalidationMode.CHECKED_HASH,
        "unchecked-hash": py_compile.PycInvalidationMode.UNCHECKED_HASH,
    }
    out = py_compile.compile(
        str(source),
        cfile=None if cfile is None else str(cfile),
        doraise=True,
        optimize=optimize,
        invalidation_mode=modes[mode],
    )
    assert out is not None
    return Path(out)


@functools.cache
def find_interpreters() -> dict[str, str]:
    """Map ``"3.N"`` to an executable for every CPython 3.6+ found on this machine."""
    found: dict[str, str] = {}
    candidates: list[str] = []
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if root.is_dir():
        candidates += [str(p / "bin" / "python") for p in sorted(root.iterdir())]
    for minor in range(7, 15):
        exe = shutil.which(f"python3.{minor}")
        if exe:
            candidates.append(exe)
    for exe in candidates:
        if not os.access(exe, os.X_OK):
            continue
        try:
            out = subprocess.run(
                [
                    exe,
                    "-c",
                    "import sys; print('%d.%d' % sys.version_info[:2], sys.implementation.name)",
                ],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        version, impl = out[0], out[1]
        major, minor = (int(x) for x in version.split("."))
        if impl == "cpython" and (major, minor) >= (3, 6):
            found.setdefault(version, exe)
    found.setdefault(f"{sys.version_info[0]}.{sys.version_info[1]}", sys.executable)
    return found


def other_interpreter(version: str) -> str | None:
    """Executable of CPython *version* (``"3.9"``), or ``None`` when not installed."""
    return find_interpreters().get(version)


def git(cwd: Path, *args: str, timeout: float = 120) -> str:
    """Run real git in *cwd* with a fixed identity and no user or system config; return stdout."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    command = ["git", "-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=timeout
    ).stdout.strip()
