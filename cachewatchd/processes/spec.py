"""What a managed process target is: parsed from the user's config or the command line.

Shared by :mod:`cachewatchd.config.user` (which builds them) and the control modules (which act on them).
The checks of the values a user writes for a target (:func:`module_problem`, :func:`url_problem`)
live here too, so that the command line (``--import-check``, ``--health-url``) and the config
(``import_check``, ``health_url``) refuse the same values with the same words.
"""

from __future__ import annotations

import keyword
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "SCOPES",
    "Action",
    "DockerSpec",
    "ProcessSpec",
    "Scope",
    "SupervisorSpec",
    "module_problem",
    "url_problem",
]

Action = Literal["restart", "signal"]

Scope = Literal["roots", "any"]
SCOPES: tuple[Scope, ...] = ("roots", "any")
"""The values of a ``match`` target's ``scope``."""


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
class DockerSpec:
    """A Docker container by name or id (``container``), or the containers of a compose service
    (``project`` and ``service``), reached over the Engine API
    (:mod:`cachewatchd.processes.docker_api`)."""

    container: str | None = None
    project: str | None = None
    service: str | None = None
    host: str | None = None
    """``unix:///path/docker.sock``; ``None``: ``$DOCKER_HOST``, else the default sockets."""
    stop_timeout: float | None = None
    """Seconds a restart waits for the container to stop (the target's ``grace`` when the user
    gave one); ``None``: the container's own stop timeout."""

    def describe(self) -> str:
        """``container backend`` or ``compose service shop/backend``."""
        if self.container is not None:
            return f"container {self.container}"
        return f"compose service {self.project}/{self.service}"


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
    docker: DockerSpec | None = None
    """A Docker container, or a compose service's containers (``docker``/``compose`` tables)."""
    # options ---------------------------------------------------------------
    root: Path | None = None
    """Only changes under this root trigger the target; ``None`` means every root."""
    scope: Scope = "roots"
    """With ``match`` and no ``cwd``: ``"roots"`` acts only on the matching processes whose cwd, or
    a file named on whose command line (the script, the venv's ``bin/gunicorn``), lies under the
    target's roots (``root``, else every root of the daemon); ``"any"`` on every matching process
    of this user, wherever it runs."""
    grace: float = 10.0
    import_check: str | None = None
    health_url: str | None = None
    health_timeout: float = 30.0
    log: Path | None = None
    """With ``pidfile``/``match`` and ``action = "restart"``: append the relaunched process's output here."""
    listen: str | None = None
    """With ``command``: the address the daemon listens on and hands to each generation
    (``127.0.0.1:8000``, ``unix:/run/app.sock``; :mod:`cachewatchd.processes.listen`)."""
    warm: bool = True
    """With ``command``: fork each generation of a Python command from a preloaded interpreter
    (:mod:`cachewatchd.processes.warm`); ``False`` (``--cold``, ``warm = false``): always cold."""


def _text_problem(text: str) -> str | None:
    if not text.strip():
        return "must not be empty"
    if "\0" in text:
        return "must not contain a NUL character"
    return None


def module_problem(text: str) -> str | None:
    """Why *text* is not a module for the import gate (``import_check``, ``--import-check``), or
    ``None`` when it is a dotted module name (``app``, ``app.main``)."""
    problem = _text_problem(text)
    if problem is not None:
        return problem
    if not all(p.isidentifier() and not keyword.iskeyword(p) for p in text.split(".")):
        return f"is not a dotted module name: {text!r}"
    return None


def url_problem(text: str) -> str | None:
    """Why *text* is not a URL for the health check (``health_url``, ``--health-url``), or ``None``
    when it is an ``http://`` or ``https://`` URL with a host."""
    problem = _text_problem(text)
    if problem is not None:
        return problem
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be a URL like http://host/, not {text!r}"
    return None
