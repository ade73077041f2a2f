"""The user service: install and uninstall the systemd unit or launchd agent, as a plan of steps.

The file comes from :mod:`cachewatchd.service.files`. A plan lists every step (write, remove, run
``systemctl``/``launchctl``); executing it never raises for a step: each outcome is recorded, so a
missing service manager (containers, CI, SSH without a user bus) leaves the file in place and a list of
commands to run by hand. Only the CLI prints.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cachewatchd.errors import UsageError
from cachewatchd.service.files import (
    LABEL,
    UNIT_NAME,
    Manager,
    launchd_log_dir,
    render_plist,
    render_unit,
    service_file_path,
)

__all__ = [
    "ServicePlan",
    "ServiceResult",
    "Step",
    "StepOutcome",
    "detect_manager",
    "install_service",
    "plan_install",
    "plan_uninstall",
    "uninstall_service",
]

_NO_MANAGER = re.compile(
    r"failed to connect to .*bus|not been booted with systemd|could not find domain", re.IGNORECASE
)
_LINGER = "To keep it running while you are logged out: loginctl enable-linger $USER"


@dataclass(frozen=True)
class Step:
    """One action of a plan: ``write``/``remove``/``mkdir`` a path, or ``run`` a command."""

    kind: Literal["write", "remove", "mkdir", "run"]
    purpose: str
    path: Path | None = None
    argv: tuple[str, ...] = ()
    required: bool = True
    by_hand: str | None = None
    """What to run by hand when the service manager was unreachable (default: this command)."""

    def describe(self) -> str:
        """The step as a shell command line."""
        if self.kind == "run":
            return shlex.join(self.argv)
        verb = {"write": "write", "remove": "rm", "mkdir": "mkdir -p"}[self.kind]
        return f"{verb} {shlex.quote(str(self.path))}"


@dataclass(frozen=True)
class ServicePlan:
    action: Literal["install", "uninstall"]
    manager: Manager
    path: Path
    content: str | None
    steps: tuple[Step, ...]
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    status: Literal["done", "unchanged", "unavailable", "failed", "skipped"]
    detail: str = ""


@dataclass(frozen=True)
class ServiceResult:
    plan: ServicePlan
    dry_run: bool
    outcomes: tuple[StepOutcome, ...] = ()
    extra_manual: tuple[str, ...] = ()

    @property
    def failures(self) -> list[StepOutcome]:
        """Required steps the environment refused (the service manager was reachable, or a file op)."""
        return [o for o in self.outcomes if o.status == "failed" and o.step.required]

    @property
    def unavailable(self) -> list[StepOutcome]:
        return [o for o in self.outcomes if o.status == "unavailable"]

    @property
    def manual(self) -> list[str]:
        """Command lines still to run by hand (empty after a dry run or a complete run)."""
        todo: list[str] = []
        for o in self.outcomes:
            if o.status == "unavailable":
                todo.append(o.step.by_hand or o.step.describe())
            elif o.status == "skipped" or (o.status == "failed" and o.step.required):
                todo.append(o.step.describe())
        return todo + list(self.extra_manual)

    @property
    def complete(self) -> bool:
        return not self.dry_run and not self.manual


def detect_manager(platform: str | None = None) -> Manager:
    """``systemd`` on Linux, ``launchd`` on macOS; *platform* may name either or a ``sys.platform``."""
    name = platform or sys.platform
    if name == "systemd" or name.startswith("linux"):
        return "systemd"
    if name in ("launchd", "darwin"):
        return "launchd"
    raise UsageError(
        f"no user service manager supported on {name!r} (Linux systemd, macOS launchd)"
    )


def _resolve_roots(roots: Sequence[Path | str]) -> list[Path]:
    out: list[Path] = []
    for raw in roots:
        root = Path(raw).expanduser().resolve()
        if not root.is_dir():
            raise UsageError(f"{raw}: not a directory")
        if root not in out:
            out.append(root)
    return out


def plan_install(
    roots: Sequence[Path | str] = (),
    *,
    platform: str | None = None,
    command: Sequence[str] | None = None,
) -> ServicePlan:
    """Everything ``install-service`` would do, without doing it."""
    manager = detect_manager(platform)
    resolved = _resolve_roots(roots)
    path = service_file_path(manager)
    old = _read_or_none(path)
    if manager == "launchd":
        return _plan_launchd_install(path, render_plist(resolved, command=command), old)
    content = render_unit(resolved, command=command)
    ctl = ("systemctl", "--user")
    steps = [
        Step("write", "write the user unit", path=path),
        Step("run", "make systemd read the unit", argv=(*ctl, "daemon-reload")),
        Step("run", "start now and at every login", argv=(*ctl, "enable", "--now", UNIT_NAME)),
    ]
    if old is not None and old != content:
        steps.append(
            Step("run", "restart onto the new unit", argv=(*ctl, "try-restart", UNIT_NAME))
        )
    hints = (
        f"status: systemctl --user status {UNIT_NAME}",
        f"logs:   journalctl --user -u {UNIT_NAME} -f",
        _LINGER,
    )
    return ServicePlan("install", manager, path, content, tuple(steps), hints)


def _plan_launchd_install(path: Path, content: str, old: str | None) -> ServicePlan:
    log_dir = launchd_log_dir()
    domain = f"gui/{os.getuid()}"
    steps = [Step("mkdir", "create the log directory", path=log_dir)]
    if old is not None:
        unload = ("launchctl", "bootout", f"{domain}/{LABEL}")
        steps.append(Step("run", "unload the previous agent", argv=unload, required=False))
    steps += [
        Step("write", "write the LaunchAgent", path=path),
        Step("run", "load and start the agent", argv=("launchctl", "bootstrap", domain, str(path))),
    ]
    hints = (f"status: launchctl print {domain}/{LABEL}", f"logs:   {log_dir / 'cachewatchd.log'}")
    return ServicePlan("install", "launchd", path, content, tuple(steps), hints)


def plan_uninstall(*, platform: str | None = None) -> ServicePlan:
    """Everything ``uninstall-service`` would do; no steps when nothing is installed."""
    manager = detect_manager(platform)
    path = service_file_path(manager)
    if not path.exists():
        return ServicePlan("uninstall", manager, path, None, ())
    steps: tuple[Step, ...]
    if manager == "systemd":
        disable = ("systemctl", "--user", "disable", "--now", UNIT_NAME)
        # Once the file is gone, "disable" by hand no longer finds it: stop instead (a link left in
        # default.target.wants is reported separately).
        stop = f"systemctl --user stop {UNIT_NAME}"
        steps = (
            Step("run", "stop and disable", argv=disable, by_hand=stop),
            Step("remove", "remove the user unit", path=path),
            Step("run", "forget the unit", argv=("systemctl", "--user", "daemon-reload")),
        )
    else:
        target = f"gui/{os.getuid()}/{LABEL}"
        steps = (
            Step("run", "stop and unload", argv=("launchctl", "bootout", target), required=False),
            Step("remove", "remove the LaunchAgent", path=path),
        )
    return ServicePlan("uninstall", manager, path, None, steps)


def install_service(
    roots: Sequence[Path | str] = (),
    *,
    dry_run: bool = False,
    platform: str | None = None,
    command: Sequence[str] | None = None,
) -> ServiceResult:
    """Write the service file for *roots*, then enable and start it where the manager is reachable."""
    plan = plan_install(roots, platform=platform, command=command)
    if dry_run:
        return ServiceResult(plan, dry_run=True)
    return ServiceResult(plan, dry_run=False, outcomes=_execute(plan))


def uninstall_service(*, dry_run: bool = False, platform: str | None = None) -> ServiceResult:
    """Stop and disable the service, then remove its file: every step of the install, reversed."""
    plan = plan_uninstall(platform=platform)
    if dry_run:
        return ServiceResult(plan, dry_run=True)
    outcomes = _execute(plan)
    extra: tuple[str, ...] = ()
    link = plan.path.parent / "default.target.wants" / UNIT_NAME
    if plan.manager == "systemd" and link.is_symlink():
        extra = (f"rm {shlex.quote(str(link))}",)
    return ServiceResult(plan, dry_run=False, outcomes=outcomes, extra_manual=extra)


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _execute(plan: ServicePlan) -> tuple[StepOutcome, ...]:
    # Every command is tried even after "no user bus": systemctl enables and disables offline (the
    # symlink in default.target.wants) where it cannot start or stop, as in containers.
    outcomes: list[StepOutcome] = []
    missing: dict[str, StepOutcome] = {}
    stopped = False
    for step in plan.steps:
        if stopped:
            outcomes.append(StepOutcome(step, "skipped", "not attempted after a failed step"))
        elif step.kind == "run" and step.argv[0] in missing:
            outcomes.append(StepOutcome(step, "unavailable", missing[step.argv[0]].detail))
        else:
            outcome = _run(step) if step.kind == "run" else _file_step(step, plan.content)
            if outcome.status == "unavailable" and shutil.which(step.argv[0]) is None:
                missing[step.argv[0]] = outcome
            stopped = outcome.status == "failed" and step.required
            outcomes.append(outcome)
    return tuple(outcomes)


def _file_step(step: Step, content: str | None) -> StepOutcome:
    assert step.path is not None
    try:
        if step.kind == "mkdir":
            step.path.mkdir(parents=True, exist_ok=True)
        elif step.kind == "remove":
            step.path.unlink(missing_ok=True)
        else:
            assert content is not None
            if _read_or_none(step.path) == content:
                return StepOutcome(step, "unchanged")
            _atomic_write(step.path, content)
    except OSError as exc:
        return StepOutcome(step, "failed", f"{exc.strerror or exc}: {exc.filename or step.path}")
    return StepOutcome(step, "done")


def _atomic_write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run(step: Step) -> StepOutcome:
    exe = shutil.which(step.argv[0])
    if exe is None:
        return StepOutcome(step, "unavailable", f"{step.argv[0]} not found on PATH")
    try:
        proc = subprocess.run(
            [exe, *step.argv[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return StepOutcome(step, "failed", str(exc))
    if proc.returncode == 0:
        return StepOutcome(step, "done")
    said = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
    if _NO_MANAGER.search(said):
        return StepOutcome(step, "unavailable", f"no user service manager reachable ({said})")
    return StepOutcome(step, "failed", f"exit status {proc.returncode}: {said}")
