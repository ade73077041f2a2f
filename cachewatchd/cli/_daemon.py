"""``cachewatchd run``: its command line, and whether the daemon runs here or detached.

The options become the daemon's settings (:func:`_command_line`, :func:`_settings`; a bad config or
root is one line, before detaching). With ``--foreground`` the daemon runs in this process
(:mod:`cachewatchd.cli._foreground`); without it, the same command line with ``--foreground``
(:func:`_detached_argv`) is spawned in a new session (:mod:`cachewatchd.cli._detach`), its output
appended to the log file of its set of roots, which it rotates by size
(:mod:`cachewatchd.cli._logfile`); this command returns once the daemon reports ready through a
pipe (or prints the error it reported). Whatever a detached daemon has to say goes to that log in
the log's format, its refusal to start included (``start-failed``). ``stop`` and ``status`` are
:mod:`cachewatchd.cli._control`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from cachewatchd.cli._args import POLL_MODES, RawDescriptionHelpFormatter, seconds
from cachewatchd.errors import CachewatchdError, UsageError

if TYPE_CHECKING:
    from cachewatchd.config.settings import CommandLine, DaemonSettings
    from cachewatchd.processes.spec import ProcessSpec

__all__ = ["register", "seconds"]


_RUN_EPILOG = """\
examples:
  cachewatchd --foreground src
  cachewatchd --foreground src -- python -m uvicorn app:app --port 8000
  cachewatchd --foreground --listen 127.0.0.1:8000 src -- uvicorn app:app

signals (with --foreground):
  SIGTERM, SIGINT  finish the current batch, stop the managed processes, exit 0
  SIGHUP           reload the config; but when the terminal the daemon runs in hangs up
                   (an SSH connection drops, a terminal window closes), stop as on SIGTERM

exit status:
  0  stopped by SIGTERM, SIGINT or a hang-up of its terminal; or detached and running
  2  usage error, bad config, a PATH that does not exist or cannot be read
  3  could not start (another daemon watches an overlapping root, COMMAND cannot be
     executed, the --listen address is in use or not allowed), or a thread of the
     daemon died
