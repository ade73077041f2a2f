"""The daemon's side of one preloader process: :class:`Preloader` and its forks, :class:`WarmProcess`.

A preloader is the own child's interpreter running :mod:`cachewatchd.processes.warm_boot` with the
command's options, cwd and environment, in a process group of its own (a session of its own where
the cold child gets one), joined to the daemon by a unix socket pair. It imports the modules it is
given, says ``ready`` with the stat fingerprint of every file it imported, and then forks on
request: each fork becomes one generation of the command and is handled like the cold child's
:class:`subprocess.Popen` (``pid``, ``poll``, ``wait``), its exit status reported by the preloader,
whose child it is. No thread: the socket is read when a caller asks (a non-blocking read in
``poll``, a blocking one in ``wait``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from cachewatchd.errors import RuntimeFailure
from cachewatchd.processes.handover import LISTEN_VARS
from cachewatchd.processes.warm_plan import WarmPlan

__all__ = ["BOOT", "PreloadError", "Preloader", "WarmProcess"]

BOOT = Path(__file__).with_name("warm_boot.py")
_OLD_PYTHON = 9
"""The stub's exit code on an interpreter older than 3.7 (the preloader needs 3.7+)."""
_STUB = (
    f"import sys;sys.version_info>=(3,7) or sys.exit({_OLD_PYTHON});"
    "p=sys.argv[1];f=open(p,'rb');s=f.read();f.close();"
    "exec(compile(s,p,'exec'),{'__name__':'__cachewatchd_preloader__','__builtins__':__builtins__})"
)
_STOP_WAIT = 2.0
"""Seconds a preloader has to exit once its socket closed, before it is killed."""


class PreloadError(RuntimeFailure):
    """The preloader failed; :attr:`culprit` is the top-level module to blame, if one is."""

    def __init__(self, message: str, culprit: str | None = None) -> None:
        super().__init__(message)
        self.culprit = culprit


