"""supervisord over XML-RPC: stdlib :mod:`xmlrpc.client` on a unix socket or http(s)://host:port.

A small transport keeps HTTP Basic auth on both. Every failure becomes one
:class:`SupervisorError` line (socket missing, connection refused, 401, bad program name...).
"""

from __future__ import annotations

import base64
import http.client
import urllib.parse
import xmlrpc.client
from typing import Any

from cachewatchd.errors import RuntimeFailure
from cachewatchd.processes.spec import SupervisorSpec
from cachewatchd.processes.unix_http import UnixHTTPConnection

__all__ = ["SupervisorClient", "SupervisorError"]

# supervisor.xmlrpc.Faults
_BAD_NAME = 10
_ALREADY_STARTED = 60
_NOT_RUNNING = 70


class SupervisorError(RuntimeFailure):
    """supervisord could not be reached or refused the request; the message is one line."""

    def __init__(self, message: str, *, fault_code: int | None = None) -> None:
        super().__init__(message)
        self.fault_code = fault_code


class _Transport(xmlrpc.client.Transport):
    """HTTP over a unix socket (``socket_path``) or TCP, with an ``Authorization: Basic`` header."""

    def __init__(
        self, *, socket_path: str | None, https: bool, auth: str | None, timeout: float
    ) -> None:
        super().__init__()
        self._socket_path = socket_path
        self._https = https
        self._auth = auth
        self._timeout = timeout

    def get_host_info(self, host: Any) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
        chost, headers, x509 = super().get_host_info(host)
        extra = list(headers or [])
        if self._auth is not None:
            token = base64.b64encode(self._auth.encode("utf-8")).decode("ascii")
            extra.append(("Authorization", f"Basic {token}"))
        return chost, extra, x509 or {}

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection[1] is not None and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, _ = self.get_host_info(host)
        conn: http.client.HTTPConnection
        if self._socket_path is not None:
            conn = UnixHTTPConnection(self._socket_path, self._timeout)
        elif self._https:
            conn = http.client.HTTPSConnection(chost, timeout=self._timeout)
        else:
            conn = http.client.HTTPConnection(chost, timeout=self._timeout)
        self._connection = host, conn
        return conn


class SupervisorClient:
    """Talk to one supervisord about one program (``name``, ``group:name`` or ``group:*``)."""

    def __init__(self, spec: SupervisorSpec, *, timeout: float = 60.0) -> None:
        self.spec = spec
        self.timeout = timeout
        url = spec.url
        self._socket_path: str | None = None
        if url.startswith("unix://"):
            self._socket_path = url.removeprefix("unix://")
            self._endpoint = "http://localhost/RPC2"
        else:
            parts = urllib.parse.urlsplit(url)
            self._endpoint = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/RPC2"
        self._https = url.startswith("https://")
        self._auth = None
        if spec.username is not None:
            self._auth = f"{spec.username}:{spec.password or ''}"

    # -- calls --------------------------------------------------------------------------------
    def call(self, method: str, *args: Any) -> Any:
        """Call ``supervisor.<method>(*args)``; every failure is a :class:`SupervisorError`."""
        transport = _Transport(
            socket_path=self._socket_path, https=self._https, auth=self._auth, timeout=self.timeout
        )
        where = f"supervisor at {self.spec.url}"
        try:
            with xmlrpc.client.ServerProxy(self._endpoint, transport=transport) as proxy:
                return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as fault:
            raise self._fault_error(fault, method, args) from None
        except xmlrpc.client.ProtocolError as exc:
            if exc.errcode == 401:
                msg = f"{where} refused the username/password (HTTP 401)"
            else:
                msg = f"{where} answered HTTP {exc.errcode} {exc.errmsg}"
            raise SupervisorError(msg) from None
        except FileNotFoundError:
            msg = f"supervisor socket {self._socket_path} does not exist (is supervisord running?)"
            raise SupervisorError(msg) from None
        except ConnectionRefusedError:
            raise SupervisorError(
                f"{where}: connection refused (is supervisord running?)"
            ) from None
        except TimeoutError:
            msg = f"{where} did not answer {method} within {self.timeout:g}s"
            raise SupervisorError(msg) from None
        except (OSError, http.client.HTTPException, xmlrpc.client.Error) as exc:
            raise SupervisorError(f"{where}: {type(exc).__name__}: {exc}") from None

    def _fault_error(
        self, fault: xmlrpc.client.Fault, method: str, args: tuple[Any, ...]
    ) -> SupervisorError:
        if fault.faultCode == _BAD_NAME:
            return SupervisorError(
                f"supervisor at {self.spec.url} has no program {self.spec.program!r}",
                fault_code=fault.faultCode,
            )
        shown = ", ".join(repr(a) for a in args)
        return SupervisorError(
            f"supervisor {method}({shown}) failed: {fault.faultString}", fault_code=fault.faultCode
        )

    # -- operations ---------------------------------------------------------------------------
    def restart(self) -> list[int]:
        """``stopProcess`` (waiting until stopped), then ``startProcess`` without waiting for
        supervisord's ``startsecs``: return the new pids at once, so that the caller judges when
        the new server is up (:mod:`cachewatchd.processes.ready`), neither earlier nor later.
        Raises :class:`SupervisorError` when supervisord started no process."""
        program = self.spec.program
        try:
            self.call("stopProcess", program, True)
        except SupervisorError as exc:
            if exc.fault_code != _NOT_RUNNING:
                raise
        try:
            self.call("startProcess", program, False)
        except SupervisorError as exc:
            if exc.fault_code != _ALREADY_STARTED:
                raise
        infos = self.infos()
        pids = [int(i["pid"]) for i in infos if int(i.get("pid") or 0) > 0]
        if not pids:
            states = ", ".join(
                f"{i.get('name')} {i.get('statename')}"
                + (f" ({i['spawnerr']})" if i.get("spawnerr") else "")
                for i in infos
            )
            raise SupervisorError(f"supervisor started no process for {program!r}: {states}")
        return pids

    def signal(self, signame: str) -> None:
        """``signalProcess(program, signame)``."""
        self.call("signalProcess", self.spec.program, signame.upper().removeprefix("SIG"))

    def infos(self) -> list[dict[str, Any]]:
        """``getProcessInfo`` of the program, or every process of ``group:*``."""
        group, _, name = self.spec.program.partition(":")
        if name == "*":
            every: list[dict[str, Any]] = self.call("getAllProcessInfo")
            return [info for info in every if info.get("group") == group]
        info: dict[str, Any] = self.call("getProcessInfo", self.spec.program)
        return [info]

    def pids(self) -> list[int]:
        """Pids of the program's running processes."""
        return [int(i["pid"]) for i in self.infos() if int(i.get("pid") or 0) > 0]
