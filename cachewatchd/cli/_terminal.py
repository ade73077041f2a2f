"""SIGHUP in a terminal: a hang-up of the terminal, or a request to reload the config?

``cachewatchd --foreground`` gets SIGHUP for two reasons. When the terminal it runs in goes away
(an SSH connection drops, a terminal window or tab closes) the kernel, or the shell passing it on
to its jobs, sends SIGHUP: the daemon must stop, its own child included, as on SIGTERM; left
running it would keep serving old code on the port with no one to see it. When a person or a
service manager sends it (``kill -HUP``, ``systemctl reload``), SIGHUP asks for a reload.

The terminal itself tells them apart. :meth:`TerminalWatch.attach` looks, at start, for a
controlling terminal (``/dev/tty`` opens and answers ``tcgetpgrp``) and keeps a descriptor of it.
Without one — detached by ``cachewatchd run``, under systemd or launchd, ``setsid``, or with
``NOTIFY_SOCKET`` set — every SIGHUP is a reload and nothing here runs. With one, a thread watches
that descriptor (a hang-up wakes ``poll`` with ``POLLHUP``) and judges each SIGHUP:

- the terminal is gone (``tcgetpgrp`` on the kept descriptor fails: ``EIO`` after a hang-up,
  ``ENOTTY`` once the session lost its terminal) when the SIGHUP arrives, or within
  :data:`SETTLE` seconds of it (some terminals signal the shell before they close): a **hang-up**;
- the terminal is still there :data:`SETTLE` seconds later: a **reload** (a ``kill -HUP`` from
  another terminal);
- the terminal has been gone for more than :data:`WINDOW` seconds already (the daemon outlived its
  terminal: ``nohup``, ``disown``): a **reload** again.

On a hang-up the daemon logs ``terminal-hangup``, points the standard descriptors that were the
terminal at ``/dev/null`` (what is left to write goes nowhere instead of failing) and stops. When
SIGHUP was ignored at start (``nohup``), a hang-up is ignored too: the user asked to outlive it.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from types import TracebackType

from cachewatchd.log import get_logger

__all__ = ["SETTLE", "WINDOW", "TerminalWatch"]

SETTLE = 0.5
"""Seconds a SIGHUP waits, when the terminal still looks fine, for it to hang up after all."""

WINDOW = 5.0
"""Seconds after the terminal went away during which a SIGHUP is that hang-up's."""

_HANGUP, _QUIT = b"h", b"q"


def _same_terminal(fd: int, rdev: int) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev


class TerminalWatch:
    """Judges each SIGHUP of a daemon that started with a controlling terminal (see the module)."""

    def __init__(
        self,
        tty_fd: int,
        *,
        on_hangup: Callable[[], None],
        on_reload: Callable[[], None],
        survive: bool = False,
    ) -> None:
        """*on_hangup* and *on_reload* are called on the watch's thread; *survive*: SIGHUP was
        ignored at start (``nohup``), so a hang-up is ignored too."""
        self._tty = tty_fd
        self._on_hangup = on_hangup
        self._on_reload = on_reload
        self._survive = survive
        rdev = os.fstat(tty_fd).st_rdev
        self._on_terminal = [fd for fd in (0, 1, 2) if _same_terminal(fd, rdev)]
        """The standard descriptors that are this terminal (pointed at /dev/null on a hang-up)."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._gone_since: float | None = None
        self._log = get_logger(__name__)
        self._thread = threading.Thread(target=self._run, name="cachewatchd-terminal", daemon=True)

    @classmethod
    def attach(
        cls,
        *,
        on_hangup: Callable[[], None],
        on_reload: Callable[[], None],
        survive: bool = False,
        service: bool = False,
    ) -> TerminalWatch | None:
        """A started watch of this process's controlling terminal; ``None`` without one, or
        under a service manager (*service*: ``NOTIFY_SOCKET`` was set), where every SIGHUP is a
        reload."""
        if service:
            return None
        flags = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open("/dev/tty", flags)
        except OSError:  # ENXIO: no controlling terminal
            return None
        try:
            os.tcgetpgrp(fd)
            watch = cls(fd, on_hangup=on_hangup, on_reload=on_reload, survive=survive)
        except OSError:
            os.close(fd)
            return None
        watch._thread.start()
        return watch

    def sighup(self) -> None:
        """SIGHUP arrived (called from the signal handler: only writes a byte)."""
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up
            os.write(self._wake_w, _HANGUP)

    def close(self) -> None:
        """Stop the thread and release the terminal."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, _QUIT)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        for fd in (self._wake_r, self._wake_w, self._tty):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> TerminalWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the watch's thread ------------------------------------------------------------------
    def _gone(self) -> bool:
        """The terminal hung up, or this session no longer has it."""
        try:
            os.tcgetpgrp(self._tty)
        except OSError:
            return True
        return False

    def _run(self) -> None:
        try:
            self._watch()
        except Exception as exc:  # noqa: BLE001 - one line; SIGHUP falls back to reload
            self._log.error("error", where="terminal watch", error=f"{type(exc).__name__}: {exc}")
            self._tty_unwatched_reloads()

    def _tty_unwatched_reloads(self) -> None:
        """After a failure: every SIGHUP is a reload, as without a terminal."""
        while True:
            data = os.read(self._wake_r, 64)
            if not data or _QUIT in data:
                return
            self._on_reload()

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(self._tty, 0)  # POLLHUP and POLLERR are always reported
        watching_tty = True
        pending: float | None = None
        """When the SIGHUP under judgement turns into a reload, if the terminal stays."""
        while True:
            timeout = None if pending is None else max(0.0, pending - time.monotonic()) * 1000
            for fd, _ in poller.poll(timeout):
                if fd == self._wake_r:
                    data = os.read(self._wake_r, 64)
                    if not data or _QUIT in data:
                        return
                    if pending is None:
                        pending = time.monotonic() + SETTLE
                elif watching_tty:  # it would report it over and over
                    poller.unregister(self._tty)  # a hang-up, or (macOS) a tty poll cannot watch
                    watching_tty = False
            now = time.monotonic()
            if self._gone_since is None and self._gone():  # the terminal says which
                self._gone_since = now
            if pending is None:
                continue
            if self._gone_since is not None and now - self._gone_since <= WINDOW:
                pending = None
                self._hung_up()
            elif self._gone_since is not None or now >= pending:
                pending = None
                self._on_reload()

    def _hung_up(self) -> None:
        if self._survive:
            self._log.warning(
                "terminal-hangup", action="ignored", reason="SIGHUP was ignored at start (nohup)"
            )
            return
        self._log.warning("terminal-hangup", action="stop")
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDWR)
            for fd in self._on_terminal:
                with contextlib.suppress(OSError):
                    os.dup2(null, fd)
            os.close(null)
        self._on_hangup()
