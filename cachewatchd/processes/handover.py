"""Handing the daemon's listening socket (:mod:`cachewatchd.processes.listen`) to one generation of
the own child: the command's arguments rewritten, the descriptor passed, the environment set.

The rules, per server (the command may start with ``env [-u VAR] [VAR=VALUE]...``):

- **uvicorn** (``uvicorn ...``, ``python -m uvicorn ...``): ``--host``, ``--port``, ``--uds`` and
  ``--fd`` are removed, ``--fd N`` is added; the socket stays at descriptor N.
- **gunicorn** (``gunicorn ...``, ``python -m gunicorn ...``): ``-b``/``--bind`` are removed and
  ``--bind fd://N`` is added for a TCP address. For ``unix:PATH`` gunicorn gets systemd socket
  activation instead (it unlinks the path of a unix socket it got by ``fd://`` when it stops).
- **any other command**: systemd socket activation, as ``sd_listen_fds(3)`` reads it: the socket at
  descriptor 3, ``LISTEN_FDS=1``, ``LISTEN_FDNAMES=cachewatchd``, and ``LISTEN_PID`` = the
  server's own pid, which only exists between fork and exec: a two-line ``/bin/sh`` wrapper sets it
  (``$$``) and ``exec``s the command, moving the socket from its stdin to descriptor 3 on the way.

Before each generation the socket is put back in blocking mode (the servers set ``O_NONBLOCK`` on
it, which the next generation would inherit). A command that binds the address itself fails with
"address already in use": :func:`not_taken` turns that into the line that names the option.

A generation started another way (forked from a preloaded interpreter) takes :attr:`Launch.handover`:
:attr:`Handover.command`, :attr:`Handover.env`, the descriptor :attr:`Handover.fd` to be found at
:attr:`Handover.child_fd`, and ``LISTEN_PID`` set to its own pid when :attr:`Handover.sets_pid`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cachewatchd.processes.listen import Listener

__all__ = [
    "FDNAME",
    "LISTEN_VARS",
    "SD_LISTEN_FDS_START",
    "Handover",
    "Launch",
    "Server",
    "hand_over",
    "not_taken",
    "plan_launch",
    "rewrite",
]

Server = Literal["uvicorn", "gunicorn", "systemd"]

SD_LISTEN_FDS_START = 3
"""Where systemd socket activation puts the first socket (``SD_LISTEN_FDS_START``)."""
LISTEN_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
FDNAME = "cachewatchd"
"""``LISTEN_FDNAMES``: the socket's name for ``sd_listen_fds_with_names``."""

_WRAPPER = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@" 3<&0 0</dev/null'
"""``sh -c`` wrapper: ``$$`` is the pid that ``exec`` keeps; stdin (the socket) moves to 3."""
_WRAPPER_NAME = "cachewatchd-listen"

_UVICORN_DROP = ("--host", "--port", "--uds", "--fd")
_GUNICORN_DROP = ("-b", "--bind")
_IN_USE = re.compile(r"address already in use|errno 98\b|eaddrinuse", re.IGNORECASE)


@dataclass(frozen=True)
class Handover:
    """One generation's share of the socket."""

    server: Server
    command: tuple[str, ...]
    """The command rewritten for the socket (without the ``sh`` wrapper)."""
    fd: int
    """The daemon's descriptor of the socket."""
    child_fd: int
    """Where the server finds it: *fd* itself (``--fd N``, ``fd://N``) or 3 (systemd)."""
    env: Mapping[str, str]
    """Variables to set in the server's environment (``LISTEN_PID`` excepted); the inherited
    ``LISTEN_*`` are dropped."""

    @property
    def sets_pid(self) -> bool:
        """Whether ``LISTEN_PID`` must be the server's own pid (systemd socket activation)."""
        return self.server == "systemd"

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """*base* without the inherited ``LISTEN_*`` variables, plus :attr:`env`."""
        out = {key: value for key, value in base.items() if key not in LISTEN_VARS}
        out.update(self.env)
        return out


@dataclass(frozen=True)
class Launch:
    """What ``subprocess.Popen`` runs for one generation."""

    argv: tuple[str, ...]
    env: dict[str, str] | None
    """``None``: the daemon's own environment."""
    stdin: int
    pass_fds: tuple[int, ...] = ()
    handover: Handover | None = None


