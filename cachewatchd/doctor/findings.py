"""What a ``doctor`` check judges and what it gives back: the per-root settings and a :class:`Finding`.

Shared by :mod:`cachewatchd.doctor.report` (which runs the checks and collects the report),
:mod:`cachewatchd.doctor.code_checks` and :mod:`cachewatchd.doctor.fs_checks` (the checks themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cachewatchd.watch.mounts import PollMode

__all__ = ["MAX_DETAILS", "Finding", "RootSettings", "Severity"]

Severity = Literal["info", "warning", "error"]
MAX_DETAILS = 10
"""At most this many detail lines per finding."""


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    message: str
    action: str = ""
    root: str | None = None
    details: tuple[str, ...] = ()

    @property
    def needs_action(self) -> bool:
        return self.severity != "info"


@dataclass(frozen=True)
class RootSettings:
    """How the daemon would watch one root: poll mode, where it came from, excludes."""

    poll: PollMode
    source: str
    exclude: tuple[str, ...]
