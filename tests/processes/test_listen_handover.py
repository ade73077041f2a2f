"""Handing the socket to one generation (processes/handover): the arguments per server, the
systemd variables, the wrapper that sets LISTEN_PID, and the own child that uses them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachewatchd.processes.handover import not_taken, plan_launch, rewrite
from cachewatchd.processes.listen import Listener, parse_address
from cachewatchd.processes.own_child import ChildError, OwnChild
from tests.support.prober import ask
from tests.support.servers import write_asgi_app
from tests.support.wait import wait_until

PY = "/usr/bin/python3"


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener.bind(parse_address("127.0.0.1:0"))
    yield found
    found.close()


@pytest.mark.parametrize(
    ("command", "server", "expected"),
    [
        (
            ["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "80", "--reload"],
            "uvicorn",
            ["uvicorn", "app:app", "--reload", "--fd", "7"],
        ),
        (
            [PY, "-u", "-X", "dev", "-m", "uvicorn", "--port=80", "--uds", "/s", "app:app"],
            "uvicorn",
            [PY, "-u", "-X", "dev", "-m", "uvicorn", "app:app", "--fd", "7"],
        ),
        (
            ["env", "-u", "X", "A=1", "/venv/bin/uvicorn", "--fd", "3", "app:app"],
            "uvicorn",
            ["env", "-u", "X", "A=1", "/venv/bin/uvicorn", "app:app", "--fd", "7"],
        ),
        (
            ["gunicorn", "-w", "2", "-b", "127.0.0.1:80", "--bind=[::1]:81", "-b:82", "w:app"],
            "gunicorn",
            ["gunicorn", "-w", "2", "w:app", "--bind", "fd://7"],
        ),
        (
            ["python3.12", "-mgunicorn", "w:app"],
            "gunicorn",
            ["python3.12", "-mgunicorn", "w:app", "--bind", "fd://7"],
        ),
        (["hypercorn", "app:app"], "systemd", ["hypercorn", "app:app"]),
        ([PY, "server.py", "--port", "80"], "systemd", [PY, "server.py", "--port", "80"]),
        ([PY, "-c", "import uvicorn"], "systemd", [PY, "-c", "import uvicorn"]),
        ([PY, "-m", "http.server"], "systemd", [PY, "-m", "http.server"]),
        (["app", "uvicorn", "--port", "1"], "systemd", ["app", "uvicorn", "--port", "1"]),
    ],
)
def test_the_arguments_per_server(command: list[str], server: str, expected: list[str]) -> None:
    assert rewrite(command, 7) == (server, tuple(expected))


def test_gunicorn_on_a_unix_socket_gets_systemd_activation() -> None:
    """Given ``fd://``, gunicorn unlinks a unix socket's path when it stops; with LISTEN_FDS not."""
    command = ["gunicorn", "-b", "unix:/tmp/x.sock", "w:app"]
    assert rewrite(command, 7, unix=True) == ("systemd", ("gunicorn", "w:app"))


def test_without_a_listener_the_command_runs_as_it_is() -> None:
    launch = plan_launch(["uvicorn", "app:app", "--port", "1"], {"A": "1"}, None)
    assert launch.argv == ("uvicorn", "app:app", "--port", "1")
    assert launch.env == {"A": "1"}
    assert launch.stdin == subprocess.DEVNULL
    assert launch.pass_fds == ()
    assert launch.handover is None


def test_uvicorn_gets_the_descriptor_and_no_listen_variables(listener: Listener) -> None:
    env = {"PATH": "/bin", "LISTEN_FDS": "2", "LISTEN_PID": "1"}
    launch = plan_launch(["uvicorn", "app:app"], env, listener)
    fd = listener.fileno()
    assert launch.argv == ("uvicorn", "app:app", "--fd", str(fd))
    assert launch.pass_fds == (fd,)
    assert launch.env == {"PATH": "/bin"}
    assert launch.handover is not None
    assert (launch.handover.fd, launch.handover.child_fd) == (fd, fd)
    assert not launch.handover.sets_pid


