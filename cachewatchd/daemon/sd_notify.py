"""sd_notify over ``$NOTIFY_SOCKET`` with the standard library only.

systemd's notification protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named
in ``$NOTIFY_SOCKET``: a filesystem path, or an abstract socket written with a leading ``@``. Without the
variable (not started by systemd, or on macOS) every call is a silent no-op that returns ``False``.

The watchdog is armed when ``$WATCHDOG_USEC`` is set (and ``$WATCHDOG_PID``, when present, names this
process); :class:`WatchdogPinger` sends ``WATCHDOG=1`` every half period from a small thread, skipping the
ping while an optional health check fails so that systemd restarts a hung daemon.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from cachewatchd.log import get_logger
from cachewatchd.threads import daemon_thread

__all__ = ["NOTIFY_ENV_VARS", "Notifier", "WatchdogPinger"]

NOTIFY_ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""Variables systemd sets for the main process; strip them from the environment of child processes."""

_log = get_logger(__name__)


def _socket_address(value: str) -> str | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram (think "READY=1"): never let one through.
    return " ".join(text.splitlines()).strip()


class Notifier:
    """Sends sd_notify messages; every method returns whether the message was delivered."""

    def __init__(
        self,
        socket_path: str | None,
        *,
        watchdog_usec: int | None = None,
    ) -> None:
        self._address = _socket_address(socket_path) if socket_path else None
        if socket_path and self._address is None:
            _log.warning("notify-socket-unsupported", notify_socket=socket_path)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=_watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` *assignments* in one datagram."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as exc:
            _log.warning("notify-failed", error=str(exc), message=assignments[0])
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup (or a reload) is complete."""
        extra = (f"STATUS={_one_line(status)}",) if status else ()
        return self.send("READY=1", *extra)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by systemd 253+ for Type=notify-reload)."""
        extra = (f"STATUS={_one_line(status)}",) if status else ()
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", *extra)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        extra = (f"STATUS={_one_line(status)}",) if status else ()
        return self.send("STOPPING=1", *extra)

    def status(self, text: str) -> bool:
        """``STATUS=...``: one line shown by ``systemctl --user status``."""
        return self.send(f"STATUS={_one_line(text)}")

    def ping(self) -> bool:
        """``WATCHDOG=1``."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``), or ``None`` when no watchdog is armed."""
        if self._watchdog_usec is None or self._address is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec if usec > 0 else None


class WatchdogPinger:
    """Pings the watchdog from a daemon thread every *interval* seconds while *healthy()* holds.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``start()`` returns ``False`` and
    starts nothing when the watchdog is not armed.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        interval: float | None = None,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        self._notifier = notifier
        self._interval = interval if interval is not None else notifier.watchdog_interval()
        self._healthy = healthy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        if self._interval is None or self._interval <= 0 or self._thread is not None:
            return False
        self._thread = daemon_thread(self._run, "cachewatchd-watchdog")
        self._thread.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            if self._healthy is not None and not self._healthy():
                _log.warning("watchdog-ping-skipped", reason="health check failed")
                continue
            self._notifier.ping()

    def __enter__(self) -> WatchdogPinger:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
