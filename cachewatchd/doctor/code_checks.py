"""``doctor`` checks for old code: what keeps or runs code older than the sources under the roots.

Dangerous and suspect cache entries (the audit), this user's Python processes started before the
newest source change (and the files processes hold open under the roots), environment variables that
change how Python writes or trusts its caches, and roots no cachewatchd daemon keeps fresh.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from cachewatchd.cache.audit import AuditError, AuditOptions, State, audit
from cachewatchd.config.settings import RootPlan
from cachewatchd.doctor.findings import MAX_DETAILS, Finding, Severity, plural
from cachewatchd.paths import is_under
from cachewatchd.processes.staleness import Change, SourceScan, importers, predates

__all__ = [
    "check_caches",
    "check_daemon",
    "check_environment",
    "check_processes",
]

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


def check_caches(plans: Sequence[RootPlan], prefix: str | None) -> list[Finding]:
    """Dangerous and suspect cache entries, plus a one-line summary of the audit."""
    roots = [plan.path for plan in plans]
    excludes = tuple(dict.fromkeys(x for plan in plans for x in plan.exclude))
    options = AuditOptions(excludes=excludes, pycache_prefix=Path(prefix) if prefix else None)
    report = audit(roots, options)
    findings = []
    where = shlex.join(str(r) for r in roots)
    for state, (severity, why, action) in _CACHE_ADVICE.items():
        entries = [e for e in report.entries if e.state is state]
        if entries:
            noun = "cache entry" if len(entries) == 1 else "cache entries"
            message = f"{len(entries)} {state.value} {noun}: {why}"
            details = tuple(f"{e.path}: {e.reason}" for e in entries[:MAX_DETAILS])
            todo = action.format(roots=where)
            findings.append(
                Finding(f"{state.value}-caches", severity, message, todo, None, details)
            )
    if report.errors:
        findings.append(_partial_audit(report.errors))
    summary = report.summary()
    counts = ", ".join(f"{n} {state}" for state, n in summary.items() if n)
    findings.append(
        Finding("caches", "info", f"{_entries(sum(summary.values()))}: {counts or 'none'}")
    )
    return findings


def _partial_audit(errors: Sequence[AuditError]) -> Finding:
    """What the audit could not read: its caches were not judged."""
    dirs = sum(1 for e in errors if e.path.is_dir())
    files = len(errors) - dirs
    parts = [plural(dirs, "directory", "directories")] if dirs else []
    parts += [plural(files, "file")] if files else []
    first = errors[0].path
    message = (
        f"the audit was partial: {' and '.join(parts)} could not be read (first: {first}); "
        "the caches there were not judged"
    )
    action = "run doctor as a user who can read them, or make them readable"
    details = tuple(f"{e.path}: {e.error}" for e in errors[:MAX_DETAILS])
    return Finding("audit-partial", "warning", message, action, None, details)


# -- processes ------------------------------------------------------------------------------------

_PYTHON_EXE = re.compile(r"^(python|pypy)[0-9.]*[dmtw]*$")


def _under(path: str | None, roots: Sequence[Path]) -> bool:
    return path is not None and any(is_under(os.path.normpath(path), r) for r in roots)


def _involved(info: Mapping[str, Any], opened: list[str], roots: Sequence[Path]) -> bool:
    args = [a for a in (info["cmdline"] or [])[1:] if os.path.isabs(a)]
    return bool(opened) or _under(info["cwd"], roots) or any(_under(a, roots) for a in args)


def _cachewatchd_pids() -> set[int]:
    """This process and every running cachewatchd daemon of this user, with the copies of itself
    a daemon forked (same command line). Not a daemon's managed processes: the own child runs the
    project's code and can be stale like any other."""
    from cachewatchd.daemon.registry import list_daemons, process_of

    own = {os.getpid()}
    for record in list_daemons():
        daemon = process_of(record)
        if daemon is None:
            continue
        own.add(daemon.pid)
        try:
            command = daemon.cmdline()
            descendants = daemon.children(recursive=True)
        except psutil.Error:
            continue
        for proc in descendants:
            try:
                if proc.cmdline() == command:
                    own.add(proc.pid)
            except psutil.Error:
                continue
    return own


