"""HTTP over a unix socket: :class:`http.client.HTTPConnection` connecting to a socket file, for
the two local APIs the daemon talks to (supervisord's XML-RPC, the Docker Engine API)."""

from __future__ import annotations

import http.client
import socket

__all__ = ["UnixHTTPConnection"]


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to the unix socket at *path*; *timeout* bounds connect and each read."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
