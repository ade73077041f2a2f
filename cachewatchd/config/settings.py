"""What a daemon runs with: roots and their effective settings, computed from config and command line.

Precedence per root (see :func:`plan_root`): the command line beats the user's config, which beats
the project's own ``pyproject.toml`` (``exclude`` and ``poll`` only), which beats the defaults.
Roots come from the command line, else the config's ``roots``, else the current directory; a root
inside another root is dropped (the outer one already covers it). :class:`RootPlan` is the one
per-root settings type: the daemon watches by it and ``doctor`` judges by it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cachewatchd.cache.audit import check_root
from cachewatchd.config.project import ProjectConfig, load_project_config
from cachewatchd.config.user import Config
from cachewatchd.paths import is_under
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.watch.mounts import PollMode

__all__ = ["CommandLine", "DaemonSettings", "RootPlan", "build_settings", "plan_root"]


@dataclass(frozen=True)
class RootPlan:
    """One root and how it is watched: its effective settings after precedence (:func:`plan_root`)."""

    path: Path
    poll: PollMode
    poll_source: str
    """Where ``poll`` came from: ``"command line"``, ``"config"``, ``"project"`` or ``"default"``."""
    exclude: tuple[str, ...] = ()
    poll_file: Path | None = field(default=None, compare=False)
    """The file that set ``poll``: the user's config or the root's ``pyproject.toml``."""

    @property
    def poll_reason(self) -> str:
        """Where ``poll`` came from, as the observer's reason names it when ``poll`` forces one:
        ``--poll always``, ``poll = "always" in /home/u/.config/cachewatchd/config.toml``,
        ``[tool.cachewatchd] poll = "always" in /srv/app/pyproject.toml``."""
        if self.poll_source == "config" and self.poll_file is not None:
            return f'poll = "{self.poll}" in {self.poll_file}'
        if self.poll_source == "project" and self.poll_file is not None:
            return f'[tool.cachewatchd] poll = "{self.poll}" in {self.poll_file}'
        if self.poll_source == "default":
            return f'poll = "{self.poll}" (the default)'
        return f"--poll {self.poll}"


def plan_root(
    root: Path,
    config: Config,
    project: ProjectConfig,
    *,
    cli_poll: PollMode | None = None,
    cli_exclude: Sequence[str] = (),
) -> RootPlan:
    """Effective ``poll`` and ``exclude`` for *root*, whose own ``pyproject.toml`` gave *project*.

    ``poll``: the command line beats the user's config (when the file sets ``poll``), which beats
    the project's ``pyproject.toml``, which beats the default ``"auto"``. ``exclude``: patterns add
    up (command line, then user config, then project), duplicates dropped.
    """
    poll: PollMode
    file: Path | None = None
    if cli_poll is not None:
        poll, source = cli_poll, "command line"
    elif "poll" in config.explicit:
        poll, source, file = config.poll, "config", config.path
    elif project.poll is not None:
        poll, source, file = project.poll, "project", root / "pyproject.toml"
    else:
        poll, source = config.poll, "default"
    exclude = tuple(dict.fromkeys([*cli_exclude, *config.exclude, *project.exclude]))
    return RootPlan(root, poll, source, exclude, poll_file=file)


@dataclass(frozen=True)
class CommandLine:
    """What the command line said (``None``: not given), kept to re-apply on a config reload."""

    paths: tuple[Path, ...] = ()
    poll: PollMode | None = None
    poll_interval: float | None = None
    reconcile_interval: float | None = None
    exclude: tuple[str, ...] = ()
    pycache_prefix: Path | None = None
    child: ProcessSpec | None = None


@dataclass(frozen=True)
class DaemonSettings:
    roots: tuple[RootPlan, ...]
    poll_interval: float = 1.0
    reconcile_interval: float = 600.0
    pycache_prefix: Path | None = None
    processes: tuple[ProcessSpec, ...] = ()
    """The own child (command line) first, then the config's ``[[process]]`` tables."""
    config_path: Path | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """Project-config warnings and dropped roots, for the log."""

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(plan.path for plan in self.roots)


def _outermost(roots: Sequence[Path]) -> tuple[list[Path], list[str]]:
    kept: list[Path] = []
    dropped: list[str] = []
    for root in sorted(dict.fromkeys(roots), key=lambda p: len(p.parts)):
        outer = next((k for k in kept if is_under(root, k)), None)
        if outer is None:
            kept.append(root)
        else:
            dropped.append(f"{root} is inside {outer}: watched once, as part of {outer}")
    order = {root: i for i, root in enumerate(roots)}
    return sorted(kept, key=lambda p: order[p]), dropped


def build_settings(config: Config, cli: CommandLine) -> DaemonSettings:
    """Effective settings; raises :class:`~cachewatchd.errors.UsageError` for an unusable root."""
    given = cli.paths or config.roots or (Path(os.getcwd()),)
    roots, warnings = _outermost([check_root(Path(p)) for p in given])
    plans = []
    for root in roots:
        project = load_project_config(root)
        warnings += project.warnings
        plans.append(plan_root(root, config, project, cli_poll=cli.poll, cli_exclude=cli.exclude))
    prefix = cli.pycache_prefix
    if prefix is None and os.environ.get("PYTHONPYCACHEPREFIX"):
        prefix = Path(os.environ["PYTHONPYCACHEPREFIX"])
    processes = ((cli.child,) if cli.child is not None else ()) + config.processes
    return DaemonSettings(
        roots=tuple(plans),
        poll_interval=cli.poll_interval or config.poll_interval,
        reconcile_interval=cli.reconcile_interval or config.reconcile_interval,
        pycache_prefix=Path(os.path.abspath(prefix)) if prefix is not None else None,
        processes=processes,
        config_path=config.path,
        warnings=tuple(warnings),
    )
