"""The daemon in this process: ``cachewatchd run --foreground``.

Its process-wide concerns: logging setup, the systemd notification environment (taken, not passed
on to managed processes), signal handlers (they only post to the daemon; a SIGHUP that is the
hang-up of the daemon's terminal stops it instead of reloading, see
:mod:`cachewatchd.cli._terminal`), the own child's ``--listen`` socket (bound before the daemon
starts, closed after it stopped), and the last word of a run: whatever ended it, the own child's
process group is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO, cast

from cachewatchd.cli._detach import tell_parent

if TYPE_CHECKING:
    from cachewatchd.cli._logfile import RotatingLog
    from cachewatchd.config.settings import DaemonSettings
    from cachewatchd.daemon.contracts import ControllerLike
    from cachewatchd.daemon.loop import Daemon
    from cachewatchd.processes.listen import Address
    from cachewatchd.processes.spec import ProcessSpec

__all__ = ["run_foreground"]


def run_foreground(
    args: argparse.Namespace,
    settings: DaemonSettings,
    ready_fd: int | None,
    log: RotatingLog | None = None,
    *,
    reload_settings: Callable[[], DaemonSettings],
) -> int:
    from cachewatchd.daemon.loop import Daemon
    from cachewatchd.daemon.sd_notify import NOTIFY_ENV_VARS, Notifier, WatchdogPinger
    from cachewatchd.log import configure_logging, route_stdlib_logging
    from cachewatchd.processes.listen import holding
    from cachewatchd.processes.own_child import stop_own_children

    stream = cast("TextIO", log) if log is not None else None
    configure_logging(args.log_format, args.log_level.lower(), stream)
    notifier = Notifier.from_env()
    service = bool(os.environ.get("NOTIFY_SOCKET"))
    for var in NOTIFY_ENV_VARS:  # managed processes must not talk to systemd in our name
        os.environ.pop(var, None)
    daemon = Daemon(
        settings,
        reload_settings=reload_settings,
        make_controller=_make_controller,
        notifier=notifier,
        on_ready=lambda: tell_parent(ready_fd, f"ready {os.getpid()}"),
    )
    pinger = WatchdogPinger(notifier, healthy=daemon.healthy)
    with holding(_listen_address(settings)):  # in use: one line, exit 3; closed when it stops
        try:
            with _signals(daemon, service=service), route_stdlib_logging(), pinger:
                return daemon.run()
        finally:
            stop_own_children()  # whatever ended the run: the own child's group never outlives it


def _listen_address(settings: DaemonSettings) -> Address | None:
    """The own child's ``--listen`` address: bound once, before the daemon starts, for its whole
    run (config reloads rebuild the child's target, not the socket)."""
    from cachewatchd.processes.listen import parse_address

    for spec in settings.processes:
        if spec.command is not None and spec.listen is not None:
            return parse_address(spec.listen)
    return None


def _make_controller(
    specs: Sequence[ProcessSpec], roots: Sequence[Path], excludes: Mapping[Path, tuple[str, ...]]
) -> ControllerLike:
    from cachewatchd.processes.controller import Controller

    controller: ControllerLike = Controller(specs, roots, excludes)
    return controller


@contextlib.contextmanager
def _signals(daemon: Daemon, *, service: bool = False) -> Iterator[None]:
    """SIGTERM/SIGINT ask the daemon to stop; SIGHUP to reload, unless it is the hang-up of the
    terminal the daemon runs in, which stops it (:mod:`cachewatchd.cli._terminal`; *service*: a
    service manager runs it, every SIGHUP is a reload). Previous handlers come back after."""
    from cachewatchd.cli._terminal import TerminalWatch

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watch = TerminalWatch.attach(
        on_hangup=daemon.request_stop,
        on_reload=daemon.request_reload,
        survive=signal.getsignal(signal.SIGHUP) == signal.SIG_IGN,
        service=service,
    )
    wanted = {
        signal.SIGTERM: daemon.request_stop,
        signal.SIGINT: daemon.request_stop,
        signal.SIGHUP: watch.sighup if watch is not None else daemon.request_reload,
    }
    previous = {}
    try:
        for signum, action in wanted.items():
            previous[signum] = signal.signal(signum, _poster(action))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if watch is not None:
            watch.close()


def _poster(action: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        action()

    return handler
