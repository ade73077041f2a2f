"""A managed target's status: its state, and its entry in the status document.

The controller gives one :class:`TargetStatus` per target. :meth:`TargetStatus.to_json` is the one
place such a record becomes an entry of ``processes`` in the document ``cachewatchd status --json``
prints; :meth:`TargetStatus.from_json` reads the entry back. Every time in that document is written
by :func:`timestamp`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = ["ContainerStatus", "Observed", "TargetState", "TargetStatus", "timestamp"]


class TargetState(str, enum.Enum):
    """What a managed target is doing; the value is its ``state`` in the status document."""

    STARTING = "starting"
    """Not looked at yet."""
    RUNNING = "running"
    RESTARTING = "restarting"
    """An action (restart or signal) is under way."""
    BLOCKED = "blocked"
    """The import gate refused the last restart; the old process keeps running."""
    FAILED = "failed"
    """The last action failed."""
    NOT_FOUND = "not-found"
    """No process: pidfile missing, unreadable or naming a dead pid, nothing matches."""
    UNREACHABLE = "unreachable"
    """supervisord or systemd cannot be asked."""
    BACKOFF = "backoff"
    """The own child crashed; its restart waits for the crash-loop backoff."""
    EXITED = "exited"
    """The own child exited on its own; the next batch starts it again."""
    STOPPED = "stopped"
    """The controller stopped."""

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Observed:
    """What a target that keeps track of its own process knows, read live (the own child)."""

    pids: tuple[int, ...]
    problem: str | None = None
    """Why there is no process (the last start failed)."""
    idle_state: TargetState | None = None
    """The state to show, without a process, while no action is under way."""
    crashes: int = 0
    """Times the process exited on its own with an error (the own child's crash loop)."""
    last_exit: str | None = None
    """How it last exited on its own, with its last stderr line (see :class:`TargetStatus`)."""


@dataclass(frozen=True)
class ContainerStatus:
    """One container of a Docker target, as dockerd last described it."""

    name: str
    id: str
    """The short id (12 hex digits)."""
    state: str
    """dockerd's word: ``running``, ``restarting``, ``exited (code 1)``..."""
    started_at: str | None = None
    """When it last started, as :func:`timestamp` writes it."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "state": self.state,
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, entry: object) -> ContainerStatus:
        """The record :meth:`to_json` wrote; :class:`ValueError` when *entry* is not one."""
        fields = entry if isinstance(entry, dict) else {}
        name, ident, state = fields.get("name"), fields.get("id"), fields.get("state")
        started = fields.get("started_at")
        if not (isinstance(name, str) and isinstance(ident, str) and isinstance(state, str)):
            raise ValueError("malformed container status")  # noqa: TRY004 - bad data
        if started is not None and not isinstance(started, str):
            raise ValueError("malformed container status")
        return cls(name, ident, state, started)


@dataclass(frozen=True)
class TargetStatus:
    """One managed target as ``cachewatchd status`` shows it."""

    name: str
    kind: str
    """``child``, ``supervisor``, ``process``, ``systemd`` or ``docker``."""
    state: TargetState
    pids: tuple[int, ...] = ()
    restarts: int = 0
    """Actions (restarts or signals) that succeeded; the own child's crash restarts not included."""
    last_action: str | None = None
    """How the last action ended, e.g. ``restarted in 0.3s`` or ``blocked: import app failed...``."""
    last_action_at: str | None = None
    """When, as :func:`timestamp` writes it."""
    pending: bool = False
    """A batch asked for another action, not started yet."""
    stale_reason: str | None = None
    """Which process started before which source changed; ``None`` when not stale."""
    problem: str | None = None
    """Why the target has no process right now."""
    crashes: int = 0
    """The own child: times it exited on its own with an error (each one restarted after the
    crash-loop backoff). Absent from documents written before it existed: 0."""
    last_exit: str | None = None
    """The own child: how it last exited on its own, with the last line it wrote to stderr, e.g.
    ``exited with code 1: ERROR: [Errno 98] ... address already in use``; ``None`` until it did."""
    containers: tuple[ContainerStatus, ...] = ()
    """A Docker target: its containers' state and start time. Absent from older documents: ()."""

    @property
    def stale(self) -> bool:
        """A process of the target runs code older than its sources."""
        return self.stale_reason is not None

    def to_json(self) -> dict[str, Any]:
        """The entry of ``processes`` in the status document."""
        return {
            "name": self.name,
            "kind": self.kind,
            "pids": list(self.pids),
            "state": self.state.value,
            "restarts": self.restarts,
            "last_action": self.last_action,
            "last_action_at": self.last_action_at,
            "pending": self.pending,
            "stale": self.stale,
            "stale_reason": self.stale_reason,
            "problem": self.problem,
            "crashes": self.crashes,
            "last_exit": self.last_exit,
            "containers": [c.to_json() for c in self.containers],
        }

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> TargetStatus:
        """The record :meth:`to_json` wrote *entry* from; :class:`ValueError` when it is not one."""
        try:
            status = cls(
                name=entry["name"],
                kind=entry["kind"],
                state=TargetState(entry["state"]),
                pids=tuple(entry["pids"]),
                restarts=entry["restarts"],
                last_action=entry["last_action"],
                last_action_at=entry["last_action_at"],
                pending=entry["pending"],
                stale_reason=entry["stale_reason"],
                problem=entry["problem"],
                crashes=entry.get("crashes", 0),
                last_exit=entry.get("last_exit"),
                containers=tuple(map(ContainerStatus.from_json, entry.get("containers") or ())),
            )
            stale = entry["stale"]
        except KeyError as exc:
            raise ValueError(f"target status without {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed target status: {exc}") from None
        texts = (status.name, status.kind)
        optional = (
            status.last_action,
            status.last_action_at,
            status.stale_reason,
            status.problem,
            status.last_exit,
        )
        well_typed = (
            all(isinstance(text, str) for text in texts)
            and all(text is None or isinstance(text, str) for text in optional)
            and all(type(pid) is int for pid in status.pids)
            and type(status.restarts) is int
            and type(status.crashes) is int
            and type(status.pending) is bool
            and stale is status.stale
        )
        if not well_typed:
            raise ValueError(f"malformed target status {status.name!r}")
        return status


def timestamp(when: datetime | None = None) -> str:
    """*when* (default: now) the way the status document writes every time: UTC, ISO 8601, to the
    second, e.g. ``2026-11-21T19:59:07+00:00``."""
    moment = datetime.now(timezone.utc) if when is None else when.astimezone(timezone.utc)
    return moment.isoformat(timespec="seconds")