"""


def register(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="watch PATHs and keep their bytecode caches true (the default command)",
        usage="%(prog)s [OPTIONS] [PATH ...] [-- COMMAND [ARG ...]]",
        description="Watch PATH (default: the config's roots, else .), invalidate bytecode caches\n"
        "the moment their source changes, follow git, and restart managed processes.\n"
        "Everything after -- is a COMMAND the daemon runs and restarts after each change.",
        epilog=_RUN_EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="directory to watch (default: the config's roots, else the current directory)",
    )
    run.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached, log to stderr (else detach; the log file is named on start and by "
        "'status')",
    )
    run.add_argument("--config", type=Path, metavar="FILE", help="config file to use")
    run.add_argument(
        "--poll", choices=POLL_MODES, help="polling instead of native events: always|never|auto"
    )
    run.add_argument("--poll-interval", type=seconds, metavar="S", help="seconds between polls")
    run.add_argument(
        "--reconcile-interval", type=seconds, metavar="S", help="seconds between full audits"
    )
    run.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip paths matching GLOB (name or root-relative path; repeatable)",
    )
    run.add_argument(
        "--pycache-prefix",
        type=Path,
        metavar="DIR",
        help="the PYTHONPYCACHEPREFIX tree to keep true too (default: $PYTHONPYCACHEPREFIX)",
    )
    run.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="auto: console on a terminal, JSON lines otherwise (default auto)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        metavar="LEVEL",
        help="debug, info, warning, error or critical (default info)",
    )
    child = run.add_argument_group("the own child (with -- COMMAND [ARG ...])")
    child.add_argument(
        "--grace", type=seconds, metavar="S", help="seconds between TERM and KILL (default 10)"
    )
    child.add_argument(
        "--import-check",
        metavar="MODULE",
        help="import MODULE in a fresh interpreter before each restart; keep the old process "
        "when it fails",
    )
    child.add_argument(
        "--health-url",
        metavar="URL",
        help="after a restart, poll URL until HTTP 200 before logging 'restarted'",
    )
    child.add_argument(
        "--health-timeout",
        type=seconds,
        metavar="S",
        help="with --health-url: seconds a restarted COMMAND has to answer 200 (default 30)",
    )
    child.add_argument(
        "--listen",
        metavar="ADDR",
        help="hold HOST:PORT (or unix:PATH) open across restarts and hand it to each generation "
        "of COMMAND: no refused connection while it restarts (uvicorn gets --fd, gunicorn "
        "--bind fd://, others systemd LISTEN_FDS; config: [child] listen)",
    )
    child.add_argument(
        "--cold",
        action="store_true",
        help="start every generation of a Python COMMAND in a new interpreter instead of forking "
        "it from a preloaded one (config: [child] warm = false)",
    )
    run.set_defaults(handler=_run)


# -- run ------------------------------------------------------------------------------------------
def _command_line(
    args: argparse.Namespace, config_listen: str | None = None, config_warm: bool = True
) -> CommandLine:
    """*config_listen*: the config's ``[child] listen``, which ``--listen`` beats; *config_warm*
    its ``[child] warm``, which ``--cold`` beats."""
    from cachewatchd.config.reader import BOUNDS, check_number
    from cachewatchd.config.settings import CommandLine
    from cachewatchd.processes.listen import address_problem, parse_address
    from cachewatchd.processes.spec import ProcessSpec, module_problem, url_problem

    given: list[str] = list(getattr(args, "child_command", None) or [])
    if getattr(args, "child_separator", False) and not given:
        raise UsageError("'--' must be followed by the COMMAND to run: PATH -- COMMAND [ARG ...]")
    if given and not given[0].strip():
        raise UsageError("the COMMAND after '--' must not be empty")
    for flag, value, problem_of in (
        ("--import-check", args.import_check, module_problem),
        ("--health-url", args.health_url, url_problem),
        ("--listen", args.listen, address_problem),
    ):
        problem = problem_of(value) if value is not None else None
        if problem is not None:
            raise UsageError(f"{flag}: {problem}")
    for flag, key in (
        ("--poll-interval", "poll_interval"),
        ("--reconcile-interval", "reconcile_interval"),
        ("--grace", "grace"),
        ("--health-timeout", "health_timeout"),
    ):
        value = getattr(args, key)
        if value is not None:  # the config's bounds of the same setting
            check_number(flag, value, *BOUNDS[key])
    child: ProcessSpec | None = None
    if given:
        options: dict[str, Any] = {"name": "child", "command": tuple(given)}
        if args.grace is not None:
            options["grace"] = args.grace
        options["import_check"] = args.import_check
        options["health_url"] = args.health_url
        if args.health_timeout is not None:
            if args.health_url is None:
                raise UsageError("--health-timeout needs --health-url")
            options["health_timeout"] = args.health_timeout
        listen = args.listen or config_listen
        if listen is not None:  # unix:PATH made absolute: a detached daemon runs elsewhere
            options["listen"] = str(parse_address(listen))
        options["warm"] = config_warm and not getattr(args, "cold", False)
        child = ProcessSpec(**options)
    elif (
        args.grace is not None
        or args.import_check
        or args.health_url
        or args.health_timeout
        or args.listen
        or getattr(args, "cold", False)
    ):
        raise UsageError(
            "--grace, --import-check, --health-url, --health-timeout, --listen and --cold need "
            "'-- COMMAND ARGS...'"
        )
    return CommandLine(
        paths=tuple(args.paths),
        poll=args.poll,
        poll_interval=args.poll_interval,
        reconcile_interval=args.reconcile_interval,
        exclude=tuple(args.exclude),
        pycache_prefix=args.pycache_prefix,
        child=child,
    )


def _settings(args: argparse.Namespace) -> DaemonSettings:
    from cachewatchd.config.settings import build_settings
    from cachewatchd.config.user import load_config

    config = load_config(args.config)
    return build_settings(config, _command_line(args, config.child_listen, config.child_warm))


def _run(args: argparse.Namespace) -> int:
    # here, not at the top: every command builds this parser, and `scan` needs none of these
    from cachewatchd.cli._detach import detach, take_ready_fd, tell_parent
    from cachewatchd.cli._foreground import run_foreground
    from cachewatchd.cli._logfile import take_log_file
    from cachewatchd.log import LEVELS, configure_logging, get_logger

    if args.log_level.lower() not in LEVELS:
        raise UsageError(f"unknown log level {args.log_level!r} (one of: {', '.join(LEVELS)})")
    ready_fd = take_ready_fd()
    log = take_log_file() if args.foreground else None  # a detached daemon: its own log file
    if log is not None:  # from the first line on, in the log's format
        configure_logging(args.log_format, args.log_level.lower(), cast("TextIO", log))
    try:
        settings = _settings(args)  # bad config or root: one line, before detaching
        if not args.foreground:
            return detach(_detached_argv(args), settings)
        return run_foreground(
            args, settings, ready_fd, log, reload_settings=lambda: _settings(args)
        )
    except CachewatchdError as exc:
        tell_parent(ready_fd, f"error {exc.exit_code} {exc.message}")
        if log is None:
            raise
        # the command that detached it prints the line; the log gets it as a log event
        get_logger(__name__).error("start-failed", error=exc.message, exit_code=exc.exit_code)
        return exc.exit_code


def _detached_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "cachewatchd", "run", "--foreground"]
    argv += ["--log-format", "json" if args.log_format == "auto" else args.log_format]
    argv += ["--log-level", args.log_level]
    options = {
        "--config": args.config,
        "--poll": args.poll,
        "--poll-interval": args.poll_interval,
        "--reconcile-interval": args.reconcile_interval,
        "--pycache-prefix": args.pycache_prefix,
        "--grace": args.grace,
        "--import-check": args.import_check,
        "--health-url": args.health_url,
        "--health-timeout": args.health_timeout,
        "--listen": args.listen,
    }
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(Path(value).absolute()) if isinstance(value, Path) else str(value)]
    if getattr(args, "cold", False):
        argv.append("--cold")
    for pattern in args.exclude:
        argv += ["--exclude", pattern]
    argv += [str(Path(p).absolute()) for p in args.paths]
    child = list(getattr(args, "child_command", []) or [])
    return argv + (["--", *child] if child else [])
