"""The stacks of ``bench_restart.py``: each serves the tiny ASGI app with uvicorn on 127.0.0.1.

Each stack starts afresh in its own directory, returns from :meth:`Stack.start` once it serves the
old value, and stops by pid whatever it started. :func:`ask` is the client: one ``GET /`` on a new
connection, telling a refused connection from other failures.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

import _harness as h
import psutil

__all__ = [
    "OLD",
    "STACKS",
    "ChildStack",
    "ListenStack",
    "ReloadStack",
    "Stack",
    "SupervisordStack",
    "ask",
    "free_port",
    "write_app",
]

OLD = "old-value"

FASTAPI_APP = """\
import fastapi
import httpx
import pydantic
import sqlalchemy
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

VALUE = {value!r}


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Item(pydantic.BaseModel):
    id: int
    name: str


engine = sqlalchemy.create_engine("sqlite://")
Base.metadata.create_all(engine)
client = httpx.Client()
app = fastapi.FastAPI()


@app.get("/", response_class=PlainTextResponse)
def root() -> str:
    return VALUE


@app.post("/items")
def add(item: Item) -> Item:
    return item
"""
"""``--app fastapi``: the kind of app the issue measured (FastAPI + SQLAlchemy + pydantic + httpx:
a restart re-imports ~1 s of libraries)."""


def write_app(directory: Path, value: str, kind: str) -> Path:
    """``directory/app.py`` answering *value* on ``GET /`` (*kind*: ``tiny`` or ``fastapi``), with a
    timestamp pyc of it; returns the source."""
    if kind == "tiny":
        return h.write_app(directory, value)
    directory.mkdir(parents=True)
    source = directory / "app.py"
    source.write_text(FASTAPI_APP.format(value=value), encoding="utf-8")
    h.compile_pyc(source)
    return source


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(port: int) -> tuple[str, str | None]:
    """``GET http://127.0.0.1:port/`` on a new connection: ``("answered", body)``,
    ``("refused", None)`` (nothing listening: the kernel refused the connection), or
    ``("failed", None)`` (reset, timed out, not 200). Waits up to 10 s for an answer: a connection
    in the accept queue of a socket held across a restart is answered by the next generation."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read().decode()
    except ConnectionRefusedError:
        return "refused", None
    except (OSError, http.client.HTTPException):
        return "failed", None
    finally:
        conn.close()
    return ("answered", body) if resp.status == 200 else ("failed", None)


def fetch(port: int) -> str | None:
    """Body of ``GET http://127.0.0.1:port/`` or None (nothing listening, error, not 200)."""
    return ask(port)[1]


def wait_value(port: int, value: str, timeout: float) -> bool:
    """Whether the server answers *value* within *timeout* seconds (asked every 5 ms)."""
    deadline = time.time() + timeout
    while (answer := fetch(port)) != value and time.time() < deadline:
        time.sleep(0.005)
    return answer == value


def uvicorn_argv(port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
        "--lifespan", "off", "--log-level", "warning", *extra,
    ]  # fmt: skip


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(procs: list[psutil.Process]) -> None:
    """KILL whatever of *procs* is still running (psutil checks create_time: no pid reuse)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=10)


# --- stacks ----------------------------------------------------------------------------------------


class Stack(ABC):
    name: str

    def __init__(
        self,
        app: Path,
        port: int,
        env: dict[str, str],
        daemon_args: list[str],
        child_args: list[str] | None = None,
    ) -> None:
        """*daemon_args*: for every daemon; *child_args*: only for those with an own child."""
        self.app, self.port, self.env, self.daemon_args = app, port, env, daemon_args
        self.child_args = child_args or []
        self.tracked: list[psutil.Process] = []

    @abstractmethod
    def start(self) -> None:
        """Start everything; return once the old value is served."""

    @abstractmethod
    def stop_own(self) -> None:
        """Stop the processes started by :meth:`start`, politely."""

    def stop(self) -> None:
        """Stop politely, then KILL every process seen meanwhile, by pid."""
        for proc in list(self.tracked):
            self.tracked += descendants(proc.pid)
        try:
            self.stop_own()
        finally:
            kill_all(self.tracked)

    def track(self, pid: int) -> None:
        try:
            self.tracked.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            return

    def breakdown(self, t0: float) -> dict[str, float]:
        """Times (s after the edit) of the daemon's own events, where there is a daemon."""
        return {}

    def served(self, timeout: float = 30) -> None:
        if not wait_value(self.port, OLD, timeout):
            raise RuntimeError(f"{self.name}: port {self.port} never served {OLD!r}")


