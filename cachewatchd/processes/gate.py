"""Before and after a restart: the import gate and the health check.

The import gate imports the target's module in a fresh interpreter of the target (same Python,
cwd and environment, ``-B``) so a syntax error mid-edit never takes a working server down.
The health check polls a URL until it answers HTTP 200.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil

from cachewatchd.errors import CachewatchdError

__all__ = [
    "Probe",
    "import_check",
    "probe_from_command",
    "probe_from_process",
    "python_executable",
    "wait_healthy",
]

Runner = Callable[[Sequence[str], float], tuple[int, str]]
"""``(argv, timeout) -> (exit code, output)``; raises a :class:`CachewatchdError` when it cannot run."""

_IMPORT = "import importlib, sys; importlib.import_module(sys.argv[1])"
_PYTHON_NAME = re.compile(r"(python|pypy)[0-9.]*[a-z]?(\.exe)?")


@dataclass(frozen=True)
class Probe:
    """How to run Python the way a target runs it."""

    executable: str
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    run: Runner | None = None
    """Runs the command somewhere else (inside a container: ``docker exec``) instead of here."""


def _which(name: str, cwd: str | None, env: Mapping[str, str] | None) -> str | None:
    if os.sep in name:
        path = name if os.path.isabs(name) else os.path.join(cwd or os.getcwd(), name)
        return path if os.access(path, os.X_OK) else None
    search = (env or os.environ).get("PATH", os.defpath)
    return shutil.which(name, path=search)


def _shebang_python(script: str, cwd: str | None, env: Mapping[str, str] | None) -> str | None:
    try:  # never blocks: a FIFO (or a device) where the script should be is not a script
        fd = os.open(script, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            first = os.read(fd, 256).split(b"\n", 1)[0]
        finally:
            os.close(fd)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    if not words or not _PYTHON_NAME.fullmatch(os.path.basename(words[0])):
        return None
    return _which(words[0], cwd, env)


def python_executable(
    cmdline: Sequence[str], cwd: str | None, env: Mapping[str, str] | None, exe: str | None = None
) -> str | None:
    """The interpreter a command runs on: ``argv[0]`` when it is a Python (keeps a venv's path,
    which ``/proc/PID/exe`` would resolve away), a script's shebang Python, else *exe*."""
    if cmdline:
        first = _which(cmdline[0], cwd, env)
        if first and _PYTHON_NAME.fullmatch(os.path.basename(first)):
            return first
        if first:
            via_shebang = _shebang_python(first, cwd, env)
            if via_shebang:
                return via_shebang
    if exe and _PYTHON_NAME.fullmatch(os.path.basename(exe)):
        return exe
    return None


def probe_from_process(proc: psutil.Process) -> Probe | None:
    """Interpreter, cwd and environment of a running Python process (``None`` when unreadable)."""
    try:
        with proc.oneshot():
            cmdline, cwd, env = proc.cmdline(), proc.cwd(), proc.environ()
            try:
                exe: str | None = proc.exe()
            except (psutil.AccessDenied, OSError):
                exe = None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None
    python = python_executable(cmdline, cwd, env, exe)
    return Probe(python, cwd, env) if python else None


def probe_from_command(
    command: Sequence[str], cwd: str | None = None, env: Mapping[str, str] | None = None
) -> Probe | None:
    """The same for a command that is not running (the own child between crashes)."""
    python = python_executable(command, cwd, env)
    return Probe(python, cwd, env) if python else None


def _summarize(stderr: str) -> str:
    """The last frame and the exception line of a traceback, as one line."""
    lines = [ln.rstrip() for ln in stderr.strip().splitlines() if ln.strip()]
    if not lines:
        return "no error output"
    last = lines[-1].strip()
    for line in reversed(lines):
        m = re.match(r'\s*File "([^"]+)", line (\d+)', line)
        if m and not m.group(1).startswith("<"):
            return f"{last} ({m.group(1)}, line {m.group(2)})"
    return last


def import_check(module: str, probe: Probe, *, timeout: float = 60.0) -> str | None:
    """Import *module* with ``python -B`` as the target would; ``None`` on success, else the
    error as one line (exception and location)."""
    argv = [probe.executable, "-B", "-c", _IMPORT, module]
    if probe.run is not None:
        try:
            code, output = probe.run(argv, timeout)
        except CachewatchdError as exc:
            return f"cannot run {probe.executable}: {exc.message}"
        return None if code == 0 else _summarize(output)
    env = dict(probe.env) if probe.env is not None else None
    try:
        done = subprocess.run(
            argv,
            cwd=probe.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"import of {module} did not finish within {timeout:g}s"
    except OSError as exc:
        return f"cannot run {probe.executable}: {exc.strerror or exc}"
    if done.returncode == 0:
        return None
    return _summarize(done.stderr)


def _probe_once(opener: urllib.request.OpenerDirector, url: str, timeout: float) -> str | None:
    try:
        with opener.open(url, timeout=timeout) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        return reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def wait_healthy(
    url: str,
    timeout: float,
    *,
    cancel: threading.Event | None = None,
    ended: Callable[[], str | None] | None = None,
) -> str | None:
    """Poll *url* until it answers HTTP 200 (``None``) or *timeout* passes (a reason). *ended*
    says why the process that should answer is gone (``None`` while it runs): no use waiting."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    pause = cancel if cancel is not None else threading.Event()
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        left = deadline - time.monotonic()
        last = _probe_once(opener, url, max(0.1, min(2.0, left)))
        if last is None:
            return None
        why = ended() if ended is not None else None
        if why is not None:
            return f"{why}, before {url} answered HTTP 200 (last: {last})"
        left = deadline - time.monotonic()
        if left <= 0:
            return f"{url} did not answer HTTP 200 within {timeout:g}s (last: {last})"
        if pause.wait(min(delay, left)):
            return f"{url}: cancelled while waiting for HTTP 200 (last: {last})"
        delay = min(delay * 1.5, 0.25)
