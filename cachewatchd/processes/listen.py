"""The listening socket the daemon holds for its own child across restarts (``--listen``).

The daemon binds the address once (``SO_REUSEADDR``, a deep backlog) and hands the same socket to
each generation of the server (:mod:`cachewatchd.processes.handover`): while one generation stops
and the next imports, connections wait in the kernel's accept queue instead of being refused. The
socket is closed, and a unix socket's file removed, when the daemon stops.

The CLI binds before the daemon starts (:func:`held` keeps it for the daemon's lifetime, across
config reloads that rebuild the own child's target); a target that finds no held socket for its
address binds one of its own (:meth:`Listener.bind`), for as long as it runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cachewatchd.errors import RuntimeFailure

__all__ = [
    "BACKLOG",
    "Address",
    "ListenError",
    "Listener",
    "address_problem",
    "held",
    "holding",
    "parse_address",
    "release_held",
]

BACKLOG = 2048
"""Connections the kernel queues while no generation accepts (capped by ``net.core.somaxconn``)."""

_held: dict[str, Listener] = {}
_held_lock = threading.Lock()


class ListenError(RuntimeFailure):
    """The address cannot be listened on (in use, not ours, no permission); one line, exit 3."""


@dataclass(frozen=True)
class Address:
    """``HOST:PORT`` (``[::1]:8000``; a bare ``PORT`` is ``127.0.0.1:PORT``) or ``unix:PATH``."""

    host: str = ""
    port: int = 0
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def address_problem(text: str) -> str | None:
    """Why *text* is not an address for ``--listen`` / ``listen``, or ``None``."""
    try:
        parse_address(text)
    except ValueError as exc:
        return str(exc)
    return None


def parse_address(text: str) -> Address:
    """*text* as an :class:`Address`; ``ValueError`` with the reason. A relative unix path is
    taken from the current directory."""
    if not text.strip() or "\0" in text:
        raise ValueError("must be HOST:PORT or unix:PATH, not an empty value")
    if text.startswith("unix:"):
        path = text.removeprefix("unix:").removeprefix("//")
        if not path:
            raise ValueError("unix: needs a path, e.g. unix:/tmp/app.sock")
        return Address(path=Path(os.path.abspath(path)))
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or (":" in host and not text.startswith("[")):
        raise ValueError(f"must be HOST:PORT (an IPv6 host in brackets: [::1]:8000), not {text!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, not {port_text!r}")
    return Address(host=host, port=int(port_text))


class Listener:
    """A bound, listening socket; :meth:`close` releases the address. Thread-safe."""

    def __init__(
        self, address: Address, sock: socket.socket, inode: tuple[int, int] | None
    ) -> None:
        self.address = address
        self._sock: socket.socket | None = sock
        self._inode = inode
        self._lock = threading.Lock()
        self.name = str(address) if address.path is not None else _bound_name(sock, address)
        """Where it listens, the real port when the address asked for port 0."""

    @classmethod
    def bind(cls, address: Address, backlog: int = BACKLOG) -> Listener:
        """Bind and listen; :class:`ListenError` with one line when it cannot."""
        if address.path is not None:
            return cls._bind_unix(address, backlog)
        try:
            infos = socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise ListenError(f"cannot listen on {address}: unknown host ({exc})") from None
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise ListenError(_refusal(address, exc)) from None
        return cls(address, sock, None)

    @classmethod
    def _bind_unix(cls, address: Address, backlog: int) -> Listener:
        path = address.path
        assert path is not None
        _remove_stale(address, path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(backlog)
            st = path.lstat()
        except OSError as exc:
            sock.close()
            raise ListenError(_refusal(address, exc)) from None
        return cls(address, sock, (st.st_dev, st.st_ino))

    def fileno(self) -> int:
        """The socket's descriptor; :class:`ListenError` once closed."""
        with self._lock:
            if self._sock is None:
                raise ListenError(f"the socket of {self.address} is closed")
            return self._sock.fileno()

    def prepare(self) -> int:
        """Before a generation starts: back to blocking mode (servers set ``O_NONBLOCK`` on the
        shared socket, a server written for systemd may expect the default), and its descriptor."""
        with self._lock:
            if self._sock is None:
                raise ListenError(f"the socket of {self.address} is closed")
            self._sock.setblocking(True)
            return self._sock.fileno()

    def pending(self) -> int | None:
        """Connections waiting in the accept queue (Linux ``TCP_INFO``), or ``None`` when unknown."""
        option = getattr(socket, "TCP_INFO", None)
        if option is None or not sys.platform.startswith("linux"):  # macOS: another struct
            return None
        with self._lock:
            sock = self._sock
            if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
            except OSError:
                return None
        # struct tcp_info: 8 bytes of u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked:
        # for a listening socket tcpi_unacked is the accept queue's length.
        return int.from_bytes(info[24:28], sys.byteorder) if len(info) >= 28 else None

    def close(self) -> None:
        """Close the socket (the address is free again) and remove a unix socket's file, if it
        is still the one bound here. Idempotent."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        path = self.address.path
        if path is not None and self._inode is not None:
            with contextlib.suppress(OSError):
                st = path.lstat()
                if (st.st_dev, st.st_ino) == self._inode:
                    path.unlink()

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._sock is None


@contextlib.contextmanager
def holding(address: Address | None) -> Iterator[Listener | None]:
    """Bind *address* (nothing when ``None``) and keep it for :func:`held` until the block ends;
    then close it. :class:`ListenError` when it cannot be bound."""
    if address is None:
        yield None
        return
    listener = Listener.bind(address)
    with _held_lock:
        _held[str(address)] = listener
    try:
        yield listener
    finally:
        with _held_lock:
            if _held.get(str(address)) is listener:
                del _held[str(address)]
        listener.close()


def held(address: Address) -> Listener | None:
    """The socket :func:`holding` keeps for *address*, or ``None``."""
    with _held_lock:
        listener = _held.get(str(address))
    return listener if listener is not None and not listener.closed else None


def release_held() -> None:
    """Close the sockets :func:`holding` keeps (a reload moved the own child to another address:
    the old one is free again at once, not when the daemon stops)."""
    with _held_lock:
        listeners = list(_held.values())
        _held.clear()
    for listener in listeners:
        listener.close()


def _bound_name(sock: socket.socket, address: Address) -> str:
    try:
        port = int(sock.getsockname()[1])
    except (OSError, IndexError, TypeError, ValueError):
        return str(address)
    return str(Address(address.host, port))


def _remove_stale(address: Address, path: Path) -> None:
    """A socket file nobody answers on is left over from a crash: remove it. Anything else at
    *path* (a live socket, a file) is a :class:`ListenError`."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(_refusal(address, exc)) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"cannot listen on {address}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError as exc:
        raise ListenError(_refusal(address, exc)) from None
    finally:
        probe.close()
    raise ListenError(_refusal(address, OSError(errno.EADDRINUSE, "in use")))


def _refusal(address: Address, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {address}: the address is already in use (another server runs "
            "there: stop it, or choose another --listen)"
        )
    if exc.errno == errno.EACCES:
        why = "permission denied" + (" (ports below 1024 need privileges)" if address.port else "")
        return f"cannot listen on {address}: {why}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {address}: no such address on this machine"
    return f"cannot listen on {address}: {exc.strerror or exc}"
