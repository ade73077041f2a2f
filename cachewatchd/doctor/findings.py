"""What a ``doctor`` check gives back: a :class:`Finding`.

Shared by :mod:`cachewatchd.doctor.report` (which runs the checks and collects the report),
:mod:`cachewatchd.doctor.code_checks` and :mod:`cachewatchd.doctor.fs_checks` (the checks themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_DETAILS", "Finding", "Severity", "plural"]

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


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``"1 process"``, ``"2 processes"``: *count* with the noun it needs (default: *singular* + s)."""
    noun = singular if count == 1 else (plural_form or f"{singular}s")
    return f"{count} {noun}"
