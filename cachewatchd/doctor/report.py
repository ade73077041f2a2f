"""``cachewatchd doctor``: everything that makes a code change not take effect, each with what to do.

Checks, each giving :class:`Finding` objects with a stable ``id``: dangerous cache entries (the audit),
Python processes started before the newest source change, bytecode-related environment variables, each
root's filesystem and whether native events really arrive there (a probe file), clock skew between this
machine and the filesystem (the probe's mtime), inotify limits and use, processes holding the project's
files open, the Docker containers that bind-mount the roots (and those started before the newest change
to their sources), and whether a cachewatchd daemon watches the root. A check that fails becomes a finding and
the others still run. Only the CLI prints.

This module runs the checks and collects the report; the checks live in :mod:`cachewatchd.doctor.code_checks`
(what keeps or runs old code) and :mod:`cachewatchd.doctor.fs_checks` (whether a change can be seen at all).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cachewatchd.config.settings import RootPlan
from cachewatchd.doctor.code_checks import (
    check_caches,
    check_daemon,
    check_environment,
    check_processes,
)
from cachewatchd.doctor.docker_checks import check_containers
from cachewatchd.doctor.findings import Finding, Severity
from cachewatchd.doctor.fs_checks import check_inotify, probe_root
from cachewatchd.errors import CachewatchdError
from cachewatchd.processes.staleness import scan_sources
from cachewatchd.watch.mounts import PollMode

__all__ = ["DoctorOptions", "DoctorReport", "Finding", "Severity", "run_doctor"]


@dataclass(frozen=True)
class DoctorOptions:
    poll: PollMode | None = None
    """Command-line override of the polling choice; ``None``: the config, the project, ``auto``."""
    probe_timeout: float = 2.0
    """Seconds to wait for a native event from the probe file."""
    environ: Mapping[str, str] | None = None
    """The environment to judge (default ``os.environ``)."""


@dataclass
class DoctorReport:
    roots: list[Path]
    findings: list[Finding] = field(default_factory=list)

    @property
    def needs_action(self) -> bool:
        return any(f.needs_action for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        findings = [{**asdict(f), "details": list(f.details)} for f in self.findings]
        roots = [str(r) for r in self.roots]
        return {
            "version": 1,
            "roots": roots,
            "needs_action": self.needs_action,
            "findings": findings,
        }


def run_doctor(roots: Sequence[Path], options: DoctorOptions | None = None) -> DoctorReport:
    """Run every check over *roots* (resolved directories).

    Raises :class:`~cachewatchd.errors.ConfigError` when the user's config is broken (the CLI
    prints its one line and exits 2): doctor judges the roots by that config, so it is not guessed.
    A project's broken ``pyproject.toml`` is a warning finding instead (the project's, not the
    user's). Every other check that fails becomes a finding.
    """
    opts = options if options is not None else DoctorOptions()
    env = os.environ if opts.environ is None else opts.environ
    report = DoctorReport(roots=list(roots))
    add = report.findings.extend
    plans = _plans(roots, opts.poll, add)
    prefix = env.get("PYTHONPYCACHEPREFIX") or None
    add(_guard("caches", lambda: check_caches(plans, prefix)))
    scan = scan_sources({plan.path: plan.exclude for plan in plans})
    add(_guard("processes", lambda: check_processes(roots, scan)))
    add(_guard("containers", lambda: check_containers(plans, env)))
    add(check_environment(env))
    for plan in plans:
        add(_guard("filesystem", _bind(probe_root, plan, opts.probe_timeout)))
    if sys.platform.startswith("linux"):
        add(_guard("inotify", lambda: check_inotify(scan.directories)))
    add(_guard("daemon", lambda: check_daemon(roots)))
    return report


def _bind(fn: Callable[..., list[Finding]], *args: Any) -> Callable[[], list[Finding]]:
    return lambda: fn(*args)


def _guard(check: str, run: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return run()
    except (OSError, ImportError, psutil.Error, CachewatchdError) as exc:
        text = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
        return [Finding(f"{check}-check-failed", "warning", f"the {check} check failed: {text}")]


def _plans(
    roots: Sequence[Path], cli_poll: PollMode | None, add: Callable[[list[Finding]], None]
) -> list[RootPlan]:
    """Per root: poll mode, where it came from, excludes (command line > config > project)."""
    from cachewatchd.config.project import load_project_config
    from cachewatchd.config.settings import plan_root
    from cachewatchd.config.user import load_config

    config = load_config()  # a broken config is the user's to fix first: ConfigError, exit 2
    plans = []
    for root in roots:
        project = load_project_config(root)
        add(
            [Finding("project-config", "warning", w, "fix it", str(root)) for w in project.warnings]
        )
        plans.append(plan_root(root, config, project, cli_poll=cli_poll))
    return plans
