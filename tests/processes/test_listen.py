"""The socket the daemon holds for its own child (processes/listen): addresses, binding, release."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachewatchd.processes.listen import (
    Address,
    Listener,
    ListenError,
    address_problem,
    held,
    holding,
    parse_address,
)
from tests.support.wait import wait_until


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="cw-l-", dir="/tmp") as name:
        yield Path(name)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8000", Address("127.0.0.1", 8000)),
        ("8000", Address("127.0.0.1", 8000)),
        ("0.0.0.0:80", Address("0.0.0.0", 80)),
        ("localhost:0", Address("localhost", 0)),
        ("[::1]:8000", Address("::1", 8000)),
        ("unix:/run/app.sock", Address(path=Path("/run/app.sock"))),
        ("unix:///run/app.sock", Address(path=Path("/run/app.sock"))),
    ],
)
def test_addresses(text: str, address: Address) -> None:
    assert parse_address(text) == address
    assert address_problem(text) is None


def test_a_relative_unix_path_is_taken_from_the_current_directory() -> None:
    assert parse_address("unix:app.sock").path == Path.cwd() / "app.sock"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "HOST:PORT or unix:PATH"),
        ("127.0.0.1:http", "the port must be a number"),
        ("127.0.0.1:70000", "the port must be a number from 0 to 65535"),
        (":8000", "must be HOST:PORT"),
        ("::1:8000", "an IPv6 host in brackets"),
        ("unix:", "unix: needs a path"),
        ("a\0b:1", "HOST:PORT or unix:PATH"),
    ],
)
def test_bad_addresses_say_why(text: str, problem: str) -> None:
    found = address_problem(text)
    assert found is not None
    assert problem in found


def test_an_address_prints_as_it_is_written() -> None:
    for text in ("127.0.0.1:8000", "[::1]:8000", "unix:/run/app.sock"):
        assert str(parse_address(text)) == text


def _can_listen(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False
    return True


def test_a_listener_accepts_connections_into_its_queue_and_close_frees_the_port() -> None:
    listener = Listener.bind(parse_address("127.0.0.1:0"))
    port = int(listener.name.rsplit(":", 1)[1])
    assert port > 0, "the real port of port 0"
    assert not _can_listen(port)
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        # nobody accepts: the connections wait in the queue (the kernel completed them)
        assert wait_until(lambda: listener.pending() == 3, 10)
    finally:
        for client in clients:
            client.close()
    listener.close()
    listener.close()  # idempotent
    assert listener.closed
    assert _can_listen(port)
    with pytest.raises(ListenError, match="closed"):
        listener.fileno()


def test_an_address_in_use_is_one_line_naming_the_option() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            Listener.bind(parse_address(f"127.0.0.1:{port}"))
    message = caught.value.message
    assert message == (
        f"cannot listen on 127.0.0.1:{port}: the address is already in use (another server runs "
        "there: stop it, or choose another --listen)"
    )
    assert caught.value.exit_code == 3


def test_an_unknown_host_is_one_line() -> None:
    with pytest.raises(
        ListenError, match=r"cannot listen on no-such-host\.invalid:80: unknown host"
    ):
        Listener.bind(parse_address("no-such-host.invalid:80"))


def test_prepare_puts_the_shared_socket_back_in_blocking_mode() -> None:
    listener = Listener.bind(parse_address("127.0.0.1:0"))
    try:
        fd = listener.fileno()
        with socket.socket(fileno=socket.dup(fd)) as other:  # what a server does with its copy
            other.setblocking(False)  # O_NONBLOCK is shared by every copy of the descriptor
        assert os.get_blocking(fd) is False
        assert listener.prepare() == fd
        assert os.get_blocking(fd) is True
    finally:
        listener.close()


def test_a_unix_socket_is_created_and_removed(short_dir: Path) -> None:
    path = short_dir / "app.sock"
    listener = Listener.bind(parse_address(f"unix:{path}"))
    assert path.is_socket()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
    assert listener.pending() is None  # TCP_INFO only for TCP
    listener.close()
    assert not path.exists()


def test_a_stale_unix_socket_file_is_replaced_a_live_one_refused(short_dir: Path) -> None:
    path = short_dir / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: left over from a crash
    listener = Listener.bind(parse_address(f"unix:{path}"))
    try:
        with pytest.raises(ListenError, match="already in use"):
            Listener.bind(parse_address(f"unix:{path}"))
    finally:
        listener.close()
    assert not path.exists()


def test_a_unix_path_that_is_not_a_socket_is_refused_and_kept(short_dir: Path) -> None:
    path = short_dir / "notes.txt"
    path.write_text("keep me", encoding="utf-8")
    with pytest.raises(ListenError, match="exists and is not a socket"):
        Listener.bind(parse_address(f"unix:{path}"))
    assert path.read_text(encoding="utf-8") == "keep me"


def test_a_unix_socket_file_replaced_by_someone_else_is_not_removed(short_dir: Path) -> None:
    path = short_dir / "app.sock"
    listener = Listener.bind(parse_address(f"unix:{path}"))
    path.unlink()
    path.write_text("someone else's", encoding="utf-8")
    listener.close()
    assert path.read_text(encoding="utf-8") == "someone else's"


def test_holding_keeps_the_socket_for_the_block_only() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = parse_address(f"127.0.0.1:{port}")
    assert held(address) is None
    with holding(address) as listener:
        assert listener is not None
        assert held(address) is listener
    assert held(address) is None
    assert listener.closed
    assert _can_listen(port)
    with holding(None) as nothing:
        assert nothing is None


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_address() -> None:
    listener = Listener.bind(parse_address("[::1]:0"))
    try:
        assert listener.name.startswith("[::1]:")
        port = int(listener.name.rsplit(":", 1)[1])
        with socket.create_connection(("::1", port), timeout=5):
            assert wait_until(lambda: listener.pending() == 1, 10)
    finally:
        listener.close()
