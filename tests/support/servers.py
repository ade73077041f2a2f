"""Real servers for the process tests: free ports, tiny app modules, start and stop by pid.

Every process a test starts, and every process cachewatchd relaunches for it (those are not our
children: they are detached), is registered with a :class:`Reaper` that stops it by pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from cachewatchd.processes.spec import SupervisorSpec
from cachewatchd.processes.supervisord import SupervisorClient, SupervisorError
from tests.conftest import child_env
from tests.support.pycs import restore_mtime_edit
from tests.support.wait import wait_until

__all__ = [
    "PASSWORD",
    "USER",
    "Reaper",
    "Supervisord",
    "app_body",
    "assert_one_line_faults",
    "events",
    "fetch",
    "free_port",
    "gunicorn_command",
    "set_value",
    "uvicorn_command",
    "wait_event",
    "wait_value",
    "write_asgi_app",
    "write_wsgi_app",
]

_ASGI = """\
{imports}VALUE = {value!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 500 if scope["path"] == "/fail" else 200
    body = ({body}).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({{"type": "http.response.start", "status": status, "headers": headers}})
    await send({{"type": "http.response.body", "body": body}})
"""

_WSGI = """\
VALUE = {value!r}


def app(environ, start_response):
    body = VALUE.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_asgi_app(
    directory: Path, value: str, name: str = "app", parts: Sequence[str] = ()
) -> Path:
    """``<directory>/<name>.py``: the one ASGI app of the tests. It answers ``VALUE`` (plus ``|``
    and the ``PART`` of each module in *parts*, which it imports) on every path, HTTP 500 on
    ``/fail``."""
    directory.mkdir(parents=True, exist_ok=True)
    imports = "".join(f"import {part}\n" for part in parts) + ("\n" if parts else "")
    body = "VALUE"
    if parts:
        body += ' + "|" + ' + " + ".join(f"{part}.PART" for part in parts)
    path = directory / f"{name}.py"
    path.write_text(_ASGI.format(imports=imports, value=value, body=body), encoding="utf-8")
    return path


def app_body(value: str, parts: Sequence[str] = ()) -> str:
    """What :func:`write_asgi_app`'s app answers when its parts hold *parts*."""
    return value + ("|" + "".join(parts) if parts else "")


def write_wsgi_app(directory: Path, value: str, name: str = "wsgiapp") -> Path:
    """``<directory>/<name>.py``: a WSGI app answering ``VALUE``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(_WSGI.format(value=value), encoding="utf-8")
    return path


def set_value(path: Path, old: str, new: str, *, keep_mtime: bool = False) -> None:
    """Replace ``VALUE = old`` by ``VALUE = new`` in *path*; restore the mtime (in ns) if asked."""
    text = path.read_text(encoding="utf-8")
    assert repr(old) in text
    new_text = text.replace(repr(old), repr(new))
    if keep_mtime:
        restore_mtime_edit(path, new_text)
    else:
        path.write_text(new_text, encoding="utf-8")


def fetch(port: int, path: str = "/") -> str | None:
    """Body of ``GET http://127.0.0.1:port/path``, or ``None`` when nothing answers 200."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            body: bytes = resp.read()
            return body.decode()
    except urllib.error.HTTPError as exc:
        exc.close()
        return None
    except (OSError, ValueError):
        return None


def wait_value(port: int, value: str, timeout: float = 30.0) -> None:
    """Wait until the server on *port* answers *value*."""
    last: list[str | None] = [None]

    def answers() -> bool:
        last[0] = fetch(port)
        return last[0] == value

    if not wait_until(answers, timeout, raise_on_timeout=False):
        raise AssertionError(f"port {port} answered {last[0]!r}, expected {value!r}")


def uvicorn_command(port: int, *extra: str, module: str = "app") -> list[str]:
    """``python -m uvicorn module:app`` on 127.0.0.1:port (run it with cwd = the app dir)."""
    return [
        sys.executable, "-m", "uvicorn", f"{module}:app", "--host", "127.0.0.1",
        "--port", str(port), "--lifespan", "off", "--log-level", "warning", *extra,
    ]  # fmt: skip


def gunicorn_command(port: int, workers: int = 2, module: str = "wsgiapp") -> list[str]:
    """A gunicorn master (sync workers, no preload) on 127.0.0.1:port."""
    return [
        sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
        "--graceful-timeout", "5", "--log-level", "warning", f"{module}:app",
    ]  # fmt: skip


class Reaper:
    """Stops, by pid, every process a test started or that cachewatchd relaunched for it."""

    def __init__(self) -> None:
        self._popens: list[subprocess.Popen[bytes]] = []
        self._procs: list[psutil.Process] = []

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start *argv* as our child in a new session (its own process group)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(argv, **kwargs)
        self._popens.append(proc)
        self.track(proc.pid)
        return proc

    def track(self, pid: int) -> None:
        """Remember *pid* (identity includes its create_time, so a reused pid is never hit)."""
        try:
            self._procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass

    def stop_all(self) -> None:
        for proc in self._procs:
            _kill_tree(proc)
        for popen in self._popens:
            popen.wait(timeout=10)
        self._popens.clear()
        self._procs.clear()

    def __enter__(self) -> Reaper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_tree(proc: psutil.Process) -> None:
    """KILL the process, its group when it leads one, and its descendants; wait until gone."""
    try:
        if not proc.is_running():
            return
        tree = [proc, *proc.children(recursive=True)]
        leader = os.getpgid(proc.pid) == proc.pid and proc.pid != os.getpgrp()
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    if leader:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    wait_until(lambda: all(_gone(p) for p in tree), 10, message=f"pid {proc.pid} to exit")


Logs = Sequence[MutableMapping[str, Any]]


def events(logs: Logs, name: str) -> list[MutableMapping[str, Any]]:
    """The captured structlog entries named *name*."""
    return [e for e in logs if e["event"] == name]


def wait_event(logs: Logs, name: str, count: int = 1, timeout: float = 30) -> Mapping[str, Any]:
    """Wait for the *count*-th *name* event (logged from a worker thread) and return it."""
    wait_until(lambda: len(events(logs, name)) >= count, timeout, message=f"{count}x {name!r}")
    return events(logs, name)[count - 1]


def assert_one_line_faults(logs: Logs) -> None:
    """No captured entry carries a traceback."""
    for entry in logs:
        assert "exc_info" not in entry, entry
        assert "exception" not in entry, entry
        assert "Traceback" not in str(entry.get("error", "")), entry


USER, PASSWORD = "watcher", "s3cret:with@odd chars"


class Supervisord:
    """A supervisord started for one test, listening on a unix socket and on 127.0.0.1."""

    def __init__(self, base: Path, programs: Mapping[str, str], reaper: Reaper) -> None:
        # AF_UNIX paths are short (108 bytes): keep the socket out of pytest's long tmp paths.
        self._sockdir = Path(tempfile.mkdtemp(prefix="cw-sv-", dir="/tmp"))
        self.socket = self._sockdir / "s.sock"
        self.http_port = free_port()
        conf = base / "supervisord.conf"
        conf.write_text(self._config(base, programs), encoding="utf-8")
        self.process = reaper.popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
            env=child_env(),  # programs may write pycs, as they would in production
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 30, message="supervisord XML-RPC")

    def _config(self, base: Path, programs: Mapping[str, str]) -> str:
        auth = f"username = {USER}\npassword = {PASSWORD}\n"
        text = (
            f"[unix_http_server]\nfile = {self.socket}\nchmod = 0700\n{auth}\n"
            f"[inet_http_server]\nport = 127.0.0.1:{self.http_port}\n{auth}\n"
            f"[supervisord]\nnodaemon = true\nsilent = true\nloglevel = warn\n"
            f"logfile = {base}/supervisord.log\npidfile = {base}/supervisord.pid\n"
            f"childlogdir = {base}\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        )
        for name, body in programs.items():
            text += f"\n[program:{name}]\n{body}\nstartsecs = 0\nstartretries = 0\n"
            text += "stopwaitsecs = 5\nstopasgroup = true\nkillasgroup = true\n"
            text += f"redirect_stderr = true\nstdout_logfile = {base}/{name}.log\n"
        return text

    def spec(self, program: str, *, password: str = PASSWORD, http: bool = False) -> SupervisorSpec:
        url = f"http://127.0.0.1:{self.http_port}" if http else f"unix://{self.socket}"
        return SupervisorSpec(url=url, program=program, username=USER, password=password)

    def table(self, program: str) -> dict[str, str]:
        """The ``supervisor = {...}`` inline table of a ``[[process]]`` in a config file."""
        return {
            "url": f"unix://{self.socket}",
            "program": program,
            "username": USER,
            "password": PASSWORD,
        }

    def pids(self, program: str) -> list[int]:
        return SupervisorClient(self.spec(program), timeout=10).pids()

    def _answers(self) -> bool:
        try:
            state = SupervisorClient(self.spec("x"), timeout=2).call("getState")
        except SupervisorError:
            return False
        return bool(state["statename"] == "RUNNING")

    def stop(self) -> None:
        """TERM supervisord: it stops its programs, then exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.socket.unlink(missing_ok=True)
        self._sockdir.rmdir()
