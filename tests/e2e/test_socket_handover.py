"""``--listen``: the daemon holds the listening socket across restarts of its own child.

Real servers on 127.0.0.1 driven by the real daemon (a subprocess, JSON log lines). While the
daemon restarts the server several times, a client on its own thread opens a new connection every
5 ms: not one is refused, and every one gets an answer (it waits in the kernel's accept queue while
no generation runs). When the daemon stops, the address is free again.
"""

from __future__ import annotations

import errno
import functools
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProc, cli
from tests.support.e2e import E2E, child_command
from tests.support.prober import Prober
from tests.support.servers import (
    Reaper,
    free_port,
    gunicorn_command,
    set_value,
    uvicorn_command,
    wait_value,
    write_asgi_app,
    write_wsgi_app,
)
from tests.support.wait import wait_until

RESTARTS = 3

_SYSTEMD_SERVER = '''\
"""A server that speaks systemd socket activation (sd_listen_fds) and nothing else."""
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

VALUE = {value!r}

if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    sys.exit(f"no socket for me: LISTEN_PID={{os.environ.get('LISTEN_PID')}} pid={{os.getpid()}}")
if os.environ.get("LISTEN_FDNAMES") != "cachewatchd":
    sys.exit("LISTEN_FDNAMES is not set")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = VALUE.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
# Stop as real servers do: the request in hand is answered, the ones not yet accepted stay in the
# shared socket's queue for the next generation (a plain SIGTERM would cut the one in hand).
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever(poll_interval=0.02)
'''


@pytest.fixture
def e2e(tmp_path: Path, reaper: Reaper) -> E2E:
    return E2E(tmp_path, reaper)


