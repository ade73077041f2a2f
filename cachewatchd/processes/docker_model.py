"""What dockerd says about a container, typed: :class:`Container` and its :class:`Mount` s.

Read from ``GET /containers/{id}/json`` (:mod:`cachewatchd.processes.docker_api`) field by field:
a value of the wrong type is left out, never trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cachewatchd.errors import RuntimeFailure

__all__ = ["MESSAGE_LIMIT", "Container", "DockerError", "Mount", "parse_time"]

MESSAGE_LIMIT = 300
"""Characters of a text from dockerd kept in a message."""


class DockerError(RuntimeFailure):
    """dockerd could not be reached, or refused or botched the request; one line."""


def parse_time(text: object) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, ``Z``) as epoch seconds; ``None`` for its zero time
    (``0001-01-01T00:00:00Z``: never started) or anything else that is not a time."""
    if not isinstance(text, str) or len(text) > 64 or text.startswith("0001-"):
        return None
    body = text.strip()
    if body.endswith(("Z", "z")):
        body = body[:-1] + "+00:00"
    head, dot, rest = body.partition(".")
    if dot:  # keep microseconds: fromisoformat takes at most 6 digits on 3.10
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[:digits][:6].ljust(6, "0") + rest[digits:]
        body = f"{head}.{rest}"
    try:
        moment = datetime.fromisoformat(body)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class Mount:
    """One mount of a container: ``bind``, ``volume``, ``tmpfs``... and its paths."""

    type: str
    source: str
    """On the Docker host (a bind mount's host directory or file)."""
    destination: str
    """Inside the container."""


@dataclass(frozen=True)
class Container:
    """What ``GET /containers/{id}/json`` says about one container (the parts used here)."""

    id: str
    name: str
    state: str
    """``running``, ``exited``, ``restarting``, ``paused``, ``created``, ``dead``..."""
    started_at: float | None = None
    pid: int = 0
    """The main process in dockerd's PID namespace (0 when not running)."""
    exit_code: int = 0
    stop_timeout: int | None = None
    mounts: tuple[Mount, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def label(self) -> str:
        """``name (short id)``, how messages name the container."""
        return f"{self.name} ({self.id[:12]})"

    @classmethod
    def from_json(cls, data: object) -> Container:
        """The container of an inspect answer; :class:`DockerError` when it is not one."""
        if not isinstance(data, dict):
            raise DockerError("Docker answered a container inspect that is not an object")
        ident, state, config = data.get("Id"), data.get("State"), data.get("Config")
        if not isinstance(ident, str) or not isinstance(state, dict):
            raise DockerError("Docker answered a container inspect without Id or State")
        config = config if isinstance(config, dict) else {}
        labels = config.get("Labels")
        timeout = config.get("StopTimeout")
        return cls(
            id=ident,
            name=_text(data.get("Name")).lstrip("/") or ident[:12],
            state=_text(state.get("Status")) or "unknown",
            started_at=parse_time(state.get("StartedAt")),
            pid=_int(state.get("Pid")),
            exit_code=_int(state.get("ExitCode")),
            stop_timeout=timeout if type(timeout) is int else None,
            mounts=tuple(_mounts(data.get("Mounts"))),
            labels={
                str(k): str(v)
                for k, v in (labels.items() if isinstance(labels, dict) else ())
                if isinstance(v, str)
            },
        )


def _text(value: object) -> str:
    return value[:MESSAGE_LIMIT] if isinstance(value, str) else ""


def _int(value: object) -> int:
    return value if type(value) is int else 0


def _mounts(value: object) -> list[Mount]:
    found = []
    for item in value if isinstance(value, list) else ():
        if isinstance(item, dict) and isinstance(item.get("Source"), str):
            found.append(
                Mount(_text(item.get("Type")), item["Source"], _text(item.get("Destination")))
            )
    return found
