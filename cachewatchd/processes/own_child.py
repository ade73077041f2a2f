"""The daemon's own child: ``cachewatchd --foreground PATH -- COMMAND ARGS...``.

COMMAND runs in its own process group, is restarted after each batch, and, when it dies on its own
with an error, is started again after a delay that doubles while it keeps crashing (crash-loop
backoff).

Its output passes through: its stdout is the daemon's stdout; its stderr goes through a
:class:`~cachewatchd.processes.stderr_tee.StderrTee`, which copies every byte to the daemon's
stderr unchanged and keeps the last line, so that the daemon can say why the child exited
(``child-exited`` carries it as ``reason``, ``cachewatchd status`` shows it).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from cachewatchd.errors import RuntimeFailure
from cachewatchd.log import get_logger
from cachewatchd.processes.drain import Draining, retire, socket_inode
from cachewatchd.processes.handover import plan_launch
from cachewatchd.processes.listen import Listener, ListenError
from cachewatchd.processes.os_procs import ProcessActionError, terminate_tree
from cachewatchd.processes.preloader import WarmProcess
from cachewatchd.processes.stderr_tee import StderrTee
from cachewatchd.processes.warm import WarmStarter

__all__ = ["ChildError", "OwnChild", "stop_own_children"]

_STABLE_AFTER = 10.0
"""A child that ran this long before dying resets the backoff."""

_TEE_DRAIN = 1.0
"""Seconds to wait, once the child exited, for the tee to read the last of its stderr."""

_children: weakref.WeakSet[OwnChild] = weakref.WeakSet()
_children_lock = threading.Lock()


def stop_own_children() -> None:
    """Stop every own child of this process still running, and refuse new starts: the last word
    of a daemon on its way out, whatever stopped it (its controller normally stopped them)."""
    with _children_lock:
        children = list(_children)
    for child in children:
        with contextlib.suppress(Exception):
            child.close()


class ChildError(RuntimeFailure):
    """The command could not be started."""


class OwnChild:
    """One COMMAND, started and restarted by the daemon. Thread-safe."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        grace: float = 10.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        name: str = "child",
        listener: Listener | None = None,
        warm: WarmStarter | None = None,
    ) -> None:
        """*listener*: the socket each generation gets (``--listen``, see
        :mod:`cachewatchd.processes.handover`); ``None``: COMMAND binds its own. *warm*: fork
        each generation from a preloaded interpreter when it can (:mod:`cachewatchd.processes.warm`)."""
        if not command:
            raise ChildError("the child command is empty")
        self.command = tuple(command)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.grace = grace
        self.name = name
        self.listener = listener
        self.warm = warm
        self._backoff_min, self._backoff_max = backoff
        self._delay = self._backoff_min
        self._last_delay = self._backoff_min
        self._lock = threading.RLock()
        self._popen: subprocess.Popen[bytes] | WarmProcess | None = None
        self._started_at = 0.0
        self._restart_at: float | None = None
        self.crashes = 0
        self.start_failures = 0
        """Crash restarts that could not start COMMAND (each logged as ``restart-failed``)."""
        self.last_error: str | None = None
        """Why the last start failed; ``None`` once COMMAND started."""
        self.last_exit: int | None = None
        self.last_reason: str | None = None
        """How COMMAND last ended on its own, e.g. ``exited with code 1: ... address already in
        use`` (its last stderr line); ``None`` until it did."""
        self._tee: StderrTee | None = None
        self._draining: list[Draining] = []
        """Old generations that stopped accepting on the held socket and drain (:meth:`restart`)."""
        self._closed = False
        self._log = get_logger(__name__)

    # -- state --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        with self._lock:
            if self._popen is None or self._popen.poll() is not None:
                return None
            return self._popen.pid

    @property
    def waiting_until(self) -> float | None:
        """Monotonic time of the scheduled crash restart, if one is pending."""
        with self._lock:
            return self._restart_at

    # -- actions ------------------------------------------------------------------------------
    def start(self) -> int:
        """Start COMMAND in its own process group; return its pid."""
        with self._lock:
            if self._closed:
                raise ChildError(f"not starting {self.command[0]!r}: the daemon is stopping")
            if self.pid is not None:
                return self.pid
            # Its own group in the daemon's session; Python 3.10's subprocess has no process_group
            # (and preexec_fn is unsafe with threads): there it gets a session of its own.
            group: dict[str, Any] = (
                {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
            )
            try:  # with --listen: the socket, the rewritten arguments, the LISTEN_* variables
                launch = plan_launch(self.command, self.env, self.listener, self.cwd)
            except ListenError as exc:
                self.last_error = exc.message
                raise ChildError(self.last_error) from None
            except OSError as exc:  # the wrapper's command cannot be executed
                self.last_error = f"cannot start {self.command[0]!r}: {exc.strerror or exc}"
                raise ChildError(self.last_error) from None
            try:
                tee = StderrTee.open(name=self.name)
            except OSError as exc:
                self.last_error = f"cannot pass {self.command[0]!r}'s stderr through: {exc}"
                raise ChildError(self.last_error) from None
            try:  # forked from the preloader, else cold
                self._popen = self.warm.spawn(launch, tee.child_end) if self.warm else None
                self._popen = self._popen or subprocess.Popen(
                    launch.argv,
                    cwd=self.cwd,
                    env=launch.env,
                    stdin=launch.stdin,
                    stderr=tee.child_end,
                    pass_fds=launch.pass_fds,
                    **group,
                )
            except OSError as exc:
                tee.discard()
                self._popen = None
                self.last_error = f"cannot start {self.command[0]!r}: {exc.strerror or exc}"
                raise ChildError(self.last_error) from None
            tee.started()
            self._tee = tee
            with _children_lock:
                _children.add(self)
            self._started_at = time.monotonic()
            self._restart_at = None
            self.last_error = None
            return self._popen.pid

    def close(self) -> None:
        """Stop COMMAND for good: :meth:`start` refuses from now on."""
        with self._lock:
            self._closed = True
        self.stop()
        if self.warm is not None:
            self.warm.close()

    def stop(self) -> int | None:
        """TERM the child's group, wait ``grace``, KILL, reap; return its exit code. The old
        generations still draining are ended too."""
        code = self._stop_current()
        self._finish_draining()
        return code

    def _stop_current(self) -> int | None:
        with self._lock:
            popen, self._popen = self._popen, None
            tee, self._tee = self._tee, None
            self._restart_at = None
        return self._end(popen, tee)

    def _end(
        self, popen: subprocess.Popen[bytes] | WarmProcess | None, tee: StderrTee | None
    ) -> int | None:
        """TERM, wait ``grace``, KILL and reap a generation already taken out of ``_popen``."""
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                terminate_tree(psutil.Process(popen.pid), self.grace)
        code = popen.wait()
        self.last_exit = code
        if tee is not None:
            tee.wait(_TEE_DRAIN)
        return code

    def restart(self) -> int:
        """Stop, then start again; return the new pid. With ``--listen``, a generation seen
        accepting on the socket is only waited for until it stopped accepting: it drains while
        the next one starts (:mod:`cachewatchd.processes.drain`)."""
        with self._lock:  # out of _popen first: its exit must not look like a crash to poll()
            popen, self._popen = self._popen, None
            tee, self._tee = self._tee, None
            self._restart_at = None
        if not self._retire(popen, tee):
            self._end(popen, tee)
        return self.start()

    def _retire(
        self, popen: subprocess.Popen[bytes] | WarmProcess | None, tee: StderrTee | None
    ) -> bool:
        if self.listener is None or popen is None or popen.poll() is not None:
            return False
        try:
            inode = socket_inode(self.listener.fileno())
        except (ListenError, OSError):
            return False
        kill_at = time.monotonic() + self.grace
        tree = retire(popen.pid, inode, self.grace)
        if tree is None:
            return False
        draining = Draining(popen, tee, tree, kill_at)
        with self._lock:
            closed = self._closed
            if not closed:
                self._draining.append(draining)
        if closed:  # close() ran meanwhile and found nothing draining: end it here
            with contextlib.suppress(psutil.Error, ProcessActionError):
                draining.finish()
        return True

    def _reap_draining(self) -> bool:
        """Forget the old generations that ended; whether some still drain."""
        with self._lock:
            draining = list(self._draining)
        ended = [d for d in draining if d.done()]
        with self._lock:
            self._draining = [d for d in self._draining if d not in ended]
            return bool(self._draining)

    def _finish_draining(self) -> None:
        with self._lock:
            draining, self._draining = self._draining, []
        for old in draining:
            with contextlib.suppress(psutil.Error, ProcessActionError):
                old.finish()

    def retry_later(self) -> None:
        """After a start that failed: start again when the backoff delay is over (see :meth:`poll`)."""
        with self._lock:
            self._schedule(time.monotonic())

    def poll(self) -> float | None:
        """Notice a child that died on its own and (re)start it when its backoff is over.

        Returns the seconds until the next call is useful, or ``None`` when nothing is pending.
        """
        if self.warm is not None:
            self.warm.tick()  # what the running generation imported: the next preloader
        draining = self._reap_draining()
        soon = 0.1 if draining else 0.25
        now = time.monotonic()
        with self._lock:
            popen, tee = self._popen, self._tee
            code = popen.poll() if popen is not None else None
            if popen is not None and code is None:
                return soon
        if popen is not None and code is not None:
            if tee is not None:
                tee.wait(_TEE_DRAIN)  # its last line is the reason; outside the lock
            with self._lock:
                if self._popen is popen:  # not stopped or restarted meanwhile
                    self._popen = self._tee = None
                    self.last_exit = code
                    self._exited(code, now, tee.last_line if tee is not None else None)
        with self._lock:
            if self._restart_at is None:
                return soon if draining else None
            if now < self._restart_at:
                return self._restart_at - now
        try:
            self.start()
        except ChildError as exc:
            self._log.error("restart-failed", target=self.name, error=str(exc))
            with self._lock:
                self.start_failures += 1
                self._schedule(time.monotonic())
                return self._last_delay
        return soon

    def _exited(self, code: int, now: float, line: str | None) -> None:
        how = f"exited with code {code}" if code >= 0 else f"killed by {_signal_name(-code)}"
        self.last_reason = f"{how}: {line}" if line else how
        if code == 0:
            self._log.info(
                "child-exited", target=self.name, code=code, restart_in=None, reason=line
            )
            return
        self.crashes += 1
        if now - self._started_at >= _STABLE_AFTER:
            self._delay = self._backoff_min
        self._schedule(now)
        self._log.warning(
            "child-exited", target=self.name, code=code, restart_in=self._last_delay, reason=line
        )

    def _schedule(self, now: float) -> None:
        self._last_delay = self._delay
        self._restart_at = now + self._delay
        self._delay = min(self._delay * 2, self._backoff_max)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
