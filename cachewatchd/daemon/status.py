"""What the daemon says about itself: its state, the status document, the one-line status for systemd.

The status document is what ``cachewatchd status`` shows and what the daemon's record in the registry
holds; :class:`~cachewatchd.daemon.loop.Daemon` publishes it after every batch, reload or change in a
managed target, and every :data:`STATUS_REFRESH` seconds while nothing happens.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cachewatchd.processes.status import TargetStatus

__all__ = ["STATUS_REFRESH", "DaemonState", "status_document", "status_line"]


class DaemonState(str, enum.Enum):
    """What the daemon is doing; the value is its ``state`` in the status document."""

    STARTING = "starting"
    """Attaching the roots and auditing each once; the managed processes are not started yet."""
    READY = "ready"
    """Watching every root; the managed processes run."""
    STOPPING = "stopping"
    """Asked to stop, or a thread died: detaching, finishing the batch, stopping the processes."""

    def __str__(self) -> str:
        return str(self.value)


STATUS_REFRESH = 10.0
"""Seconds between status-record refreshes while nothing happens (a batch, a reload or a change
in a managed target's status publishes at once)."""


def status_document(
    state: DaemonState,
    observers: Mapping[str, dict[str, Any]],
    counters: dict[str, Any],
    last_event: str | None,
    processes: Sequence[TargetStatus],
    config_path: Path | None,
) -> dict[str, Any]:
    """What ``cachewatchd status`` shows for one daemon."""
    return {
        "state": state.value,
        "observers": observers,
        "counters": counters,
        "last_event": last_event,
        "processes": [t.to_json() for t in processes],
        "config": str(config_path) if config_path else None,
    }


def status_line(status: Mapping[str, Any]) -> str:
    """The status document in one line (systemd's ``STATUS=``)."""
    counters = status["counters"]
    kinds = sorted({o["observer"] for o in status["observers"].values()})
    return (
        f"watching {len(status['observers'])} root(s) ({', '.join(kinds) or 'none'}); "
        f"{counters['invalidations']} invalidated, {counters['rescans']} rescans"
    )