def plan_launch(
    command: Sequence[str],
    env: Mapping[str, str] | None,
    listener: Listener | None,
    cwd: str | os.PathLike[str] | None = None,
) -> Launch:
    """How to start *command* (with *env*, ``None`` for the daemon's; in *cwd*) holding
    *listener*'s socket; without a listener, as it is, its stdin ``/dev/null``.
    :class:`~cachewatchd.processes.listen.ListenError` when the socket is closed;
    ``FileNotFoundError``/``PermissionError`` when the wrapper's command cannot be executed (what
    ``Popen`` would say of the command itself)."""
    if listener is None:
        return Launch(tuple(command), dict(env) if env is not None else None, subprocess.DEVNULL)
    handover = hand_over(command, listener)
    environ = handover.environ(env if env is not None else os.environ)
    if handover.sets_pid:
        _check_executable(handover.command[0], environ.get("PATH"), cwd)
        argv = ("/bin/sh", "-c", _WRAPPER, _WRAPPER_NAME, *handover.command)
        return Launch(argv, environ, handover.fd, (), handover)
    return Launch(handover.command, environ, subprocess.DEVNULL, (handover.fd,), handover)


def hand_over(command: Sequence[str], listener: Listener) -> Handover:
    """*listener*'s socket made ready for one more generation of *command*."""
    fd = listener.prepare()
    server, rewritten = rewrite(command, fd, unix=listener.address.path is not None)
    if server == "systemd":
        env = {"LISTEN_FDS": "1", "LISTEN_FDNAMES": FDNAME}
        return Handover(server, rewritten, fd, SD_LISTEN_FDS_START, env)
    return Handover(server, rewritten, fd, fd, {})


def rewrite(
    command: Sequence[str], fd: int, *, unix: bool = False
) -> tuple[Server, tuple[str, ...]]:
    """Which server *command* runs, and its arguments for the socket at *fd* (module docstring)."""
    argv = list(command)
    found = _server_at(argv)
    if found is None:
        return "systemd", tuple(argv)
    server, start = found
    head, args = argv[:start], argv[start:]
    if server == "uvicorn":
        return "uvicorn", (*head, *_drop(args, _UVICORN_DROP), "--fd", str(fd))
    kept = _drop(args, _GUNICORN_DROP)
    if unix:
        return "systemd", (*head, *kept)
    return "gunicorn", (*head, *kept, "--bind", f"fd://{fd}")


def _check_executable(program: str, path: str | None, cwd: str | os.PathLike[str] | None) -> None:
    """Raise what ``execvp`` would for *program*: the wrapper runs it only after ``sh`` started."""
    if os.sep in program:
        candidate = os.path.join(cwd, program) if cwd is not None else program
        if not os.path.exists(candidate):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
        if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied", program)
        return
    if shutil.which(program, path=path) is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)


def not_taken(reason: str | None, listener: Listener, command: Sequence[str]) -> str | None:
    """When the child's last line (*reason*) says the address is in use: the command binds a port
    itself instead of taking the socket. The one line that says so, naming the option."""
    if not reason or not _IN_USE.search(reason):
        return None
    return (
        f"{_program(command)} could not bind its address (address already in use): it binds a port "
        f"itself instead of taking the socket of --listen {listener.name}. Give it the socket "
        "(uvicorn --fd, gunicorn --bind fd://, systemd LISTEN_FDS at fd 3), make it listen "
        "elsewhere, or drop --listen"
    )


def _program(command: Sequence[str]) -> str:
    found = _server_at(list(command))
    if found is not None:
        return found[0]
    start = _after_env(list(command))
    return os.path.basename(command[start]) if start < len(command) else command[0]


def _server_at(argv: list[str]) -> tuple[Literal["uvicorn", "gunicorn"], int] | None:
    """``(server, index of its first argument)`` when *argv* runs uvicorn or gunicorn."""
    i = _after_env(argv)
    if i >= len(argv):
        return None
    name = os.path.basename(argv[i])
    if name in ("uvicorn", "gunicorn"):
        return name, i + 1  # type: ignore[return-value]
    if not name.startswith("python"):
        return None
    i += 1
    while i < len(argv) and argv[i].startswith("-"):
        option = argv[i]
        if option.startswith("-m"):
            module = option[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            if module in ("uvicorn", "gunicorn"):
                return module, i + (1 if option[2:] else 2)  # type: ignore[return-value]
            return None
        if option.startswith("-c") or option == "-":
            return None
        i += 2 if option in ("-W", "-X", "-Q") else 1
    return None


def _after_env(argv: list[str]) -> int:
    """The index of the command after a leading ``env [OPTION]... [NAME=VALUE]...``."""
    if not argv or os.path.basename(argv[0]) != "env":
        return 0
    i = 1
    while i < len(argv):
        token = argv[i]
        if token in ("-u", "--unset", "-C", "--chdir"):
            i += 2
        elif token.startswith("-") or "=" in token:
            i += 1
        else:
            break
    return i


def _drop(args: list[str], options: tuple[str, ...]) -> list[str]:
    """*args* without *options* and their values (``--port 80``, ``--port=80``, ``-b80``)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in options:
            skip = True
            continue
        if any(arg.startswith(f"{o}=") for o in options if o.startswith("--")):
            continue
        if any(arg.startswith(o) and len(arg) > 2 for o in options if not o.startswith("--")):
            continue
        kept.append(arg)
    return kept
