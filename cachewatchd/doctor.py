"""``cachewatchd doctor``: everything that makes a code change not take effect, each with what to do.

Checks, each giving :class:`Finding` objects with a stable ``id``: dangerous cache entries (the audit),
Python processes started before the newest source change, bytecode-related environment variables, each
root's filesystem and whether native events really arrive there (a probe file), clock skew between this
machine and the filesystem (the probe's mtime), inotify limits and use, processes holding the project's
files open, and whether a cachewatchd daemon watches the root. A check that fails becomes a finding and
the others still run. Only the CLI prints.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psutil

from cachewatchd.audit import AuditOptions, State, audit
from cachewatchd.errors import CachewatchdError
from cachewatchd.fstype import PollMode, choose_observer, mount_for
from cachewatchd.walk import WalkOptions, walk

__all__ = ["DoctorOptions", "DoctorReport", "Finding", "Severity", "run_doctor"]

Severity = Literal["info", "warning", "error"]
_PYTHON_EXE = re.compile(r"^(python|pypy)[0-9.]*[dmtw]*$")
_SKEW_LIMIT = 2.0  # seconds: beyond FAT's 2 s mtime granularity
_MAX_DETAILS = 10


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
        return {"roots": roots, "needs_action": self.needs_action, "findings": findings}


@dataclass(frozen=True)
class _RootSettings:
    poll: PollMode
    source: str
    exclude: tuple[str, ...]


@dataclass
class _SourceScan:
    newest: float = 0.0
    newest_path: Path | None = None
    directories: int = 0


def run_doctor(roots: Sequence[Path], options: DoctorOptions | None = None) -> DoctorReport:
    """Run every check over *roots* (resolved directories)."""
    opts = options if options is not None else DoctorOptions()
    env = os.environ if opts.environ is None else opts.environ
    report = DoctorReport(roots=list(roots))
    add = report.findings.extend
    settings = _settings(roots, opts.poll, add)
    prefix = env.get("PYTHONPYCACHEPREFIX") or None
    add(_guard("caches", lambda: check_caches(roots, settings, prefix)))
    scan = _scan_sources(roots, settings)
    add(_guard("processes", lambda: check_processes(roots, scan)))
    add(check_environment(env))
    for root in roots:
        add(_guard("filesystem", _bind(check_root, root, settings[root], opts.probe_timeout)))
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


def _settings(
    roots: Sequence[Path], cli_poll: PollMode | None, add: Callable[[list[Finding]], None]
) -> dict[Path, _RootSettings]:
    """Per root: poll mode, where it came from, excludes (command line > config > project)."""
    from cachewatchd.config import Config, load_config, load_project_config, root_settings

    try:
        config = load_config()
    except CachewatchdError as exc:
        add([Finding("config", "error", exc.message, "fix the config file")])
        config = Config()
    out: dict[Path, _RootSettings] = {}
    for root in roots:
        project = load_project_config(root)
        add(
            [Finding("project-config", "warning", w, "fix it", str(root)) for w in project.warnings]
        )
        eff = root_settings(config, project, cli_poll=cli_poll)
        out[root] = _RootSettings(eff.poll, eff.poll_source, eff.exclude)
    return out


# -- caches ---------------------------------------------------------------------------------------

# fmt: off
_CACHE_ADVICE: dict[State, tuple[Severity, str, str]] = {
    State.STALE: ("error", "Python loads them although the source changed: it runs OLD code",
                  "cachewatchd clean {roots}, then restart the processes that imported them"),
    State.CORRUPT: ("error", "the import fails or recompiles every time", "cachewatchd clean {roots}"),
    State.SOURCELESS: ("error", "legacy pycs whose .py is gone: Python still imports them",
                       "delete them unless shipped on purpose: cachewatchd clean --sourceless {roots}"),
    State.SUSPECT: ("warning", "written by another Python version before their source changed: they "
                    "may be stale", "cachewatchd clean {roots} (or scan with the Python that wrote them)"),
}
# fmt: on


def check_caches(
    roots: Sequence[Path], settings: Mapping[Path, _RootSettings], prefix: str | None
) -> list[Finding]:
    """Dangerous and suspect cache entries, plus a one-line summary of the audit."""
    excludes = tuple(dict.fromkeys(x for r in roots for x in settings[r].exclude))
    options = AuditOptions(excludes=excludes, pycache_prefix=Path(prefix) if prefix else None)
    report = audit(list(roots), options)
    findings = []
    where = shlex.join(str(r) for r in roots)
    for state, (severity, why, action) in _CACHE_ADVICE.items():
        entries = [e for e in report.entries if e.state is state]
        if entries:
            message = f"{len(entries)} {state.value} cache entries: {why}"
            details = tuple(f"{e.path}: {e.reason}" for e in entries[:_MAX_DETAILS])
            todo = action.format(roots=where)
            findings.append(
                Finding(f"{state.value}-caches", severity, message, todo, None, details)
            )
    counts = ", ".join(f"{n} {state}" for state, n in report.summary().items() if n)
    findings.append(
        Finding("caches", "info", f"{len(report.entries)} cache entries: {counts or 'none'}")
    )
    return findings


# -- processes ------------------------------------------------------------------------------------


def _scan_sources(roots: Sequence[Path], settings: Mapping[Path, _RootSettings]) -> _SourceScan:
    """The newest ``max(mtime, ctime)`` of the sources under *roots*, and how many directories."""
    scan = _SourceScan()
    for root in roots:
        options = WalkOptions(excludes=settings[root].exclude)
        for _dirpath, entries in walk(str(root), options, lambda _path, _exc: None):
            scan.directories += 1
            for entry in entries:
                if not entry.name.endswith((".py", ".pyw")):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if max(st.st_mtime, st.st_ctime) > scan.newest:
                    scan.newest, scan.newest_path = max(st.st_mtime, st.st_ctime), Path(entry.path)
    return scan


def _under(path: str | None, roots: Sequence[Path]) -> bool:
    return path is not None and any(Path(path).is_relative_to(r) for r in roots)


def _involved(info: Mapping[str, Any], opened: list[str], roots: Sequence[Path]) -> bool:
    args = [a for a in (info["cmdline"] or [])[1:] if os.path.isabs(a)]
    return bool(opened) or _under(info["cwd"], roots) or any(_under(a, roots) for a in args)


def check_processes(roots: Sequence[Path], scan: _SourceScan) -> list[Finding]:
    """This user's processes with files open under *roots*; Python ones older than the newest edit.

    Of a Python process working under a root, the processes that imported the code are the leaves of
    its tree (the worker, not the reloader): :func:`cachewatchd.stale.importers`.
    """
    from cachewatchd.stale import SLACK, importers

    me, uid = os.getpid(), os.getuid()
    holding: list[str] = []
    candidates: list[psutil.Process] = []
    attrs = ["pid", "name", "exe", "cmdline", "cwd", "uids"]
    for proc in psutil.process_iter(attrs, ad_value=None):
        info = proc.info
        if info["pid"] == me or info["uids"] is None or info["uids"].real != uid:
            continue
        try:
            opened = sorted({f.path for f in proc.open_files() if _under(f.path, roots)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            opened = []
        holding += [f"{_label(proc)}: {path}" for path in opened[:3]]
        exe = os.path.basename(info["exe"] or (info["cmdline"] or [""])[0])
        if _PYTHON_EXE.match(exe) and _involved(info, opened, roots):
            candidates.append(proc)
    stale: dict[int, str] = {}
    for leaf in importers(candidates):
        try:
            created = leaf.create_time()
            mine = leaf.uids().real == uid
        except psutil.Error:
            continue
        if leaf.pid != me and mine and created + SLACK < scan.newest:
            stale[leaf.pid] = f"{_label(leaf)} (started {_clock(created)})"
    findings = []
    if stale:
        message = (
            f"{len(stale)} Python processes started before the newest source change "
            f"({scan.newest_path}, {_clock(scan.newest)}): they may run old code"
        )
        action = "restart them, or let cachewatchd restart them (see `cachewatchd run --help`)"
        details = tuple(stale.values())[:_MAX_DETAILS]
        findings.append(Finding("stale-processes", "warning", message, action, None, details))
    if holding:
        message = f"{len(holding)} files under the roots are held open by processes"
        details = tuple(holding[:_MAX_DETAILS])
        findings.append(Finding("open-files", "info", message, "", None, details))
    return findings


def _label(proc: psutil.Process) -> str:
    try:
        command = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        command = "?"
    return f"pid {proc.pid} {command[:120]}"


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


# -- environment ----------------------------------------------------------------------------------

# fmt: off
_ENV_ADVICE: tuple[tuple[str, str, Severity, str, str], ...] = (
    ("PYTHONDONTWRITEBYTECODE", "env-dont-write-bytecode", "info",
     "PYTHONDONTWRITEBYTECODE={value}: Python writes no new caches but still READS those on disk, "
     "stale ones included",
     "keep them honest with `cachewatchd scan` or the daemon, or unset the variable"),
    ("PYTHONPYCACHEPREFIX", "env-pycache-prefix", "info",
     "PYTHONPYCACHEPREFIX={value}: caches live in that tree (audited too), not in __pycache__; "
     "processes started without it still use __pycache__",
     "give every process of the project, and cachewatchd, the same value"),
    ("SOURCE_DATE_EPOCH", "env-source-date-epoch", "info",
     "SOURCE_DATE_EPOCH={value}: py_compile and compileall write checked-hash pycs; tools that "
     "honour it also clamp file mtimes, which defeats timestamp pycs",
     "unset it outside reproducible builds"),
    ("PYTHONCHECKHASHBASEDPYCS", "env-check-hash-pycs", "warning",
     "PYTHONCHECKHASHBASEDPYCS={value}: hash-based pycs are never checked against their source",
     "unset PYTHONCHECKHASHBASEDPYCS"),
)
# fmt: on


def check_environment(env: Mapping[str, str]) -> list[Finding]:
    """Variables that change how Python writes or trusts its caches."""
    findings = []
    for var, id_, severity, message, action in _ENV_ADVICE:
        value = env.get(var, "")
        if value and (var != "PYTHONCHECKHASHBASEDPYCS" or value == "never"):
            findings.append(Finding(id_, severity, message.format(value=value), action))
    return findings


# -- filesystem, events, clock --------------------------------------------------------------------

_POLL_ADVICE = (
    'poll this root: `--poll always`, or poll = "always" in the config or [tool.cachewatchd]'
)


def check_root(root: Path, settings: _RootSettings, timeout: float) -> list[Finding]:
    """Filesystem type, observer choice, native-event probe and clock skew for one root."""
    mount = mount_for(root)
    choice = choose_observer(root, settings.poll)
    fs = f"{mount.fstype} mounted at {mount.mountpoint}" if mount else "unknown filesystem"
    where = str(root)
    how = "native events" if choice.kind == "native" else "polling"
    message = f"{fs}; watched by {how} ({choice.reason})"
    findings = [Finding("filesystem", "info", message, "", where)]
    if settings.poll == "always":
        message = f'polling is forced for this root (poll = "always" from the {settings.source})'
        findings.append(Finding("polling", "info", message, "", where))
    probe = _probe(root, timeout)
    if isinstance(probe[0], str):
        severity: Severity = (
            "warning" if probe[0] == "warning" and choice.kind == "native" else "info"
        )
        action = _POLL_ADVICE if severity == "warning" else ""
        return [*findings, Finding("events", severity, str(probe[1]), action, where)]
    arrived, skew = probe
    if choice.kind == "native" and not arrived:
        message = (
            f"no native event arrived within {timeout:g} s of writing a file: changes are missed"
        )
        findings.append(Finding("events", "warning", message, _POLL_ADVICE, where))
    else:
        seen = "arrive" if arrived else "do not arrive"
        note = " (polling is not needed)" if arrived and choice.kind == "polling" else ""
        findings.append(Finding("events", "info", f"native events {seen}{note}", "", where))
    if abs(skew) > _SKEW_LIMIT:
        message = f"a file written now gets an mtime {skew:+.1f} s off this machine's clock"
        action = "synchronise the clocks (NTP) of this machine and the file server"
        findings.append(Finding("clock-skew", "warning", message, action, where))
    return findings


def _probe(root: Path, timeout: float) -> tuple[bool, float] | tuple[Severity, str]:
    """Write and remove a probe file: (native event seen, its mtime minus the wall clock), or
    (severity, why not probed)."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    if not os.access(root, os.W_OK):
        return "info", "not writable here: native events and the clock were not probed"
    name = f".cachewatchd-doctor-{secrets.token_hex(6)}"
    seen = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if os.path.basename(os.fsdecode(event.src_path)) == name:
                seen.set()

    observer = Observer()
    try:
        observer.schedule(Handler(), str(root), recursive=False)
        observer.start()
    except OSError as exc:  # e.g. the inotify instance or watch limit
        return "warning", f"no native watcher could be started: {exc.strerror or exc}"
    path = root / name
    try:
        before = time.time()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"cachewatchd doctor probe\n")
        finally:
            os.close(fd)
        after = time.time()
        mtime = path.stat().st_mtime
        arrived = seen.wait(timeout)
    except OSError as exc:
        return "info", f"no probe file could be written ({exc.strerror or exc}): nothing probed"
    finally:
        path.unlink(missing_ok=True)
        observer.stop()
        observer.join()
    return arrived, (mtime - after if mtime > after else min(mtime - before, 0.0))


