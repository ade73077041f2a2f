"""Run the daemon as a subprocess and follow its JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.wait import wait_until

__all__ = ["DaemonProc", "cli", "isolated_env"]

REPO = Path(__file__).resolve().parents[2]


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment whose config, state, log and registry live under *home*."""
    skip = ("XDG_", "NOTIFY_SOCKET", "WATCHDOG_", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def cli(
    args: Sequence[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cachewatchd ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "cachewatchd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class DaemonProc:
    """``python -m cachewatchd --foreground ARGS --log-format json`` with its stderr parsed."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str],
        *,
        cwd: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.args = [*args]
        self.python = python
        """The interpreter that runs the daemon (another version's, for some tests)."""
        self.env = env
        self.cwd = cwd
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.garbage: list[str] = []
        """stderr lines that are not JSON objects."""
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> DaemonProc:
        own, sep, child = self._split()
        command = [
            self.python,
            "-m",
            "cachewatchd",
            "--foreground",
            *own,
            "--log-format",
            "json",
            *sep,
            *child,
        ]
        self.proc = subprocess.Popen(
            command,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="daemon-stderr", daemon=True)
        self._reader.start()
        return self

    def _split(self) -> tuple[list[str], list[str], list[str]]:
        if "--" in self.args:
            i = self.args.index("--")
            return self.args[:i], ["--"], self.args[i + 1 :]
        return self.args, [], []

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.raw.append(line)
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict):
                    self.lines.append(parsed)
                else:
                    self.garbage.append(line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the daemon and wait for it; return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> DaemonProc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    # -- log lines -------------------------------------------------------------------------------
    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.lines if e.get("event") == name]

    def stderr(self) -> str:
        with self._lock:
            return "".join(self.raw)

    def wait_event(
        self,
        name: str,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = 30,
    ) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events(name) if where(e)]
            if not found and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {name!r}:\n" + self.stderr()
                )
            return bool(found)

        wait_until(seen, timeout, message=f"event {name!r}")
        return found[0]

    def ready(self, timeout: float = 30) -> dict[str, Any]:
        return self.wait_event("ready", timeout=timeout)
