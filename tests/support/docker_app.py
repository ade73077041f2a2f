"""The app the tests run in a container (it has no network): a server on a unix socket in the
bind-mounted directory, and this side's client. See tests/support/dockerd.py."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from tests.support.wait import wait_until

__all__ = ["ask", "wait_answer", "write_unix_app"]

_SERVE = """\
import os
import signal
import socket
import sys

import answer

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, {sock!r})


def stop(signum, frame):
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
if os.path.exists(PATH):
    os.unlink(PATH)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(PATH + ".new")
os.rename(PATH + ".new", PATH)
server.listen(16)
print("serving", answer.VALUE, flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(str(answer.VALUE).encode())
"""


def write_unix_app(directory: Path, value: str, sock: str = "app.sock") -> Path:
    """``serve.py`` and ``answer.py`` (``VALUE = value``) in *directory*: run ``python
    /app/serve.py`` and it answers ``answer.VALUE`` to every connection on ``<directory>/<sock>``.
    It exits on SIGTERM (as PID 1 it would ignore it otherwise). Returns ``answer.py``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "serve.py").write_text(_SERVE.format(sock=sock), encoding="utf-8")
    answer = directory / "answer.py"
    answer.write_text(f"VALUE = {value!r}\n", encoding="utf-8")
    return answer


def ask(sock: Path, timeout: float = 2.0) -> str | None:
    """What the server on the unix socket *sock* answers, or None when nothing answers. Connects
    through ``/proc/self/fd`` so that a path longer than a socket address may hold works."""
    try:
        fd = os.open(sock.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(f"/proc/self/fd/{fd}/{sock.name}")
            chunks = []
            while chunk := client.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def wait_answer(
    sock: Path, value: str, timeout: float = 30.0, context: Callable[[], str] | None = None
) -> None:
    """Wait until the server on *sock* answers *value*; on failure the message ends with what
    *context* returns (the container's logs: ``lambda: dockerd.logs(cid)``)."""
    last: list[str | None] = [None]

    def answers() -> bool:
        last[0] = ask(sock)
        return last[0] == value

    if not wait_until(answers, timeout, raise_on_timeout=False):
        more = f"\n{context()}" if context is not None else ""
        raise AssertionError(f"{sock} answered {last[0]!r}, expected {value!r}{more}")
