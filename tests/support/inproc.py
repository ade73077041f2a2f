"""The real :class:`~cachewatchd.daemon.loop.Daemon` in this process, on a thread of its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cachewatchd.config.settings import CommandLine, build_settings
from cachewatchd.config.user import Config
from cachewatchd.daemon.contracts import ControllerLike
from cachewatchd.daemon.loop import Daemon
from cachewatchd.processes.controller import Controller
from cachewatchd.processes.spec import ProcessSpec
from tests.support.wait import wait_until

__all__ = ["running_daemon"]


def _controller(
    specs: Sequence[ProcessSpec], roots: Sequence[Path], excludes: Mapping[Path, tuple[str, ...]]
) -> ControllerLike:
    return Controller(specs, roots, excludes)


@contextmanager
def running_daemon(
    root: Path, *, child: Sequence[str] | None = None, **daemon_options: Any
) -> Iterator[Daemon]:
    """A daemon watching *root* (with an own child running *child*), ready; stopped and joined
    on exit. *daemon_options*: :class:`Daemon`'s keyword arguments (``quiet``, ...). Set
    ``XDG_RUNTIME_DIR``/``XDG_STATE_HOME`` first (the registry)."""
    spec = None if child is None else ProcessSpec("child", command=tuple(child))
    settings = build_settings(Config(), CommandLine(paths=(root,), child=spec))
    ready = threading.Event()
    daemon = Daemon(settings, make_controller=_controller, on_ready=ready.set, **daemon_options)
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(daemon.run()), name="daemon-run")
    thread.start()
    try:
        wait_until(lambda: ready.is_set() or not thread.is_alive(), 30, message="ready")
        assert ready.is_set(), "the daemon did not start"
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "the daemon did not stop"
