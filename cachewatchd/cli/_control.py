"""``cachewatchd stop`` and ``cachewatchd status``: this user's running daemons."""

from __future__ import annotations

import argparse
import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cachewatchd.cli._args import RawDescriptionHelpFormatter, seconds
from cachewatchd.errors import EXIT_OK, RuntimeFailure, UsageError

__all__ = ["register"]

_STOP_EPILOG = """\
exit status:
  0  stopped (or no daemon was running)
  2  usage error, a PATH that does not exist
  3  a daemon was still running after --timeout seconds, or could not be signalled
"""


def register(sub: Any) -> None:
    stop = sub.add_parser(
        "stop",
        help="stop this user's daemons (those watching PATH)",
        description="Stop this user's daemons: all of them, or those whose roots overlap a PATH.",
        epilog=_STOP_EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    stop.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="stop only the daemons watching PATH (default: every daemon of this user)",
    )
    stop.add_argument(
        "--timeout",
        type=seconds,
        default=30.0,
        metavar="S",
        help="seconds to wait for them to exit (default 30)",
    )
    stop.set_defaults(handler=_stop)

    status = sub.add_parser(
        "status",
        help="show this user's running daemons",
        description="Show this user's running daemons: roots, observers, counters, processes.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=_status)


# -- stop --------------------------------------------------------------------------------
def _stop(args: argparse.Namespace) -> int:
    import signal

    import psutil

    from cachewatchd.config.reader import BOUNDS, check_number
    from cachewatchd.daemon.registry import find_daemons, process_of
    from cachewatchd.processes.os_procs import owned, wait_gone

    check_number("--timeout", args.timeout, *BOUNDS["stop_timeout"])
    for path in args.paths:
        _existing(path)
    daemons = find_daemons(list(args.paths) or None)
    procs = []
    refused: list[str] = []
    for record in daemons:
        proc = process_of(record)
        if proc is None:
            continue
        if not owned(proc):  # the record's uid is what the file says; the process tells the truth
            refused.append(f"pid {proc.pid} belongs to another user: not signalled")
            continue
        try:
            proc.send_signal(signal.SIGTERM)  # psutil refuses a recycled pid
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            refused.append(f"pid {proc.pid}: not permitted to signal it")
            continue
        procs.append(proc)
    if not procs and not refused:
        where = f" for {', '.join(str(p) for p in args.paths)}" if args.paths else ""
        print(f"no cachewatchd daemon running{where}")
        return EXIT_OK
    left = wait_gone(procs, args.timeout)  # a zombie is gone: its parent may not be us
    for proc in procs:
        if proc not in left:
            print(f"stopped cachewatchd (pid {proc.pid})")
    if left:
        pids = ", ".join(str(p.pid) for p in left)
        refused.append(f"daemon(s) still running after {args.timeout:g}s: pid {pids}")
    if refused:
        raise RuntimeFailure("; ".join(refused))
    return EXIT_OK


def _existing(path: Path) -> Path:
    """*path* resolved; a :class:`UsageError` (exit 2) when it does not exist or cannot be read."""
    try:
        return path.expanduser().resolve(strict=True)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except RuntimeError:  # a symlink loop, before Python 3.13
        raise UsageError(f"{path}: {os.strerror(errno.ELOOP)}") from None


def _status(args: argparse.Namespace) -> int:
    import json

    from cachewatchd.cli._logfile import log_of
    from cachewatchd.daemon.registry import list_daemons

    daemons = [{**record, "log": log_of(record)} for record in list_daemons()]
    if args.json:
        print(json.dumps({"version": 1, "daemons": daemons}, indent=2, sort_keys=True))
        return EXIT_OK
    if not daemons:
        print("no cachewatchd daemon running")
        return EXIT_OK
    for record in daemons:
        print("\n".join(_describe(record)))
    return EXIT_OK


def _describe(record: dict[str, Any]) -> list[str]:
    """*record* (one of :func:`~cachewatchd.daemon.registry.list_daemons`) as text."""
    from cachewatchd.daemon.registry import DaemonRecord

    daemon = DaemonRecord.from_json(record)
    lines = [f"cachewatchd pid {daemon.pid} ({record.get('state', '?')}), since {daemon.started}"]
    observers = record.get("observers") or {}
    for root in daemon.roots:
        info = observers.get(root, {})
        kind = info.get("observer", "?")
        detached = "" if info.get("attached", True) else ", waiting for the root to come back"
        lines.append(f"  {root}: {kind} ({info.get('reason', '')}{detached})")
    counters = record.get("counters") or {}
    lines.append(
        f"  invalidated {counters.get('invalidations', 0)}, rescans {counters.get('rescans', 0)}, "
        f"errors {counters.get('errors', 0)}; last event {record.get('last_event') or 'none'}"
    )
    lines += [_describe_target(entry) for entry in record.get("processes") or []]
    if record.get("log"):
        lines.append(f"  log: {record['log']}")
    return lines


def _describe_target(entry: Mapping[str, Any]) -> str:
    from cachewatchd.processes.status import TargetStatus

    try:
        target = TargetStatus.from_json(entry)
    except ValueError as exc:
        return f"  process ?: unreadable status ({exc})"
    stale = f", STALE: {target.stale_reason}" if target.stale else ""
    problem = f" ({target.problem})" if target.problem else ""
    pids = ",".join(str(pid) for pid in target.pids) or "-"
    crashes = ""
    if target.crashes:
        times = "once" if target.crashes == 1 else f"{target.crashes} times"
        shown = target.last_exit if target.last_exit and target.last_exit != target.problem else ""
        crashes = f", crashed {times}" + (f" (last: {shown})" if shown else "")
    containers = "".join(
        f", container {c.name} ({c.id}) {c.state}"
        + (f" since {c.started_at}" if c.started_at else "")
        for c in target.containers
    )
    return (
        f"  process {target.name}: {target.state.value} pid {pids}{problem}{containers}{crashes}"
        f"{stale}"
    )