# -- inotify --------------------------------------------------------------------------------------


def check_inotify(directories: int) -> list[Finding]:
    """Limits from /proc/sys/fs/inotify against this user's inotify instances and watches."""
    limits = Path("/proc/sys/fs/inotify")
    max_watches = int((limits / "max_user_watches").read_text())
    max_instances = int((limits / "max_user_instances").read_text())
    instances, watches = _inotify_use(os.getuid())
    message = (
        f"this user has {instances}/{max_instances} inotify instances and {watches}/{max_watches} "
        f"watches in use; the roots need about {directories} watches"
    )
    findings = [Finding("inotify", "info", message)]
    sysctl = "sudo sysctl fs.inotify.{}={} (and persist it in /etc/sysctl.d/)"
    if watches + directories > max_watches:
        message = (
            "not enough inotify watches left for the roots: directories beyond are not watched"
        )
        action = sysctl.format("max_user_watches", max(524288, 2 * (watches + directories)))
        findings.append(Finding("inotify-watches", "warning", message, action))
    if instances >= max_instances:
        message = "no inotify instance left: starting a watcher fails"
        action = sysctl.format("max_user_instances", max(1024, 2 * max_instances))
        findings.append(Finding("inotify-instances", "warning", message, action))
    return findings


def _inotify_use(uid: int) -> tuple[int, int]:
    """(inotify instances, watches) of *uid*'s processes, from /proc/*/fd and /proc/*/fdinfo."""
    instances = watches = 0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
                    watches += sum(1 for line in info if line.startswith("inotify wd:"))
            except OSError:
                continue
            instances += 1
    return instances, watches


# -- daemon ---------------------------------------------------------------------------------------


def check_daemon(roots: Sequence[Path]) -> list[Finding]:
    """Whether a cachewatchd daemon of this user watches each root."""
    from cachewatchd.registry import find_daemons

    findings = []
    for root in roots:
        pids = ", ".join(str(d["pid"]) for d in find_daemons([root]))
        if pids:
            findings.append(
                Finding("daemon", "info", f"watched by cachewatchd (pid {pids})", "", str(root))
            )
        else:
            message = "no cachewatchd daemon watches this root: caches can go stale again"
            quoted = shlex.quote(str(root))
            action = f"cachewatchd {quoted}   (or: cachewatchd install-service {quoted})"
            findings.append(Finding("daemon", "info", message, action, str(root)))
    return findings
