"""A tiny fake of the Docker Engine API: real HTTP over a real unix socket, served by a thread.

For the fast unit tests of :mod:`cachewatchd.processes.docker_api` and the Docker target; the
real dockerd is ``tests/support/dockerd.py``. It knows the endpoints cachewatchd uses, keeps its
containers in :attr:`FakeDocker.containers`, records every request, and can misbehave on purpose
(:attr:`FakeDocker.hostile`: a huge answer, a trickle, no JSON...).
"""

from __future__ import annotations

import http.server
import json
import socketserver
import struct
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["FakeContainer", "FakeDocker", "fake_docker"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


@dataclass
class FakeContainer:
    id: str
    name: str
    state: str = "running"
    started_at: str = field(default_factory=_now)
    """Docker's format (nanoseconds, ``Z``); by default the moment the container is made."""
    pid: int = 0
    binds: list[tuple[str, str]] = field(default_factory=list)
    """(host source, destination) of each bind mount."""
    labels: dict[str, str] = field(default_factory=dict)
    stop_timeout: int | None = None
    exit_code: int = 0
    created: int = 0

    def inspect(self) -> dict[str, Any]:
        mounts = [
            {"Type": "bind", "Source": src, "Destination": dst, "Mode": "", "RW": True}
            for src, dst in self.binds
        ]
        mounts.append({"Type": "volume", "Name": "v", "Source": "/var/lib/docker/volumes/v",
                       "Destination": "/data"})  # fmt: skip
        config: dict[str, Any] = {"Labels": self.labels, "Image": "fake"}
        if self.stop_timeout is not None:
            config["StopTimeout"] = self.stop_timeout
        return {
            "Id": self.id,
            "Name": f"/{self.name}",
            "State": {
                "Status": self.state,
                "Running": self.state == "running",
                "Pid": self.pid if self.state == "running" else 0,
                "ExitCode": self.exit_code,
                "StartedAt": self.started_at,
            },
            "Config": config,
            "Mounts": mounts,
        }


class FakeDocker:
    """The state and the request log of one fake dockerd."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.containers: dict[str, FakeContainer] = {}
        self.requests: list[tuple[str, str]] = []
        self.hostile: str | None = None
        """``"huge"``, ``"trickle"``, ``"garbage"``, ``"error"`` or ``None``."""
        self.on_restart: Callable[[FakeContainer, str], None] | None = None
        """Called with the container and the query (``t=5``) of each restart."""
        self.exec_result: tuple[int, bytes, bytes] = (0, b"", b"")
        """(exit code, stdout, stderr) of every exec."""
        self.execs: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def add(self, container: FakeContainer) -> FakeContainer:
        self.containers[container.id] = container
        return container

    def find(self, ref: str) -> FakeContainer | None:
        for container in self.containers.values():
            if ref in (container.name, container.id) or (
                len(ref) >= 4 and container.id.startswith(ref)
            ):
                return container
        return None

    def paths(self) -> list[str]:
        with self.lock:
            return [path for _, path in self.requests]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: object, *, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        fake = self.server.fake
        parts = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with fake.lock:
            fake.requests.append((method, self.path))
        if fake.hostile is not None and parts.path != "/_ping":
            self._misbehave(fake.hostile)
            return
        query = urllib.parse.parse_qs(parts.query)
        words = parts.path.strip("/").split("/")
        if parts.path == "/_ping":
            self._send(200, None, raw=b"OK")
        elif method == "GET" and parts.path == "/containers/json":
            self._list(query)
        elif words[0] == "containers" and len(words) == 3:
            self._container(method, words[1], words[2], parts.query, body)
        elif words[0] == "exec" and len(words) == 3:
            self._exec(words[2])
        else:
            self._send(404, {"message": f"page not found: {parts.path}"})

    def _list(self, query: dict[str, list[str]]) -> None:
        fake = self.server.fake
        filters = json.loads(query.get("filters", ["{}"])[0])
        wanted = dict(label.split("=", 1) for label in filters.get("label", []))
        every = query.get("all", ["0"])[0] == "1"
        found = [
            {"Id": c.id, "Names": [f"/{c.name}"], "Created": c.created, "State": c.state}
            for c in fake.containers.values()
            if all(c.labels.get(k) == v for k, v in wanted.items())
            and (every or c.state == "running")
        ]
        self._send(200, found)

    def _container(self, method: str, ref: str, verb: str, query: str, body: Any) -> None:
        fake = self.server.fake
        container = fake.find(urllib.parse.unquote(ref))
        if container is None:
            self._send(404, {"message": f"No such container: {urllib.parse.unquote(ref)}"})
            return
        if method == "GET" and verb == "json":
            self._send(200, container.inspect())
        elif method == "POST" and verb == "restart":
            if fake.on_restart is not None:
                fake.on_restart(container, query)
            self._send(204, None, raw=b"")
        elif method == "POST" and verb == "kill":
            if container.state != "running":
                self._send(409, {"message": f"Container {container.id} is not running"})
            else:
                self._send(204, None, raw=b"")
        elif method == "POST" and verb == "exec":
            fake.execs.append(body)
            self._send(201, {"Id": f"e{len(fake.execs)}"})
        else:
            self._send(404, {"message": "page not found"})

    def _exec(self, verb: str) -> None:
        code, out, err = self.server.fake.exec_result
        if verb == "json":
            self._send(200, {"Running": False, "ExitCode": code})
            return
        stream = b""
        for kind, data in ((1, out), (2, err)):
            if data:
                stream += struct.pack(">BxxxI", kind, len(data)) + data
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.raw-stream")
        self.end_headers()
        self.wfile.write(stream)
        self.close_connection = True

    def _misbehave(self, how: str) -> None:
        if how == "huge":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            chunk = b" " * 65536
            try:
                for _ in range(200):  # 13 MB, unless the client hangs up first
                    self.wfile.write(chunk)
            except OSError:
                pass
            self.close_connection = True
        elif how == "trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                if self.server.fake.stop.wait(0.05):
                    return
        elif how == "garbage":
            self._send(200, None, raw=b"<html>not docker</html>")
        else:
            self._send(500, {"message": "driver failed\nprogramming external connectivity"})


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = False  # joined by server_close: no thread outlives the block
    block_on_close = True
    fake: FakeDocker


@contextmanager
def fake_docker(tmp_path: Path) -> Iterator[FakeDocker]:
    """A fake dockerd on ``tmp_path/docker.sock`` for the duration of the block."""
    path = tmp_path / "docker.sock"
    fake = FakeDocker(path)
    server = _Server(str(path), _Handler)
    server.fake = fake
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="fake-dockerd", daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        fake.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()
