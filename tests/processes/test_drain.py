"""A restart with ``--listen`` waits only until the old generation stopped accepting on the held
socket (processes/drain): the next one starts while the old one drains, two generations never
accept side by side, and an old generation that never ends is still killed after its grace."""

from __future__ import annotations

import os
import selectors
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cachewatchd.processes.drain import accepting, socket_inode
from cachewatchd.processes.listen import Listener, parse_address
from cachewatchd.processes.os_procs import alive
from cachewatchd.processes.own_child import OwnChild
from tests.support.prober import ask
from tests.support.wait import wait_until

ASYNCIO_SERVER = """\
import asyncio, os, pathlib, signal, socket, sys

HERE = pathlib.Path(sys.argv[1])
NAME = (HERE / "name").read_bytes()


async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def answer(reader, writer):
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\n\\r\\n" + NAME)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, sock=socket.socket(fileno=3))
    await stop.wait()
    server.close()  # accepts no more; then drains until the test opens the gate
    (HERE / f"{os.getpid()}.closed").touch()
    while not (HERE / "gate").exists():
        await asyncio.sleep(0.01)


asyncio.run(main())
"""

BLOCKING_SERVER = """\
import pathlib, socket, sys

NAME = (pathlib.Path(sys.argv[1]) / "name").read_bytes()
sock = socket.socket(fileno=3)
while True:
    conn, _ = sock.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\n\\r\\n" + NAME)
    conn.close()
"""


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener.bind(parse_address("127.0.0.1:0"))
    yield found
    found.close()


def _child(tmp_path: Path, listener: Listener, source: str, grace: float) -> OwnChild:
    script = tmp_path / "server.py"
    script.write_text(source)
    (tmp_path / "name").write_text("one")
    command = [sys.executable, str(script), str(tmp_path)]
    return OwnChild(command, cwd=tmp_path, grace=grace, listener=listener)


def _port(listener: Listener) -> int:
    return int(listener.name.rsplit(":", 1)[1])


def test_the_next_generation_starts_while_the_old_one_drains(
    listener: Listener, tmp_path: Path
) -> None:
    child = _child(tmp_path, listener, ASYNCIO_SERVER, grace=10)
    try:
        old = child.start()
        assert wait_until(lambda: ask("127.0.0.1", _port(listener), 5) == ("answered", "one"), 30)
        (tmp_path / "name").write_text("two")
        new = child.restart()
        assert new != old
        assert (tmp_path / f"{old}.closed").exists()  # it stopped accepting before the new one
        assert alive(old)  # still draining: the gate is shut
        assert wait_until(lambda: ask("127.0.0.1", _port(listener), 5) == ("answered", "two"), 30)
        assert child.pid == new
        (tmp_path / "gate").touch()
        assert wait_until(lambda: child.poll() is not None and not alive(old), 30)
        assert child.crashes == 0  # its exit was no crash
        assert child.pid == new
    finally:
        (tmp_path / "gate").touch()
        child.close()
    assert not alive(old)
    assert not alive(new)


def test_an_old_generation_that_never_ends_is_killed_after_its_grace(
    listener: Listener, tmp_path: Path
) -> None:
    child = _child(tmp_path, listener, ASYNCIO_SERVER, grace=1)
    try:
        old = child.start()
        assert wait_until(lambda: ask("127.0.0.1", _port(listener), 5) == ("answered", "one"), 30)
        new = child.restart()
        assert alive(old)
        assert wait_until(lambda: child.poll() is not None and not alive(old), 30)  # killed
        assert alive(new)
    finally:
        child.close()
    assert not alive(new)


def test_closing_ends_a_generation_still_draining(listener: Listener, tmp_path: Path) -> None:
    child = _child(tmp_path, listener, ASYNCIO_SERVER, grace=1)
    old = child.start()
    try:
        assert wait_until(lambda: ask("127.0.0.1", _port(listener), 5) == ("answered", "one"), 30)
        child.restart()
        assert alive(old)
    finally:
        child.close()
    assert not alive(old)


def test_a_server_not_seen_accepting_is_waited_for(listener: Listener, tmp_path: Path) -> None:
    """A blocking ``accept`` shows nothing in ``/proc``: the restart waits for its exit."""
    child = _child(tmp_path, listener, BLOCKING_SERVER, grace=10)
    try:
        old = child.start()
        assert wait_until(lambda: ask("127.0.0.1", _port(listener), 5) == ("answered", "one"), 30)
        child.restart()
        assert not alive(old)
    finally:
        child.close()


def test_accepting_reads_the_epoll_registrations() -> None:
    with socket.socket() as sock, selectors.EpollSelector() as epoll:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        inode = socket_inode(sock.fileno())
        assert not accepting([os.getpid()], inode)
        epoll.register(sock, selectors.EVENT_READ)
        assert accepting([os.getpid()], inode)
        epoll.unregister(sock)
        assert not accepting([os.getpid()], inode)
    assert not accepting([psutil.Process().pid + 10_000_000], inode)  # no such process
