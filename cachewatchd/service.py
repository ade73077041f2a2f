"""The user service: render the systemd unit or launchd agent for this installation, install, uninstall.

The canonical files are package data (``cachewatchd/data/``). Rendering fills in the absolute command
line of the running installation (the ``cachewatchd`` console script next to ``sys.executable``, else
``sys.executable -m cachewatchd``) followed by ``--foreground`` and the roots. A plan lists every step
(write, remove, run ``systemctl``/``launchctl``); executing it never raises for a step: each outcome is
recorded, so a missing service manager (containers, CI, SSH without a user bus) leaves the file in place
and a list of commands to run by hand. Only the CLI prints.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from cachewatchd.errors import RuntimeFailure, UsageError

__all__ = [
    "LABEL",
    "UNIT_NAME",
    "Manager",
    "ServicePlan",
    "ServiceResult",
    "Step",
    "StepOutcome",
    "detect_manager",
    "install_service",
    "plan_install",
    "plan_uninstall",
    "render_plist",
    "render_unit",
    "service_command",
    "service_file_path",
    "systemd_quote",
    "uninstall_service",
]

LABEL = "io.github.cachewatchd"
"""launchd label of the agent (and the plist's file name without ``.plist``)."""
UNIT_NAME = "cachewatchd.service"
Manager = Literal["systemd", "launchd"]

_PLACEHOLDER = "@EXEC_START@"
_SAFE_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./$-]+\Z")
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


def service_command() -> tuple[str, ...]:
    """Absolute command that starts this installation of cachewatchd."""
    exe = Path(os.path.abspath(sys.executable))
    script = exe.parent / "cachewatchd"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(exe), "-m", "cachewatchd")


def systemd_quote(arg: str) -> str:
    """Quote *arg* as one word of a systemd command line (specifiers, ``$`` and C escapes)."""
    out = []
    for ch in arg:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch in "%$":
            out.append(ch * 2)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # undecodable byte of a filename (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif not ch.isprintable():
            out.append("".join(f"\\x{b:02x}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    text = "".join(out)
    return text if _SAFE_WORD.match(arg) else f'"{text}"'


def _systemd_executable(path: str) -> str:
    # systemd refuses quotes, backslashes and control characters in the executable's name and does
    # not expand $ there; % is still a specifier.
    if not os.path.isabs(path):
        raise UsageError(f"the service needs an absolute executable path, got {path!r}")
    if any(ch in "\\\"'" or not ch.isprintable() for ch in path):
        raise RuntimeFailure(
            f"systemd cannot start an executable whose path has quotes, backslashes or control "
            f"characters: {path!r}; install cachewatchd under another path"
        )
    text = path.replace("%", "%%")
    return f'"{text}"' if any(ch.isspace() for ch in path) else text


def _arguments(roots: Sequence[Path], command: Sequence[str] | None) -> tuple[list[str], list[str]]:
    cmd = list(command) if command is not None else list(service_command())
    for root in roots:
        if not root.is_absolute():
            raise UsageError(f"service roots must be absolute paths, got {str(root)!r}")
    return cmd, ["--foreground", *(str(r) for r in roots)]


def _template(name: str) -> str:
    return (
        resources.files("cachewatchd").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    )


def render_unit(roots: Sequence[Path] = (), *, command: Sequence[str] | None = None) -> str:
    """The systemd user unit for *command* (default: this installation) watching *roots*."""
    cmd, args = _arguments(roots, command)
    words = [_systemd_executable(cmd[0]), *(systemd_quote(a) for a in [*cmd[1:], *args])]
    template = _template(UNIT_NAME)
    if template.count(_PLACEHOLDER) != 1:
        raise RuntimeFailure(f"damaged unit template: expected one {_PLACEHOLDER}")
    return template.replace(_PLACEHOLDER, " ".join(words))


def render_plist(
    roots: Sequence[Path] = (),
    *,
    command: Sequence[str] | None = None,
    log_dir: Path | None = None,
) -> str:
    """The launchd agent for *command* watching *roots*, logging to *log_dir*/cachewatchd.log."""
    cmd, args = _arguments(roots, command)
    data = plistlib.loads(_template(f"{LABEL}.plist").encode("utf-8"))
    log = (log_dir if log_dir is not None else _launchd_log_dir()) / "cachewatchd.log"
    data["ProgramArguments"] = [*cmd, *args]
    data["StandardOutPath"] = data["StandardErrorPath"] = str(log)
    try:
        return plistlib.dumps(data, sort_keys=False).decode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError("a path of the service is not valid UTF-8; launchd cannot use it") from exc


def _launchd_log_dir() -> Path:
    from platformdirs.macos import MacOS

    return Path(MacOS("cachewatchd").user_log_dir)


def service_file_path(manager: Manager) -> Path:
    """Where the unit (``$XDG_CONFIG_HOME/systemd/user/``) or the agent (``~/Library/LaunchAgents``) goes."""
    if manager == "launchd":
        return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / "systemd" / "user" / UNIT_NAME


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
    log_dir = _launchd_log_dir()
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
