"""``cachewatchd doctor``: why a code change may not take effect, and what to do about it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachewatchd.cli._args import POLL_MODES, RawDescriptionHelpFormatter
from cachewatchd.cli._output import colour
from cachewatchd.errors import EXIT_FINDINGS, EXIT_OK

if TYPE_CHECKING:
    from cachewatchd.doctor.report import DoctorReport

__all__ = ["register"]

_EPILOG = """\
Checks: dangerous cache entries (stale, sourceless, corrupt, suspect); Python processes started
before the newest source change; PYTHONDONTWRITEBYTECODE, PYTHONPYCACHEPREFIX, SOURCE_DATE_EPOCH;
each root's filesystem and whether native events arrive there (a probe file is written and
removed); clock skew between this machine and the filesystem; inotify limits and use; processes
holding the project's files open; Docker containers that bind-mount the roots, and those started
before the newest change to their sources; whether a cachewatchd daemon watches the root.

Exit status: 0 nothing needs action (only info findings); 1 a warning or an error was found;
2 bad command line, PATH or config (one line on stderr, no report).
"""

_ORDER = {"error": 0, "warning": 1, "info": 2}
_COLOUR = {"error": "red", "warning": "yellow", "info": "dim"}


def register(sub: Any) -> None:  # argparse's _SubParsersAction
    """Add ``doctor`` to *sub*."""
    doctor = sub.add_parser(
        "doctor",
        help="explain why a code change may not take effect",
        description="One report of everything that makes a code change not take effect, "
        "each finding with what to do.",
        epilog=_EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    doctor.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="project (default: .)")
    doctor.add_argument("--json", action="store_true", help="print one JSON document")
    doctor.add_argument(
        "--poll",
        choices=POLL_MODES,
        help="judge the roots as the daemon would with this --poll (default: config, project, auto)",
    )
    doctor.add_argument(
        "--probe-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for a native event from the probe file (default: 2)",
    )
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    import json

    from cachewatchd.cache.audit import check_root
    from cachewatchd.config.reader import BOUNDS, check_number
    from cachewatchd.doctor.report import DoctorOptions, run_doctor

    check_number("--probe-timeout", args.probe_timeout, *BOUNDS["probe_timeout"])
    roots = list(dict.fromkeys(check_root(p) for p in (args.paths or [Path()])))
    report = run_doctor(roots, DoctorOptions(poll=args.poll, probe_timeout=args.probe_timeout))
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print(report)
    return EXIT_FINDINGS if report.needs_action else EXIT_OK


def _print(report: DoctorReport) -> None:
    from cachewatchd.doctor.findings import plural

    print(f"cachewatchd doctor: {', '.join(str(r) for r in report.roots)}")
    for finding in sorted(report.findings, key=lambda f: _ORDER[f.severity]):
        level = colour(f"{finding.severity:<8}", _COLOUR[finding.severity])
        where = f" [{finding.root}]" if finding.root and len(report.roots) > 1 else ""
        print(f"{level} {finding.id}{where}: {finding.message}")
        for line in finding.details:
            print(f"         {line}")
        if finding.action:
            print(f"         -> {finding.action}")
    needing = sum(1 for f in report.findings if f.needs_action)
    if needing:
        verb = "needs" if needing == 1 else "need"
        print(colour(f"{plural(needing, 'finding')} {verb} action.", "bold"))
    else:
        print(colour("Nothing needs action.", "green"))
