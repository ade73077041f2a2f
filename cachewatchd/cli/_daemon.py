"""``cachewatchd run``, ``stop`` and ``status``: the daemon's command line.

This module is where the daemon's process-wide concerns live: logging setup, signal handlers (they
only post to the daemon; a SIGHUP that is the hang-up of the daemon's terminal stops it instead of
reloading, see :mod:`cachewatchd.cli._terminal`), systemd notification environment, detaching, and
the last word of a run: whatever ended it, the own child's process group is stopped. Without ``--foreground``
the daemon is spawned in a new session with ``--foreground``, its output appended to the log file of
its set of roots (``<user log dir>/cachewatchd-<hash>.log``, :func:`cachewatchd.paths.daemon_log_file`),
which it rotates by size (:class:`RotatingLog`); this command returns once the daemon reports ready
through a pipe (or prints the error it reported). Whatever a detached daemon has to say goes to that
log in the log's format, its refusal to start included (``start-failed``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO, cast

from cachewatchd.errors import EXIT_OK, CachewatchdError, RuntimeFailure, UsageError
from cachewatchd.watch.mounts import POLL_MODES

if TYPE_CHECKING:
    from cachewatchd.config.settings import CommandLine, DaemonSettings
    from cachewatchd.daemon.loop import ControllerLike, Daemon
    from cachewatchd.processes.spec import ProcessSpec

__all__ = ["register"]

READY_FD_ENV = "CACHEWATCHD_READY_FD"
LOG_FILE_ENV = "CACHEWATCHD_LOG_FILE"
"""Set by :func:`_detach` for the daemon it spawns: the log file its stdout and stderr are."""
LOG_MAX_BYTES = 5 * 1024 * 1024
"""A detached daemon's log file is rotated once it holds this many bytes..."""
LOG_FILES = 3
"""...and this many files are kept: ``X.log``, ``X.log.1``, ``X.log.2`` (the oldest dropped)."""
_LOG_NAME = re.compile(r"cachewatchd-[0-9a-f]{12}\.log")
"""The name of a detached daemon's log file (:func:`cachewatchd.paths.daemon_log_file`)."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


_RUN_EPILOG = """\
examples:
  cachewatchd --foreground src
  cachewatchd --foreground src -- python -m uvicorn app:app --port 8000

signals (with --foreground):
  SIGTERM, SIGINT  finish the current batch, stop the managed processes, exit 0
  SIGHUP           reload the config; but when the terminal the daemon runs in hangs up
                   (an SSH connection drops, a terminal window closes), stop as on SIGTERM

exit status:
  0  stopped by SIGTERM, SIGINT or a hang-up of its terminal; or detached and running
  2  usage error, bad config, a PATH that does not exist or cannot be read
  3  could not start (another daemon watches an overlapping root, COMMAND cannot be
     executed), or a thread of the daemon died
