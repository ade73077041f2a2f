"""``install-service`` and ``uninstall-service``: the systemd user unit or the launchd agent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachewatchd.cli._args import RawDescriptionHelpFormatter
from cachewatchd.cli._output import colour
from cachewatchd.errors import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from cachewatchd.service.install import ServiceResult

__all__ = ["register"]

_EPILOG = """\
Exit status:
  0  every step was done, or the file was written but no service manager was reachable
     (systemctl/launchctl missing, or no user bus as in containers and CI): a warning on
     stderr then lists the commands to run by hand;
  2  bad command line or PATH;
  3  a step failed: the file could not be written or removed, or the service manager
     refused a command; the remaining steps are listed to run by hand.
--dry-run prints the file and the steps and changes nothing.
"""


def register(sub: Any) -> None:  # argparse's _SubParsersAction
    """Add ``install-service`` and ``uninstall-service`` to *sub*."""
    manager_help = "service manager (default: systemd on Linux, launchd on macOS)"
    install = sub.add_parser(
        "install-service",
        help="run cachewatchd as a user service (systemd or launchd)",
        description="Render the user service for this installation's absolute path and PATHs, write it "
        "(~/.config/systemd/user/cachewatchd.service or ~/Library/LaunchAgents/"
        "io.github.cachewatchd.plist), then enable and start it.",
        epilog=_EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    install.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="roots to watch (default: the config's roots, else the current directory)",
    )
    install.add_argument("--dry-run", action="store_true", help="print the file and the steps only")
    install.add_argument("--manager", choices=("systemd", "launchd"), help=manager_help)
    install.set_defaults(handler=_install)

    uninstall = sub.add_parser(
        "uninstall-service",
        help="stop, disable and remove the user service",
        description="Reverse install-service: stop and disable the service, remove its file.",
        epilog=_EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    uninstall.add_argument("--dry-run", action="store_true", help="print the steps only")
    uninstall.add_argument("--manager", choices=("systemd", "launchd"), help=manager_help)
    uninstall.set_defaults(handler=_uninstall)


def _install(args: argparse.Namespace) -> int:
    from cachewatchd.cache.audit import check_root
    from cachewatchd.config.user import load_config
    from cachewatchd.service.install import install_service

    roots = [check_root(p) for p in args.paths]
    if not roots and not load_config().roots:
        # A user service starts in $HOME: without roots it would watch the whole home directory.
        roots = [check_root(Path.cwd())]
        print(f"No PATH given and no roots in the config: the service will watch {roots[0]}")
    result = install_service(roots, dry_run=args.dry_run, platform=args.manager)
    if result.dry_run:
        assert result.plan.content is not None
        print(f"Dry run, nothing changed. {result.plan.path} would contain:\n")
        print(result.plan.content)
        _print_steps(result, "Steps:")
        for hint in result.plan.hints:
            print(hint)
        return EXIT_OK
    code = _report(result)
    if code == EXIT_OK and not result.manual:
        print(colour("cachewatchd is installed and running as a user service.", "green"))
    for hint in result.plan.hints:
        print(hint)
    return code


def _uninstall(args: argparse.Namespace) -> int:
    from cachewatchd.service.install import uninstall_service

    result = uninstall_service(dry_run=args.dry_run, platform=args.manager)
    if not result.plan.steps:
        print(
            f"No cachewatchd service installed ({result.plan.path} does not exist); nothing to do."
        )
        return EXIT_OK
    if result.dry_run:
        _print_steps(result, "Dry run, nothing changed. Steps:")
        return EXIT_OK
    code = _report(result)
    if code == EXIT_OK and not result.manual:
        print("cachewatchd's user service is stopped and removed.")
    return code


def _print_steps(result: ServiceResult, title: str) -> None:
    print(title)
    for step in result.plan.steps:
        print(f"  {step.describe()}")


def _report(result: ServiceResult) -> int:
    for outcome in result.outcomes:
        mark = {"done": "green", "unchanged": "dim", "failed": "red"}.get(outcome.status, "yellow")
        print(f"{colour(f'{outcome.status:<11}', mark)} {outcome.step.describe()}")
    err = sys.stderr
    if result.failures:
        first = result.failures[0]
        err.write(f"cachewatchd: error: {first.step.describe()}: {first.detail}\n")
    elif result.unavailable:
        what = "written" if result.plan.action == "install" else "removed"
        err.write(
            f"cachewatchd: warning: the service file is {what} but the service manager could not be "
            f"used: {result.unavailable[0].detail}\n"
        )
    if result.manual:
        err.write("Run by hand:\n")
        for line in result.manual:
            err.write(f"  {line}\n")
    return EXIT_FAILURE if result.failures else EXIT_OK