def test_systemd_activation_for_real(listener: Listener, tmp_path: Path) -> None:
    """The wrapper's exec'd command sees LISTEN_PID = its own pid, LISTEN_FDS=1, the name, and
    at descriptor 3 the very socket the daemon listens on; its stdin is /dev/null again."""
    report = tmp_path / "report"
    script = (
        "import os, socket, sys\n"
        "s = socket.socket(fileno=3)\n"
        "print(os.environ['LISTEN_PID'] == str(os.getpid()), os.environ['LISTEN_FDS'],\n"
        "      os.environ['LISTEN_FDNAMES'], s.getsockname()[1], os.path.realpath('/proc/self/fd/0'),\n"
        "      file=open(sys.argv[1], 'w'))\n"
        "s.detach()\n"
    )
    launch = plan_launch([sys.executable, "-c", script, str(report)], None, listener)
    assert launch.argv[:2] == ("/bin/sh", "-c")
    assert launch.handover is not None
    assert launch.handover.sets_pid
    assert launch.handover.child_fd == 3
    done = subprocess.run(
        launch.argv, env=launch.env, stdin=launch.stdin, pass_fds=launch.pass_fds, check=False
    )
    assert done.returncode == 0
    port = listener.name.rsplit(":", 1)[1]
    assert report.read_text(encoding="utf-8").split() == [
        "True", "1", "cachewatchd", port, "/dev/null",
    ]  # fmt: skip


def test_a_missing_command_is_refused_before_the_wrapper_runs(
    listener: Listener, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        plan_launch(["no-such-server-xyz", "--port", "1"], None, listener)
    with pytest.raises(FileNotFoundError):
        plan_launch(["./missing.py"], None, listener, tmp_path)
    with pytest.raises(PermissionError):
        plan_launch(["./"], None, listener, tmp_path)  # a directory


def test_the_line_for_a_server_that_binds_the_port_itself(listener: Listener) -> None:
    command = [PY, "-m", "http.server", "8000"]
    reason = "exited with code 1: OSError: [Errno 98] Address already in use"
    message = not_taken(reason, listener, command)
    assert message is not None
    assert message.startswith("python3 could not bind its address (address already in use)")
    assert f"--listen {listener.name}" in message
    assert "uvicorn --fd, gunicorn --bind fd://, systemd LISTEN_FDS at fd 3" in message
    assert not_taken("exited with code 1: ImportError: no module x", listener, command) is None
    assert not_taken(None, listener, command) is None
    uvicorn = not_taken("ERROR: [Errno 98] error while attempting to bind", listener, ["uvicorn"])
    assert uvicorn is not None
    assert uvicorn.startswith("uvicorn could not")


def test_the_own_child_serves_on_the_socket_across_restarts(
    listener: Listener, tmp_path: Path
) -> None:
    """OwnChild with a listener: uvicorn takes the socket; between two generations a connection
    waits in the queue and is answered by the next one."""
    write_asgi_app(tmp_path, "one")
    port = int(listener.name.rsplit(":", 1)[1])
    command = [sys.executable, "-m", "uvicorn", "app:app", "--port", "1", "--lifespan", "off"]
    child = OwnChild(command, cwd=tmp_path, grace=5, listener=listener)
    try:
        child.start()
        assert wait_until(lambda: ask("127.0.0.1", port, 5) == ("answered", "one"), 30)
        child.stop()
        assert child.pid is None
        # nobody serves now; a connection still gets in and waits for the next generation
        write_asgi_app(tmp_path, "two")
        os.utime(tmp_path / "app.py", (1, 1))  # another mtime: no stale pyc without a daemon
        with socket.create_connection(("127.0.0.1", port), timeout=30) as early:
            early.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            child.start()
            answer = b""
            while chunk := early.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"\r\n\r\ntwo")
    finally:
        child.close()


def test_a_closed_socket_fails_the_start_with_one_line(listener: Listener) -> None:
    child = OwnChild([sys.executable, "-c", "pass"], listener=listener)
    listener.close()
    with pytest.raises(ChildError, match="closed"):
        child.start()
    assert child.last_error is not None


def test_a_command_that_cannot_be_executed_is_the_same_line_with_a_socket(
    listener: Listener,
) -> None:
    child = OwnChild(["no-such-server-xyz"], listener=listener)
    with pytest.raises(ChildError, match="cannot start 'no-such-server-xyz': No such file"):
        child.start()
