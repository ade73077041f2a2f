"""sd_notify against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cachewatchd.daemon.sd_notify import NOTIFY_ENV_VARS, Notifier, WatchdogPinger

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")


class Listener:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout: float = 5.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
        return False


@pytest.fixture
def path_listener() -> Iterator[Listener]:
    # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path may be longer.
    with tempfile.TemporaryDirectory(prefix="cwn") as tmp:
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield Listener(sock, path)


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    if not sys.platform.startswith("linux"):
        pytest.skip("abstract sockets are Linux-only")
    name = f"cachewatchd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Listener(sock, "@" + name)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_status_stopping_over_real_socket(kind: str, request: pytest.FixtureRequest) -> None:
    listener: Listener = request.getfixturevalue(f"{kind}_listener")
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    assert notifier.enabled
    assert notifier.ready("watching 2 roots")
    assert listener.receive() == {"READY": "1", "STATUS": "watching 2 roots"}
    assert notifier.status("audit: 3 stale\ninjected READY=1")
    assert listener.receive() == {"STATUS": "audit: 3 stale injected READY=1"}
    assert notifier.stopping()
    assert listener.receive() == {"STOPPING": "1"}
    assert notifier.ping()
    assert listener.receive() == {"WATCHDOG": "1"}


def test_reloading_carries_monotonic_usec(path_listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path_listener.env_value})
    before = time.monotonic_ns() // 1000
    assert notifier.reloading()
    after = time.monotonic_ns() // 1000
    message = path_listener.receive()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after
    assert notifier.ready()
    assert path_listener.receive() == {"READY": "1"}


def test_without_notify_socket_everything_is_a_silent_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    with capture_logs() as logs:
        assert not notifier.ready("x")
        assert not notifier.reloading()
        assert not notifier.stopping()
        assert not notifier.status("x")
        assert not notifier.ping()
    assert logs == []
    assert notifier.watchdog_interval() is None


def test_from_env_defaults_to_os_environ(
    monkeypatch: pytest.MonkeyPatch, path_listener: Listener
) -> None:
    for var in NOTIFY_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_env()
    assert notifier.watchdog_interval() == 15.0
    assert notifier.ready()
    assert path_listener.receive() == {"READY": "1"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "{pid}"}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "nonsense"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    values = {k: v.format(pid=os.getpid(), other=os.getpid() + 1) for k, v in env.items()}
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/nonexistent/notify", **values})
    assert notifier.watchdog_interval() == expected


def test_watchdog_needs_a_socket() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "1000000"}).watchdog_interval() is None


def test_unsupported_address_is_disabled_with_a_warning() -> None:
    with capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "relative/notify"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert [entry["event"] for entry in logs] == ["notify-socket-unsupported"]


def test_vanished_socket_is_logged_not_raised() -> None:
    with tempfile.TemporaryDirectory(prefix="cwn") as tmp:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(Path(tmp) / "gone")})
        with capture_logs() as logs:
            assert not notifier.ready()
    assert [entry["event"] for entry in logs] == ["notify-failed"]


def test_watchdog_pinger_pings_until_stopped(path_listener: Listener) -> None:
    notifier = Notifier.from_env(
        {"NOTIFY_SOCKET": path_listener.env_value, "WATCHDOG_USEC": "20000"}
    )
    assert notifier.watchdog_interval() == 0.01
    pinger = WatchdogPinger(notifier)
    with pinger:
        assert pinger.running
        assert path_listener.receive() == {"WATCHDOG": "1"}
        assert path_listener.receive() == {"WATCHDOG": "1"}
    assert not pinger.running


def test_watchdog_pinger_skips_pings_while_unhealthy(path_listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path_listener.env_value})
    healthy = threading.Event()
    checked = threading.Event()

    def check() -> bool:
        checked.set()
        return healthy.is_set()

    with capture_logs() as logs, WatchdogPinger(notifier, interval=0.01, healthy=check):
        assert checked.wait(5)
        assert path_listener.nothing_pending()
        healthy.set()
        assert path_listener.receive() == {"WATCHDOG": "1"}
    assert "watchdog-ping-skipped" in [entry["event"] for entry in logs]


def test_watchdog_pinger_without_watchdog_starts_nothing() -> None:
    before = threading.active_count()
    pinger = WatchdogPinger(Notifier.from_env({}))
    assert not pinger.start()
    assert not pinger.running
    assert threading.active_count() == before
    pinger.stop()


def test_stop_interrupts_a_long_interval(path_listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path_listener.env_value})
    pinger = WatchdogPinger(notifier, interval=3600)
    assert pinger.start()
    pinger.stop(timeout=30)
    assert not pinger.running  # the hour-long wait was interrupted, not served