"""

_STOP_EPILOG = """\
exit status:
  0  stopped (or no daemon was running)
  2  usage error, a PATH that does not exist
  3  a daemon was still running after --timeout seconds, or could not be signalled
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    run.add_argument("--poll-interval", type=_seconds, metavar="S", help="seconds between polls")
    run.add_argument(
        "--reconcile-interval", type=_seconds, metavar="S", help="seconds between full audits"
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
        "--grace", type=_seconds, metavar="S", help="seconds between TERM and KILL (default 10)"
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
        type=_seconds,
        metavar="S",
        help="with --health-url: seconds a restarted COMMAND has to answer 200 (default 30)",
    )
    run.set_defaults(handler=_run)

    stop = sub.add_parser(
        "stop",
        help="stop this user's daemons (those watching PATH)",
        description="Stop this user's daemons: all of them, or those whose roots overlap a PATH.",
        epilog=_STOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        type=_seconds,
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


# -- run ------------------------------------------------------------------------------------------
def _command_line(args: argparse.Namespace) -> CommandLine:
    from cachewatchd.config.settings import CommandLine
    from cachewatchd.config.user import BOUNDS, check_number
    from cachewatchd.processes.spec import ProcessSpec, module_problem, url_problem

    given: list[str] = list(getattr(args, "child_command", None) or [])
    if getattr(args, "child_separator", False) and not given:
        raise UsageError("'--' must be followed by the COMMAND to run: PATH -- COMMAND [ARG ...]")
    if given and not given[0].strip():
        raise UsageError("the COMMAND after '--' must not be empty")
    for flag, value, problem_of in (
        ("--import-check", args.import_check, module_problem),
        ("--health-url", args.health_url, url_problem),
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
        child = ProcessSpec(**options)
    elif args.grace is not None or args.import_check or args.health_url or args.health_timeout:
        raise UsageError(
            "--grace, --import-check, --health-url and --health-timeout need '-- COMMAND ARGS...'"
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

    return build_settings(load_config(args.config), _command_line(args))


def _run(args: argparse.Namespace) -> int:
    from cachewatchd.log import LEVELS, configure_logging, get_logger

    if args.log_level.lower() not in LEVELS:
        raise UsageError(f"unknown log level {args.log_level!r} (one of: {', '.join(LEVELS)})")
    ready_fd = _take_ready_fd()
    log = _take_log_file() if args.foreground else None  # a detached daemon: its own log file
    if log is not None:  # from the first line on, in the log's format
        configure_logging(args.log_format, args.log_level.lower(), cast("TextIO", log))
    try:
        settings = _settings(args)  # bad config or root: one line, before detaching
        if not args.foreground:
            return _detach(_detached_argv(args), settings)
        return _foreground(args, settings, ready_fd, log)
    except CachewatchdError as exc:
        _tell_parent(ready_fd, f"error {exc.exit_code} {exc.message}")
        if log is None:
            raise
        # the command that detached it prints the line; the log gets it as a log event
        get_logger(__name__).error("start-failed", error=exc.message, exit_code=exc.exit_code)
        return exc.exit_code


def _foreground(
    args: argparse.Namespace,
    settings: DaemonSettings,
    ready_fd: int | None,
    log: RotatingLog | None = None,
) -> int:
    from cachewatchd.daemon.loop import Daemon
    from cachewatchd.daemon.sd_notify import NOTIFY_ENV_VARS, Notifier, WatchdogPinger
    from cachewatchd.log import configure_logging, route_stdlib_logging
    from cachewatchd.processes.own_child import stop_own_children

    stream = cast("TextIO", log) if log is not None else None
    configure_logging(args.log_format, args.log_level.lower(), stream)
    notifier = Notifier.from_env()
    service = bool(os.environ.get("NOTIFY_SOCKET"))
    for var in NOTIFY_ENV_VARS:  # managed processes must not talk to systemd in our name
        os.environ.pop(var, None)
    daemon = Daemon(
        settings,
        reload_settings=lambda: _settings(args),
        make_controller=_make_controller,
        notifier=notifier,
        on_ready=lambda: _tell_parent(ready_fd, f"ready {os.getpid()}"),
    )
    pinger = WatchdogPinger(notifier, healthy=daemon.healthy)
    try:
        with _signals(daemon, service=service), route_stdlib_logging(), pinger:
            return daemon.run()
    finally:
        stop_own_children()  # whatever ended the run: the own child's group never outlives it


def _make_controller(
    specs: Sequence[ProcessSpec], roots: Sequence[Path], excludes: Mapping[Path, tuple[str, ...]]
) -> ControllerLike:
    from cachewatchd.processes.controller import Controller

    controller: ControllerLike = Controller(specs, roots, excludes)
    return controller


@contextlib.contextmanager
def _signals(daemon: Daemon, *, service: bool = False) -> Iterator[None]:
    """SIGTERM/SIGINT ask the daemon to stop; SIGHUP to reload, unless it is the hang-up of the
    terminal the daemon runs in, which stops it (:mod:`cachewatchd.cli._terminal`; *service*: a
    service manager runs it, every SIGHUP is a reload). Previous handlers come back after."""
    from cachewatchd.cli._terminal import TerminalWatch

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watch = TerminalWatch.attach(
        on_hangup=daemon.request_stop,
        on_reload=daemon.request_reload,
        survive=signal.getsignal(signal.SIGHUP) == signal.SIG_IGN,
        service=service,
    )
    wanted = {
        signal.SIGTERM: daemon.request_stop,
        signal.SIGINT: daemon.request_stop,
        signal.SIGHUP: watch.sighup if watch is not None else daemon.request_reload,
    }
    previous = {}
    try:
        for signum, action in wanted.items():
            previous[signum] = signal.signal(signum, _poster(action))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if watch is not None:
            watch.close()


def _poster(action: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        action()

    return handler


def _take_ready_fd() -> int | None:
    value = os.environ.pop(READY_FD_ENV, None)
    if value is None or not value.isdigit():
        return None
    return int(value)


def _tell_parent(fd: int | None, message: str) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, (" ".join(message.splitlines()) + "\n").encode())
        os.close(fd)


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
    }
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(Path(value).absolute()) if isinstance(value, Path) else str(value)]
    for pattern in args.exclude:
        argv += ["--exclude", pattern]
    argv += [str(Path(p).absolute()) for p in args.paths]
    child = list(getattr(args, "child_command", []) or [])
    return argv + (["--", *child] if child else [])


def _detach(argv: list[str], settings: DaemonSettings) -> int:
    """Spawn the daemon in a new session, its stdout and stderr the log file of its roots; return
    once it is ready, or raise the error it reported."""
    from cachewatchd.paths import daemon_log_file

    log_file = daemon_log_file(settings.paths)
    read_end, write_end = os.pipe()
    log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.set_inheritable(write_end, True)
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            {**os.environ, READY_FD_ENV: str(write_end), LOG_FILE_ENV: str(log_file)},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null_fd, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        for fd in (write_end, log_fd, null_fd):
            os.close(fd)
    with os.fdopen(read_end, "rb") as pipe:  # EOF: ready (the daemon closes it) or exited
        reply = pipe.read().decode("utf-8", "replace").strip()
    if reply.startswith("ready"):
        print(f"cachewatchd running in the background (pid {pid}); log: {log_file}")
        return EXIT_OK
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if reply.startswith("error "):
        _, code_text, message = [*reply.split(" ", 2), "", ""][:3]
        error = RuntimeFailure(message)
        error.exit_code = int(code_text) if code_text.isdigit() else code
        raise error
    raise RuntimeFailure(
        f"the daemon exited before it was ready (exit code {code}); see {log_file}"
    )


def _take_log_file() -> RotatingLog | None:
    """The log file :func:`_detach` made this daemon's stdout and stderr (popped from the
    environment: managed processes do not inherit it), or ``None`` when there is none."""
    value = os.environ.pop(LOG_FILE_ENV, None)
    return RotatingLog.attach(Path(value)) if value else None


class RotatingLog:
    """A detached daemon's log file, rotated by size; its stdout and stderr follow it.

    Log lines are written whole (what :meth:`write` gets is held until its newline) to the file
    descriptors that are *path*; once the file holds *max_bytes* (also at start), it becomes
    ``<path>.1`` (``.1`` becomes ``.2``..., *files* kept in all) and a new *path* is opened onto the
    same descriptors: the own child's stderr, Python's own messages and the next lines go to the new
    file. When another process rotated the file first (a second daemon on the same roots that was
    refused), the new *path* is taken as it is. A rotation that fails is tried again after another
    *max_bytes*; it never loses a line. Write errors are raised (:class:`~cachewatchd.log.LogSink`
    counts them).
    """

    def __init__(
        self,
        path: Path,
        fds: Sequence[int],
        *,
        max_bytes: int = LOG_MAX_BYTES,
        files: int = LOG_FILES,
    ) -> None:
        self.path = path
        self._fds = tuple(fds)
        self._max_bytes = max_bytes
        self._files = max(files, 1)
        self._limit = max_bytes
        self._pending = ""
        self._lock = threading.Lock()
        self._rotate_when_full()

    @classmethod
    def attach(cls, path: Path, fds: Sequence[int] = (1, 2), **limits: int) -> RotatingLog | None:
        """The log of the *fds* that are *path* (the same file); ``None`` when none of them is."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        ours = [fd for fd in fds if _same_file(fd, st)]
        return cls(path, ours, **limits) if ours else None

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            whole, newline, rest = self._pending.rpartition("\n")
            if newline:
                self._pending = rest
                self._write(whole + newline)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                text, self._pending = self._pending, ""
                self._write(text)

    def _write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "replace"))
        while data:
            data = data[os.write(self._fds[0], data) :]
        self._rotate_when_full()

    def _rotate_when_full(self) -> None:
        try:
            size = os.fstat(self._fds[0]).st_size
        except OSError:
            return
        if size < self._limit:
            return
        try:
            self._rotate()
        except OSError:
            self._limit = size + self._max_bytes  # not now; a line is never lost for it
        else:
            self._limit = self._max_bytes

    def _rotate(self) -> None:
        if _same_file(self._fds[0], _stat_or_none(self.path)):  # else rotated by another already
            names = [self.path, *(Path(f"{self.path}.{n}") for n in range(1, self._files))]
            if len(names) == 1:
                os.unlink(self.path)
            for n in range(len(names) - 1, 0, -1):  # .1 -> .2 first: the oldest is overwritten
                with contextlib.suppress(FileNotFoundError):
                    os.replace(names[n - 1], names[n])
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        try:
            for target in self._fds:
                os.dup2(fd, target)
        finally:
            os.close(fd)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _same_file(fd: int, st: os.stat_result | None) -> bool:
    if st is None:
        return False
    try:
        mine = os.fstat(fd)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


# -- stop and status --------------------------------------------------------------------------------
def _stop(args: argparse.Namespace) -> int:
    import psutil

    from cachewatchd.config.user import BOUNDS, check_number
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
    from cachewatchd.daemon.registry import list_daemons

    daemons = [{**record, "log": _log_of(record)} for record in list_daemons()]
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


def _log_of(record: Mapping[str, Any]) -> str | None:
    """The log file the daemon of *record* writes to when it was detached (the
    ``cachewatchd-<hash>.log`` it holds open as its stdout and stderr), else ``None``."""
    import psutil

    from cachewatchd.daemon.registry import process_of

    proc = process_of(record)
    if proc is None:
        return None
    try:
        files = proc.open_files()
    except (psutil.Error, OSError):
        return None
    return next((f.path for f in files if _LOG_NAME.fullmatch(os.path.basename(f.path))), None)


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
    return f"  process {target.name}: {target.state.value} pid {pids}{problem}{crashes}{stale}"