class DaemonStack(Stack):
    """Common part of the two cachewatchd stacks."""

    daemon: h.JsonProc | None = None

    def start_daemon(self, *args: str, child: list[str] | None = None) -> None:
        extra = [*self.daemon_args, *(self.child_args if child else []), *args]
        self.daemon = h.start_daemon(self.env, self.app, [self.app], *extra, child=child or [])
        self.track(self.daemon.pid)

    def stop_own(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def breakdown(self, t0: float) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.daemon is None:
            return out
        for name in ("invalidated", "restarted"):
            found = [e.ts - t0 for e in self.daemon.events(name) if e.ts >= t0]
            if found:
                out[name] = found[0]
        return out


class ChildStack(DaemonStack):
    name = "cachewatchd + child"

    def start(self) -> None:
        self.start_daemon(child=uvicorn_argv(self.port))
        self.served()


class ListenStack(DaemonStack):
    """The own child with ``--listen``: the daemon holds the port across restarts (uvicorn gets
    ``--fd N`` instead of its ``--host``/``--port``)."""

    name = "cachewatchd + child --listen"

    def start(self) -> None:
        self.start_daemon("--listen", f"127.0.0.1:{self.port}", child=uvicorn_argv(self.port))
        self.served()


class SupervisordStack(DaemonStack):
    name = "cachewatchd + supervisord"
    supervisord: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        base = self.app.parent
        sock = base / "s.sock"  # the temp dir's path is short: AF_UNIX allows 108 bytes
        program = " ".join(uvicorn_argv(self.port))
        conf = base / "supervisord.conf"
        conf.write_text(
            f"[unix_http_server]\nfile = {sock}\nchmod = 0700\n\n"
            f"[supervisord]\nnodaemon = true\nsilent = true\nloglevel = warn\n"
            f"logfile = {base}/supervisord.log\npidfile = {base}/supervisord.pid\n"
            f"childlogdir = {base}\n\n[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[program:web]\ncommand = {program}\ndirectory = {self.app}\n"
            "stopwaitsecs = 5\nstopasgroup = true\nkillasgroup = true\n"
            f"redirect_stderr = true\nstdout_logfile = {base}/web.log\n"
        )
        self.supervisord = subprocess.Popen(
            [sys.executable, "-B", "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.track(self.supervisord.pid)
        self.served()
        config = base / "cachewatchd.toml"
        config.write_text(
            f'[[process]]\nname = "web"\nsupervisor = {{ url = "unix://{sock}", program = "web" }}\n'
        )
        self.start_daemon("--config", str(config))

    def stop_own(self) -> None:
        try:
            super().stop_own()
        finally:
            if self.supervisord is not None and self.supervisord.poll() is None:
                self.supervisord.send_signal(signal.SIGTERM)
                self.supervisord.wait(30)


class ReloadStack(Stack):
    name = "uvicorn --reload"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = uvicorn_argv(self.port, "--reload")
        argv[argv.index("warning")] = "info"  # to see which reloader it uses
        with open(self.app.parent / "uvicorn.log", "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.app,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.track(self.proc.pid)
        self.served()

    def reloader(self) -> str:
        text = (self.app.parent / "uvicorn.log").read_text(errors="replace")
        return (
            "WatchFiles" if "WatchFiles" in text else "StatReload" if "StatReload" in text else "?"
        )

    def stop_own(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


STACKS: tuple[type[Stack], ...] = (ChildStack, ListenStack, SupervisordStack, ReloadStack)
