"""A small Docker Engine API client: HTTP/1.1 over dockerd's unix socket, a handful of endpoints.

Only what a Docker target needs (:mod:`cachewatchd.processes.docker_target`): ``/_ping``, the
containers of a compose service (``GET /containers/json`` filtered by label), one container's
state, start time, main pid and mounts (``GET /containers/{id}/json``), ``restart``, ``kill``
(a signal) and ``exec`` (a command run inside the container, for the import gate). No Docker SDK.

The socket: the ``host`` the user gave, else ``$DOCKER_HOST``, else ``/var/run/docker.sock``,
else rootless Docker's ``$XDG_RUNTIME_DIR/docker.sock``. Only ``unix://`` is spoken.

dockerd is trusted no more than any other input: every answer is read within a size limit and a
deadline, and every failure is one :class:`DockerError` line.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import struct
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from cachewatchd.processes.docker_model import (
    MESSAGE_LIMIT,
    Container,
    DockerError,
    Mount,
    parse_time,
)
from cachewatchd.processes.unix_http import UnixHTTPConnection

__all__ = [
    "DEFAULT_SOCKET",
    "Container",
    "DockerClient",
    "DockerError",
    "DockerNotFound",
    "Mount",
    "parse_time",
    "socket_path",
]

DEFAULT_SOCKET = "/var/run/docker.sock"
ANSWER_LIMIT = 4 << 20
"""Bytes an answer may hold (a container's inspect is a few kB; a list of many, a few 100 kB)."""
OUTPUT_LIMIT = 64 << 10
"""Bytes of a command's output kept from ``exec`` (the rest is not read)."""


class DockerNotFound(DockerError):
    """dockerd answered 404: no such container (or exec)."""


def socket_path(host: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The unix socket to talk to: *host* (``unix:///path``), else ``$DOCKER_HOST``, else the
    default socket, else rootless Docker's, else the default (for the error message)."""
    env = os.environ if environ is None else environ
    given = host or env.get("DOCKER_HOST") or None
    if given is not None:
        where = "host" if host else "DOCKER_HOST"
        if not given.startswith("unix://"):
            raise DockerError(
                f"{where}={given}: cachewatchd talks to Docker only over a unix socket "
                "(unix:///var/run/docker.sock)"
            )
        path = given.removeprefix("unix://")
        if not path.startswith("/"):
            raise DockerError(f"{where}={given}: needs an absolute socket path: unix:///path")
        return path
    if os.path.exists(DEFAULT_SOCKET):
        return DEFAULT_SOCKET
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        rootless = os.path.join(runtime, "docker.sock")
        if os.path.exists(rootless):
            return rootless
    return DEFAULT_SOCKET


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 3] + "..."


class DockerClient:
    """Talks to one dockerd. Each request opens its own connection; nothing is shared between
    threads."""

    def __init__(
        self,
        host: str | None = None,
        *,
        timeout: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.path = socket_path(host, environ)
        self.timeout = timeout

    # -- transport ----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        timeout: float | None = None,
        limit: int = ANSWER_LIMIT,
    ) -> tuple[int, bytes]:
        """One request; the status and at most *limit* bytes of the answer (more is an error).
        The whole exchange must end within *timeout* seconds (default: the client's)."""
        wait = self.timeout if timeout is None else timeout
        what = f"{method} {path.partition('?')[0]}"
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn = UnixHTTPConnection(self.path, wait)
        try:
            conn.request(method, path, body=payload, headers=headers)
            deadline = time.monotonic() + wait
            response = conn.getresponse()
            return response.status, _read(response, limit, deadline)
        except _TooLarge:
            raise DockerError(f"Docker's answer to {what} is larger than {limit} bytes") from None
        except FileNotFoundError:
            raise DockerError(
                f"Docker socket {self.path} does not exist (is dockerd running? "
                "set DOCKER_HOST=unix:///path/docker.sock)"
            ) from None
        except PermissionError:
            raise DockerError(
                f"cannot connect to the Docker socket {self.path}: permission denied "
                "(is this user in the docker group?)"
            ) from None
        except ConnectionRefusedError:
            raise DockerError(
                f"Docker socket {self.path}: connection refused (is dockerd running?)"
            ) from None
        except TimeoutError:
            raise DockerError(f"Docker did not answer {what} within {wait:g}s") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            name = type(exc).__name__
            raise DockerError(f"Docker at {self.path}: {what}: {name}: {exc}") from None
        finally:
            conn.close()

    def call(
        self, method: str, path: str, body: object = None, *, timeout: float | None = None
    ) -> Any:
        """A request whose answer is JSON (or empty); an HTTP error is a :class:`DockerError`
        with Docker's own message (:class:`DockerNotFound` for a 404)."""
        status, data = self.request(method, path, body, timeout=timeout)
        what = f"{method} {path.partition('?')[0]}"
        parsed: Any = None
        if data.strip():
            try:
                parsed = json.loads(data)
            except (ValueError, RecursionError):
                if status < 300:
                    raise DockerError(f"Docker answered {what} with something not JSON") from None
                parsed = {"message": data.decode("utf-8", "replace")}
        if status >= 300:
            message = parsed.get("message") if isinstance(parsed, dict) else None
            text = _one_line(message) if isinstance(message, str) else f"HTTP {status}"
            error = DockerNotFound if status == 404 else DockerError
            raise error(f"Docker refused {what}: {text}")
        return parsed

    # -- endpoints ----------------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /_ping``: raises :class:`DockerError` unless dockerd answers OK."""
        status, _ = self.request("GET", "/_ping", limit=1024)
        if status != 200:
            raise DockerError(f"Docker at {self.path} answered /_ping with HTTP {status}")

    def container(self, ref: str) -> Container:
        """``GET /containers/{ref}/json``: a container by name or id."""
        quoted = urllib.parse.quote(ref, safe="")
        return Container.from_json(self.call("GET", f"/containers/{quoted}/json"))

    def container_ids(self, labels: Mapping[str, str], *, running: bool = False) -> list[str]:
        """``GET /containers/json``: the ids of the containers carrying every one of *labels*
        (all of them, or the running ones), oldest first."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        query = urllib.parse.urlencode({"all": "0" if running else "1", "filters": filters})
        found = self.call("GET", f"/containers/json?{query}")
        if not isinstance(found, list):
            raise DockerError("Docker answered GET /containers/json with something not a list")
        ids = [
            (created if type(created := c.get("Created")) is int else 0, c["Id"])
            for c in found
            if isinstance(c, dict) and isinstance(c.get("Id"), str)
        ]
        return [ident for _, ident in sorted(ids)]

    def restart(self, ident: str, stop_timeout: float | None, *, timeout: float) -> None:
        """``POST /containers/{id}/restart``: stop (``t`` seconds before SIGKILL; ``None``: the
        container's own stop timeout) and start again; returns once it started."""
        query = "" if stop_timeout is None else f"?t={math.ceil(stop_timeout)}"
        self.call(
            "POST", f"/containers/{urllib.parse.quote(ident)}/restart{query}", timeout=timeout
        )

    def kill(self, ident: str, signame: str) -> None:
        """``POST /containers/{id}/kill?signal=NAME``: a signal to the container's main process."""
        name = urllib.parse.quote(signame.upper().removeprefix("SIG"))
        self.call("POST", f"/containers/{urllib.parse.quote(ident)}/kill?signal={name}")

    def exec_run(
        self,
        ident: str,
        argv: Sequence[str],
        *,
        workdir: str | None = None,
        env: Sequence[str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, bytes]:
        """Run *argv* inside the running container; its exit code and (at most
        :data:`OUTPUT_LIMIT` bytes of) its stdout and stderr, merged."""
        config: dict[str, Any] = {"Cmd": list(argv), "AttachStdout": True, "AttachStderr": True}
        if workdir:
            config["WorkingDir"] = workdir
        if env is not None:
            config["Env"] = list(env)
        created = self.call("POST", f"/containers/{urllib.parse.quote(ident)}/exec", config)
        exec_id = created.get("Id") if isinstance(created, dict) else None
        if not isinstance(exec_id, str) or not exec_id.isalnum():
            raise DockerError("Docker answered POST /containers/{id}/exec without an exec Id")
        deadline = time.monotonic() + timeout
        output = self._exec_output(exec_id, timeout)
        pause = threading.Event()
        while True:
            info = self.call("GET", f"/exec/{exec_id}/json")
            if not isinstance(info, dict):
                raise DockerError(
                    "Docker answered GET /exec/{id}/json with something not an object"
                )
            if not info.get("Running") and type(info.get("ExitCode")) is int:
                return info["ExitCode"], output
            if time.monotonic() >= deadline:
                raise DockerError(f"{argv[0]} did not finish within {timeout:g}s in the container")
            pause.wait(0.02)

    def _exec_output(self, exec_id: str, timeout: float) -> bytes:
        """``POST /exec/{id}/start``: the command's multiplexed output until it ends."""
        status, raw = self.request(
            "POST",
            f"/exec/{exec_id}/start",
            {"Detach": False, "Tty": False},
            timeout=timeout,
            limit=-1,
        )
        if status >= 300:
            text = _one_line(raw.decode("utf-8", "replace"))
            raise DockerError(f"Docker refused POST /exec/{{id}}/start: HTTP {status} {text}")
        return demultiplex(raw)


def demultiplex(raw: bytes) -> bytes:
    """The payload of Docker's multiplexed stream (8-byte frame headers: stream, 0, 0, 0, size),
    stdout and stderr in order; a truncated last frame gives what it has."""
    out = bytearray()
    at = 0
    while at + 8 <= len(raw) and raw[at] in (0, 1, 2) and raw[at + 1 : at + 4] == b"\0\0\0":
        (size,) = struct.unpack(">I", raw[at + 4 : at + 8])
        out += raw[at + 8 : at + 8 + size]
        at += 8 + size
    if at == 0 and raw:  # not multiplexed (a TTY exec): the bytes as they are
        return raw[:OUTPUT_LIMIT]
    return bytes(out[:OUTPUT_LIMIT])


class _TooLarge(Exception):
    pass


def _read(response: http.client.HTTPResponse, limit: int, deadline: float) -> bytes:
    """At most *limit* bytes of *response*, read before *deadline* (``-1``: keep the first
    :data:`OUTPUT_LIMIT` bytes and a little for the frame headers, and leave the rest unread)."""
    cap = OUTPUT_LIMIT + 4096 if limit < 0 else limit
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() >= deadline:
            raise TimeoutError
        chunk = response.read1(min(65536, cap + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            if limit < 0:
                return b"".join(chunks)[:cap]
            raise _TooLarge
