"""The daemon's own child: ``cachewatchd --foreground PATH -- COMMAND ARGS...``.

COMMAND runs in its own process group with the daemon's stdout and stderr (its output passes
through), is restarted after each batch, and, when it dies on its own with an error, is started
again after a delay that doubles while it keeps crashing (crash-loop backoff).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from cachewatchd.errors import RuntimeFailure
from cachewatchd.log import get_logger
from cachewatchd.processes.os_procs import terminate_tree

__all__ = ["ChildError", "OwnChild"]

_STABLE_AFTER = 10.0
"""A child that ran this long before dying resets the backoff."""


class ChildError(RuntimeFailure):
    """The command could not be started."""


class OwnChild:
    """One COMMAND, started and restarted by the daemon. Thread-safe."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        grace: float = 10.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        name: str = "child",
    ) -> None:
        if not command:
            raise ChildError("the child command is empty")
        self.command = tuple(command)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.grace = grace
        self.name = name
        self._backoff_min, self._backoff_max = backoff
        self._delay = self._backoff_min
        self._last_delay = self._backoff_min
        self._lock = threading.RLock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._restart_at: float | None = None
        self.crashes = 0
        self.start_failures = 0
        """Crash restarts that could not start COMMAND (each logged as ``restart-failed``)."""
        self.last_error: str | None = None
        """Why the last start failed; ``None`` once COMMAND started."""
        self.last_exit: int | None = None
        self._log = get_logger(__name__)

    # -- state --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        with self._lock:
            if self._popen is None or self._popen.poll() is not None:
                return None
            return self._popen.pid

    @property
    def waiting_until(self) -> float | None:
        """Monotonic time of the scheduled crash restart, if one is pending."""
        with self._lock:
            return self._restart_at

    # -- actions ------------------------------------------------------------------------------
    def start(self) -> int:
        """Start COMMAND in its own process group; return its pid."""
        with self._lock:
            if self.pid is not None:
                return self.pid
            group: dict[str, Any] = (
                {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
            )
            try:
                self._popen = subprocess.Popen(
                    self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, **group
                )
            except OSError as exc:
                self._popen = None
                self.last_error = f"cannot start {self.command[0]!r}: {exc.strerror or exc}"
                raise ChildError(self.last_error) from None
            self._started_at = time.monotonic()
            self._restart_at = None
            self.last_error = None
            return self._popen.pid

    def stop(self) -> int | None:
        """TERM the child's group, wait ``grace``, KILL, reap; return its exit code."""
        with self._lock:
            popen, self._popen = self._popen, None
            self._restart_at = None
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                terminate_tree(psutil.Process(popen.pid), self.grace)
        code = popen.wait()
        self.last_exit = code
        return code

    def restart(self) -> int:
        """Stop, then start again; return the new pid."""
        self.stop()
        return self.start()

    def retry_later(self) -> None:
        """After a start that failed: start again when the backoff delay is over (see :meth:`poll`)."""
        with self._lock:
            self._schedule(time.monotonic())

    def poll(self) -> float | None:
        """Notice a child that died on its own and (re)start it when its backoff is over.

        Returns the seconds until the next call is useful, or ``None`` when nothing is pending.
        """
        now = time.monotonic()
        with self._lock:
            popen = self._popen
            if popen is not None:
                code = popen.poll()
                if code is None:
                    return 0.25
                self._popen = None
                self.last_exit = code
                self._exited(code, now)
            if self._restart_at is None:
                return None
            if now < self._restart_at:
                return self._restart_at - now
        try:
            self.start()
        except ChildError as exc:
            self._log.error("restart-failed", target=self.name, error=str(exc))
            with self._lock:
                self.start_failures += 1
                self._schedule(time.monotonic())
                return self._last_delay
        return 0.25

    def _exited(self, code: int, now: float) -> None:
        if code == 0:
            self._log.info("child-exited", target=self.name, code=code, restart_in=None)
            return
        self.crashes += 1
        if now - self._started_at >= _STABLE_AFTER:
            self._delay = self._backoff_min
        self._schedule(now)
        self._log.warning("child-exited", target=self.name, code=code, restart_in=self._last_delay)

    def _schedule(self, now: float) -> None:
        self._last_delay = self._delay
        self._restart_at = now + self._delay
        self._delay = min(self._delay * 2, self._backoff_max)