class Preloader:
    """One preloader process. Thread-safe; every method may block only as long as it says."""

    def __init__(
        self,
        plan: WarmPlan,
        *,
        cwd: str,
        env: Mapping[str, str],
        names: Sequence[str],
        roots: Sequence[str],
        session: bool,
    ) -> None:
        """Start it (the imports run in the background); :class:`PreloadError` if it cannot."""
        self.plan = plan
        self.env = dict(env)
        self.names = frozenset(names)
        self.cwd = cwd
        self.started = time.monotonic()
        self._lock = threading.RLock()
        self._buffer = b""
        self._replies: deque[dict[str, Any]] = deque()
        self._exits: dict[int, int] = {}
        self._eof = False
        self._idle = threading.Event()
        """Never set: an interruptible pause while an orphaned fork runs."""
        self._files: list[tuple[str, int, int, int]] | None = None
        self.skipped: dict[str, str] = {}
        """Modules not preloaded and why (under a watched root, not found)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        group: dict[str, Any] = (
            {"process_group": 0}
            if sys.version_info >= (3, 11) and not session
            else {"start_new_session": True}
        )
        argv = [plan.python, *plan.options, "-c", _STUB, str(BOOT), str(theirs.fileno())]
        try:
            self._popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                **group,
            )
        except OSError as exc:
            ours.close()
            raise PreloadError(f"cannot start {plan.python}: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        self._sock = ours
        request = {"op": "preload", "names": list(names), "roots": list(roots)}
        request["path0"] = plan.path0  # type: ignore[assignment]
        with contextlib.suppress(PreloadError):  # gone already: ready() says so
            self._send(request)

    @property
    def pid(self) -> int:
        return self._popen.pid

    # -- readiness ----------------------------------------------------------------------------
    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the imports are done, waiting up to *timeout*; :class:`PreloadError` if they
        failed or the process died."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._files is None:
                reply = self._reply(max(0.0, deadline - time.monotonic()))
                if reply is None:
                    return False
                if "failed" in reply:
                    raise PreloadError(str(reply["failed"]), reply.get("culprit"))
                if reply.get("ready"):
                    self._files = [
                        (str(p), int(m), int(s), int(i)) for p, m, s, i in reply["files"]
                    ]
                    self.skipped = {str(k): str(v) for k, v in reply.get("skipped", {}).items()}
            return True

    def stale(self) -> str | None:
        """The first imported file that changed since it was imported (a ``pip install``), or
        ``None``. Only once :meth:`ready`."""
        for path, mtime, size, inode in self._files or ():
            try:
                st = os.stat(path)
            except OSError:
                return path
            if (st.st_mtime_ns, st.st_size, st.st_ino) != (mtime, size, inode):
                return path
        return None

    def serves(self, plan: WarmPlan, env: Mapping[str, str]) -> bool:
        """Whether this preloader was built for *plan*'s interpreter, options and entry and for
        *env* (``LISTEN_*`` aside: they differ per generation)."""
        ours = self.plan
        if (ours.python, ours.options, ours.path0) != (plan.python, plan.options, plan.path0):
            return False
        return _stable(self.env) == _stable(env)

    @property
    def files(self) -> int:
        """How many files and directories the fingerprint watches."""
        return len(self._files or ())

    # -- forks --------------------------------------------------------------------------------
    def fork(
        self,
        plan: WarmPlan,
        *,
        env: Mapping[str, str],
        fds: Sequence[tuple[int, int]],
        report: int | None,
        session: bool,
        listen_pid: bool = False,
        timeout: float = 10.0,
    ) -> WarmProcess:
        """One generation of *plan* (its entry point and ``sys.argv``): *fds* are ``(our descriptor, its number in the fork)``; *report* the
        write end of the pipe the fork writes its imports to. :class:`PreloadError` when the
        preloader refuses (threads), fails or does not answer within *timeout*."""
        mine = [fd for fd, _ in fds] + ([report] if report is not None else [])
        request = {
            "op": "fork",
            "mode": plan.mode,
            "target": plan.target,
            "argv": list(plan.argv),
            "title": list(plan.title),
            "env": dict(env),
            "fds": [target for _, target in fds],
            "session": "session" if session else "group",
            "listen_pid": listen_pid,
        }
        with self._lock:
            if not self.ready():
                raise PreloadError("the preloader is not ready")
            self._send(request, mine)
            reply = self._reply(timeout)
        if reply is None:
            raise PreloadError(f"the preloader did not fork within {timeout:g}s")
        if "refused" in reply:
            raise PreloadError(str(reply["refused"]))
        return WarmProcess(self, int(reply["forked"]))

    def close(self) -> None:
        """Close the socket (the preloader exits: its forks live on) and reap it."""
        with self._lock:
            self._eof = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        try:
            self._popen.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()

    @property
    def alive(self) -> bool:
        with self._lock:
            return not self._eof and self._popen.poll() is None

    # -- the socket ---------------------------------------------------------------------------
    def _send(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        data = json.dumps(message).encode() + b"\n"
        try:
            with self._lock:
                if fds:
                    sent = socket.send_fds(self._sock, [data], list(fds))
                    data = data[sent:]
                self._sock.sendall(data)
        except OSError:
            self._eof = True
            raise PreloadError(self._gone()) from None

    def _gone(self) -> str:
        """Why the preloader's socket closed: it exited (with which code)."""
        try:
            code: int | None = self._popen.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            code = None
        if code == _OLD_PYTHON:
            return f"{self.plan.python} is older than Python 3.7"
        return "the preloader exited" + (f" (exit code {code})" if code is not None else "")

    def _reply(self, timeout: float) -> dict[str, Any] | None:
        """The next reply that is not an exit (exits are kept for their :class:`WarmProcess`);
        ``None`` after *timeout*. :class:`PreloadError` once the preloader is gone."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._replies:
                if self._eof:
                    raise PreloadError(self._gone())
                if not self._pump(max(0.0, deadline - time.monotonic())):
                    return None
            return self._replies.popleft()

    def _pump(self, timeout: float) -> bool:
        """Read what the socket has (waiting up to *timeout* for something); ``False`` when
        nothing came. Exits are recorded, other messages queued."""
        with self._lock:
            if self._eof:
                return False
            try:
                readable, _, _ = select.select([self._sock], [], [], timeout)
                data = self._sock.recv(1 << 16) if readable else None
            except OSError:
                data = b""
            if data is None:
                return False
            if not data:
                self._eof = True
                return True
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if "exit" in message:
                    self._exits[int(message["exit"])] = int(message["code"])
                else:
                    self._replies.append(message)
            return True

    def _exit_code(self, pid: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while pid not in self._exits:
                if self._eof:
                    code = _orphan_code(pid)
                    if code is None and timeout > 0:
                        self._idle.wait(min(0.05, timeout))
                    return code
                came = self._pump(max(0.0, deadline - time.monotonic()))
                if not came and time.monotonic() >= deadline:
                    return None
            return self._exits[pid]


def _orphan_code(pid: int) -> int | None:
    """A fork whose preloader is gone: its status is lost; ``1`` once it no longer runs (gone,
    or a zombie waiting for whoever adopted it)."""
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        pass
    except psutil.Error:
        return None
    return 1


class WarmProcess:
    """One fork of a preloader, as the own child sees a process: ``pid``, ``poll``, ``wait``."""

    def __init__(self, preloader: Preloader, pid: int) -> None:
        self.preloader = preloader
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.preloader._exit_code(self.pid, 0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 0.5 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            self.returncode = self.preloader._exit_code(self.pid, min(left, 0.5))
        return self.returncode


def _stable(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in LISTEN_VARS}