def _rebindable(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:*port* now (as servers do: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False
    return True


def _restarts(daemon: DaemonProc, count: int) -> Callable[[], bool]:
    return lambda: len(daemon.events("restarted")) >= count


def _restarts_without_refusals(
    daemon: DaemonProc, source: Path, port: int, first: str, *, resets: bool = False
) -> None:
    """Edit *source* RESTARTS times while a client asks every 5 ms: no connection refused, and
    every request answered; with *resets*, a request may also see its connection reset after
    it was sent (see the uvicorn test)."""
    daemon.ready()
    wait_value(port, first)
    with Prober(port) as prober:
        for n in range(1, RESTARTS + 1):
            old, new = f"{first}-{n - 1}" if n > 1 else first, f"{first}-{n}"
            set_value(source, old, new)
            wait_until(_restarts(daemon, n), 60, message=f"restart {n}")
            wait_until(functools.partial(prober.seen, new), 60, message=f"{new!r} served")
    assert prober.counts["refused"] == 0, prober.counts
    reset = "exchange: ConnectionResetError(104, 'Connection reset by peer')"
    failures = [f for f in prober.failures if not (resets and f == reset)]
    assert failures == [], failures[:5]
    assert prober.counts["answered"] > RESTARTS, prober.counts


STARTS = pytest.mark.parametrize("start", [[], ["--cold"]], ids=["warm", "cold"])
"""Each generation forked from the preloaded interpreter (the default), or started afresh."""


def _args(e2e: E2E, port: int, start: list[str], server: list[str]) -> list[str]:
    listen = ["--listen", f"127.0.0.1:{port}", "--grace", "5", *start]
    return [str(e2e.proj), *listen, "--", *child_command(server)]


@STARTS
def test_uvicorn_restarts_refuse_no_connection_and_the_port_is_released(
    e2e: E2E, start: list[str]
) -> None:
    app = write_asgi_app(e2e.proj, "uv")
    port = free_port()
    args = _args(e2e, port, start, uvicorn_command(port))  # --host/--port become --fd N
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        # uvicorn's shutdown closes a connection it accepted but whose request it has not read
        # yet (Server.shutdown -> connection.shutdown() without a request cycle): now and then
        # the client sees a reset there, never a refusal (the same code runs under --reload)
        _restarts_without_refusals(daemon, app, port, "uv", resets=True)
        assert not _rebindable(port), "the daemon holds the address"
        listening = daemon.wait_event("listening")
        assert listening["address"] == f"127.0.0.1:{port}"
    assert daemon.proc is not None
    assert daemon.proc.returncode == 0
    assert _rebindable(port), "the daemon released the address when it stopped"
    assert "Traceback" not in daemon.stderr()


@STARTS
def test_gunicorn_restarts_refuse_no_connection(e2e: E2E, start: list[str]) -> None:
    app = write_wsgi_app(e2e.proj, "gu")
    port = free_port()
    args = _args(e2e, port, start, gunicorn_command(port))  # -b HOST:PORT: --bind fd://N
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        _restarts_without_refusals(daemon, app, port, "gu")
    assert _rebindable(port)
    assert "Traceback" not in daemon.stderr()


@STARTS
def test_any_other_server_gets_systemd_socket_activation(e2e: E2E, start: list[str]) -> None:
    script = e2e.proj / "sdserver.py"
    script.write_text(_SYSTEMD_SERVER.format(value="sd"), encoding="utf-8")
    port = free_port()
    args = _args(e2e, port, start, [sys.executable, str(script)])
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        _restarts_without_refusals(daemon, script, port, "sd")
        assert not daemon.events("child-exited"), "each generation found its socket"
    assert _rebindable(port)


def test_a_server_binding_the_port_itself_gets_the_line_that_names_the_option(
    e2e: E2E,
) -> None:
    port = free_port()
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    args = [str(e2e.proj), "--listen", f"127.0.0.1:{port}", "--", *server]
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        told = daemon.wait_event("listen-not-taken")
        assert "--listen 127.0.0.1:" in told["error"], told
        assert "address already in use" in told["error"], told
        assert "uvicorn --fd" in told["error"], told
        wait_until(lambda: len(daemon.events("child-exited")) >= 2, 30, message="a retry")
        assert len(daemon.events("listen-not-taken")) == 1, "said once"
    assert _rebindable(port)


def test_an_address_in_use_at_start_is_one_line_and_exit_3(e2e: E2E) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli(
            ["run", "--foreground", "--listen", f"127.0.0.1:{port}", str(e2e.proj), "--",
             sys.executable, "-c", "pass"],
            e2e.env,
        )  # fmt: skip
    assert done.returncode == 3, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in lines[0]
    assert "--listen" in lines[0]


def test_a_detached_daemon_says_the_same_line(e2e: E2E) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli(
            ["run", "--listen", f"127.0.0.1:{port}", str(e2e.proj), "--", sys.executable, "-c", ""],
            e2e.env,
        )
    assert done.returncode == 3, done
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in done.stderr


def test_a_reload_that_rebuilds_the_child_keeps_the_socket(e2e: E2E) -> None:
    """SIGHUP with another ``exclude``: the controller is rebuilt and the child started again;
    the daemon's socket stays open through it, so no connection is refused."""
    script = e2e.proj / "sdserver.py"
    script.write_text(_SYSTEMD_SERVER.format(value="sd"), encoding="utf-8")
    config = e2e.tmp / "config.toml"
    config.write_text('exclude = ["one"]\n', encoding="utf-8")
    port = free_port()
    args = _args(e2e, port, ["--config", str(config)], [sys.executable, str(script)])
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        daemon.ready()
        wait_value(port, "sd")
        first = e2e.published(daemon)["processes"][0]["pids"]
        with Prober(port) as prober:
            config.write_text('exclude = ["two"]\n', encoding="utf-8")
            daemon.send(signal.SIGHUP)
            daemon.wait_event("reloaded", lambda e: e["changed"])
            wait_until(lambda: e2e.record(daemon)["processes"][0]["pids"] not in ([], first), 30)
            wait_until(lambda: prober.counts["answered"] > 20, 30)
        assert prober.counts["refused"] == 0, prober.counts
        assert prober.failures == [], prober.failures[:5]
        assert len(daemon.events("listening")) == 2, "the new target took the held socket"
    assert _rebindable(port)
