"""What a managed process target is: parsed from the user's config or the command line.

Shared by :mod:`cachewatchd.config.user` (which builds them) and the control modules (which act on them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Action", "ProcessSpec", "SupervisorSpec"]

Action = Literal["restart", "signal"]


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisord program reached over XML-RPC."""

    url: str
    """``unix:///path/to/supervisor.sock`` or ``http://127.0.0.1:9001``."""
    program: str
    """Program name, ``group:name`` or ``group:*``."""
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class ProcessSpec:
    """One managed target. Exactly one of the selectors is set."""

    name: str
    action: Action = "restart"
    signal: str | None = None
    """Signal name without ``SIG`` (e.g. ``"HUP"``) when ``action == "signal"``."""
    # selectors -------------------------------------------------------------
    supervisor: SupervisorSpec | None = None
    pidfile: Path | None = None
    match: str | None = None
    """Regular expression searched in the joined cmdline."""
    cwd: Path | None = None
    """With ``match``: only processes whose cwd is this directory."""
    systemd: str | None = None
    """A systemd *user* unit, e.g. ``app.service``."""
    command: tuple[str, ...] | None = None
    """The daemon's own child (``cachewatchd --foreground PATH -- COMMAND``)."""
    # options ---------------------------------------------------------------
    root: Path | None = None
    """Only changes under this root trigger the target; ``None`` means every root."""
    grace: float = 10.0
    import_check: str | None = None
    health_url: str | None = None
    health_timeout: float = 30.0
    log: Path | None = None
    """With ``pidfile``/``match`` and ``action = "restart"``: append the relaunched process's output here."""