def check_processes(roots: Sequence[Path], scan: SourceScan) -> list[Finding]:
    """This user's processes with files open under *roots*; Python ones older than the newest edit.

    Of a Python process working under a root, the processes that imported the code are the leaves of
    its tree (the worker, not the reloader): :func:`cachewatchd.processes.staleness.importers`; stale
    is :func:`cachewatchd.processes.staleness.predates` of *scan*'s newest change (*scan* is
    :func:`cachewatchd.processes.staleness.scan_sources` of the roots). cachewatchd itself (this
    process, the running daemons) is left out: it never imports the project's code.
    """
    own = _cachewatchd_pids()
    holding, pythons = _survey(roots, own)
    findings = []
    stale = _stale_importers(pythons, scan.newest, own)
    if stale and scan.newest is not None:
        findings.append(_stale_finding(stale, scan.newest))
    if holding:
        files = len(holding)
        holders = len({label for label, _ in holding})
        verb = "is" if files == 1 else "are"
        message = (
            f"{plural(files, 'file')} under the roots {verb} held open by "
            f"{plural(holders, 'process', 'processes')}"
        )
        details = tuple(f"{label}: {path}" for label, path in holding[:MAX_DETAILS])
        findings.append(Finding("open-files", "info", message, "", None, details))
    return findings


def _survey(
    roots: Sequence[Path], own: set[int]
) -> tuple[list[tuple[str, str]], list[psutil.Process]]:
    """This user's processes (but *own*): files they hold open under *roots* (three per process at
    most, ``("pid ...", path)``), and the Python ones that work under a root."""
    uid = os.getuid()
    holding: list[tuple[str, str]] = []
    pythons: list[psutil.Process] = []
    attrs = ["pid", "name", "exe", "cmdline", "cwd", "uids"]
    for proc in psutil.process_iter(attrs, ad_value=None):
        info = proc.info
        if info["pid"] in own or info["uids"] is None or info["uids"].real != uid:
            continue
        opened = _open_under(proc, roots)
        if opened:
            label = _label(proc)
            holding += [(label, path) for path in opened[:3]]
        if _is_python(info) and _involved(info, opened, roots):
            pythons.append(proc)
    return holding, pythons


def _open_under(proc: psutil.Process, roots: Sequence[Path]) -> list[str]:
    try:
        return sorted({f.path for f in proc.open_files() if _under(f.path, roots)})
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _is_python(info: Mapping[str, Any]) -> bool:
    exe = os.path.basename(info["exe"] or (info["cmdline"] or [""])[0])
    return _PYTHON_EXE.match(exe) is not None


def _stale_importers(
    pythons: Sequence[psutil.Process], newest: Change | None, own: set[int]
) -> list[str]:
    """This user's importers of *pythons* that predate *newest*: ``"pid ... (started ...)"``."""
    if newest is None:
        return []
    uid = os.getuid()
    stale: dict[int, str] = {}
    for leaf in importers(pythons):
        try:
            created = leaf.create_time()
            mine = leaf.uids().real == uid
        except psutil.Error:
            continue
        if leaf.pid not in own and mine and predates(created, newest):
            stale[leaf.pid] = f"{_label(leaf)} (started {_clock(created)})"
    return list(stale.values())


def _stale_finding(stale: Sequence[str], newest: Change) -> Finding:
    one = len(stale) == 1
    message = (
        f"{plural(len(stale), 'Python process', 'Python processes')} started before the newest "
        f"source change ({newest.path}, {_clock(newest.time)}): "
        f"{'it' if one else 'they'} may run old code"
    )
    them = "it" if one else "them"
    action = f"restart {them}, or let cachewatchd restart {them} (see `cachewatchd run --help`)"
    details = tuple(stale[:MAX_DETAILS])
    return Finding("stale-processes", "warning", message, action, None, details)


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


# -- daemon ---------------------------------------------------------------------------------------


def check_daemon(roots: Sequence[Path]) -> list[Finding]:
    """Whether a cachewatchd daemon of this user watches each root."""
    from cachewatchd.daemon.registry import find_daemons

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


def _entries(n: int) -> str:
    return f"{n} cache entry" if n == 1 else f"{n} cache entries"
