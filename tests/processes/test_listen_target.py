"""The own child's target with ``listen``: the daemon's held socket or one of its own, released on
stop; the lines for a child that binds the address itself or leaves connections unaccepted."""

from __future__ import annotations

import socket
import sys
from collections.abc import MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from cachewatchd.processes import targets
from cachewatchd.processes.listen import holding, parse_address
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.targets import ChildTarget
from tests.support.wait import wait_until

SLEEPER = "import signal; signal.pause()"


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _spec(port: int, *code: str) -> ProcessSpec:
    command = (sys.executable, "-c", *(code or (SLEEPER,)))
    return ProcessSpec(name="child", command=command, listen=f"127.0.0.1:{port}", grace=2)


def _events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_target_uses_the_held_socket_and_leaves_it_open() -> None:
    port = _port()
    with holding(parse_address(f"127.0.0.1:{port}")) as held:
        target = ChildTarget(_spec(port))
        assert held is not None
        with capture_logs() as logs:
            target.start()
        try:
            assert target.child.listener is held
            assert [e["address"] for e in logs if e["event"] == "listening"] == [held.name]
        finally:
            target.stop()
        assert not held.closed, "the daemon's socket outlives the target (a reload)"
        assert not _refused(port)
    assert _refused(port)


def test_without_a_held_socket_the_target_binds_its_own_until_it_stops() -> None:
    port = _port()
    target = ChildTarget(_spec(port))
    target.start()
    try:
        assert not _refused(port), "connections queue while the child runs"
    finally:
        target.stop()
    assert _refused(port)


def test_a_child_binding_the_address_itself_is_told_once() -> None:
    port = _port()
    code = f"import socket; socket.socket().bind(('127.0.0.1', {port}))"
    target = ChildTarget(_spec(port, code), backoff=(0.05, 0.05))
    with capture_logs() as logs:
        target.start()
        try:
            wait_until(
                lambda: target.tick() is not None and len(_events(logs, "listen-not-taken")) == 1,
                30,
            )
            wait_until(lambda: target.tick() is not None and target.child.crashes >= 3, 30)
        finally:
            target.stop()
    (entry,) = _events(logs, "listen-not-taken")
    assert f"--listen 127.0.0.1:{port}" in entry["error"]
    observed = target.observed()
    assert observed.problem is not None
    assert "address already in use" in observed.problem


def test_connections_left_waiting_are_reported_once_per_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(targets, "UNACCEPTED_AFTER", 0.2)
    port = _port()
    target = ChildTarget(_spec(port))  # a child that never accepts
    with capture_logs() as logs:
        target.start()
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            wait_until(
                lambda: target.tick() is not None and len(_events(logs, "listen-unaccepted")) == 1,
                30,
            )
            first = target.child.pid
            for _ in range(20):
                target.tick()
            assert len(_events(logs, "listen-unaccepted")) == 1, "once per generation"
            target.child.restart()
            wait_until(
                lambda: target.tick() is not None and len(_events(logs, "listen-unaccepted")) == 2,
                30,
            )
        finally:
            client.close()
            target.stop()
    entries = _events(logs, "listen-unaccepted")
    assert entries[0]["pid"] == first
    assert entries[1]["pid"] != first
    assert entries[0]["waiting"] == 1
    assert "does the command take the socket of --listen" in entries[0]["error"]


def test_a_new_address_frees_the_held_one() -> None:
    """A reload that moves ``listen`` elsewhere: the daemon's socket on the old address is closed
    when the new target binds, not when the daemon stops."""
    old, new = _port(), _port()
    with holding(parse_address(f"127.0.0.1:{old}")) as kept:
        assert kept is not None
        target = ChildTarget(_spec(new))
        target.start()
        try:
            assert kept.closed
            assert _refused(old)
            assert not _refused(new)
        finally:
            target.stop()
        assert _refused(new)
