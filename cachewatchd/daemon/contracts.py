"""What the daemon needs from its collaborators: the controller of the managed processes (and what it
is built from), and the service manager's notifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from cachewatchd.config.settings import DaemonSettings
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.status import TargetStatus

__all__ = ["ControllerFactory", "ControllerLike", "Notifier", "controller_inputs"]


class ControllerLike(Protocol):
    """What the daemon needs from :class:`cachewatchd.processes.controller.Controller`."""

    def subscribe(self, callback: Callable[[], None]) -> None: ...
    def subscribe_errors(self, callback: Callable[[], None]) -> None: ...
    def start(self) -> None: ...
    def notify(self, touched: Sequence[Path]) -> None: ...
    def stop(self) -> None: ...
    def status(self) -> list[TargetStatus]: ...


ControllerFactory = Callable[
    [Sequence[ProcessSpec], Sequence[Path], Mapping[Path, tuple[str, ...]]], ControllerLike
]
"""``(specs, roots, each root's exclude globs)`` -> a controller (not started)."""


def controller_inputs(
    settings: DaemonSettings,
) -> tuple[tuple[ProcessSpec, ...], tuple[tuple[Path, tuple[str, ...]], ...]]:
    """What the controller is built from: the targets, and each root with its exclude globs."""
    return settings.processes, tuple((plan.path, plan.exclude) for plan in settings.roots)


class Notifier(Protocol):
    """What the daemon needs from :class:`cachewatchd.daemon.sd_notify.Notifier`."""

    def ready(self, status: str | None = None) -> bool: ...
    def reloading(self, status: str | None = None) -> bool: ...
    def stopping(self, status: str | None = None) -> bool: ...
    def status(self, text: str) -> bool: ...
