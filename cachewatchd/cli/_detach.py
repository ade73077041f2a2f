"""The detached start: ``cachewatchd run`` without ``--foreground``.

:func:`detach` spawns the daemon (``run --foreground``) in a new session, its stdout and stderr the
log file of its set of roots (:mod:`cachewatchd.cli._logfile`), and returns once the daemon reports
ready through a pipe, or raises the error it reported. The daemon's end of that pipe is
:func:`take_ready_fd` and :func:`tell_parent` (``ready PID`` or ``error CODE MESSAGE``).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from cachewatchd.cli._logfile import LOG_FILE_ENV
from cachewatchd.errors import EXIT_OK, RuntimeFailure

if TYPE_CHECKING:
    from cachewatchd.config.settings import DaemonSettings

__all__ = ["READY_FD_ENV", "detach", "take_ready_fd", "tell_parent"]

READY_FD_ENV = "CACHEWATCHD_READY_FD"


def detach(argv: list[str], settings: DaemonSettings) -> int:
    """Spawn the daemon in a new session, its stdout and stderr the log file of its roots; return
    once it is ready, or raise the error it reported."""
    from cachewatchd.paths import daemon_log_file

    log_file = daemon_log_file(settings.paths)
    read_end, write_end = os.pipe()
    log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.set_inheritable(write_end, True)
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            {**os.environ, READY_FD_ENV: str(write_end), LOG_FILE_ENV: str(log_file)},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null_fd, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        for fd in (write_end, log_fd, null_fd):
            os.close(fd)
    with os.fdopen(read_end, "rb") as pipe:  # EOF: ready (the daemon closes it) or exited
        reply = pipe.read().decode("utf-8", "replace").strip()
    if reply.startswith("ready"):
        print(f"cachewatchd running in the background (pid {pid}); log: {log_file}")
        return EXIT_OK
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if reply.startswith("error "):
        _, code_text, message = [*reply.split(" ", 2), "", ""][:3]
        error = RuntimeFailure(message)
        error.exit_code = int(code_text) if code_text.isdigit() else code
        raise error
    raise RuntimeFailure(
        f"the daemon exited before it was ready (exit code {code}); see {log_file}"
    )


def take_ready_fd() -> int | None:
    value = os.environ.pop(READY_FD_ENV, None)
    if value is None or not value.isdigit():
        return None
    return int(value)


def tell_parent(fd: int | None, message: str) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, (" ".join(message.splitlines()) + "\n").encode())
        os.close(fd)
