"""Command line: the only place that prints, exits or installs signal handlers.

``main(argv)`` returns an exit code (see :mod:`cachewatchd.errors`); ``run()`` is the console script.
No traceback reaches the user: an error the commands did not expect (an :class:`OSError` from the
environment, or a bug) is one line too, with exit code 3.
Each subcommand lives in its own module exposing ``register(subparsers)``; a module imports its heavy
dependencies inside the handler, and only the module of the command being run is imported and its
parsers built (all of them for the top-level ``--help``), so that ``cachewatchd scan`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from cachewatchd import __version__
from cachewatchd.cli._args import HelpFormatter
from cachewatchd.errors import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_USAGE, CachewatchdError

TYPE_CHECKING = False  # typing's own: 2 ms of every start-up (mypy honours this name too)
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["main", "run"]

_DEFAULT_COMMAND = "run"

COMMANDS: dict[str, str] = {
    "run": "_daemon",
    "stop": "_control",
    "status": "_control",
    "scan": "_scan",
    "clean": "_scan",
    "install-service": "_service",
    "uninstall-service": "_service",
    "doctor": "_doctor",
}
"""Every command -> the module under ``cachewatchd.cli`` that registers it, in the order of the
help's listing (a test holds it equal to what the modules register)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)  # argparse's imports shutil
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"cachewatchd: error: {message}\n")
        sys.exit(EXIT_USAGE)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of *command*'s module only (what one run needs)."""
    parser = _Parser(
        prog="cachewatchd",
        description="Keep the Python code that runs equal to the code on disk.",
        epilog="Without a command, 'run' is assumed: cachewatchd --foreground [PATH ...]",
    )
    parser.add_argument("--version", action="version", version=f"cachewatchd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = [COMMANDS[command]] if command in COMMANDS else COMMANDS.values()
    for name in dict.fromkeys(wanted):
        importlib.import_module(f"cachewatchd.cli.{name}").register(sub)
    return parser


def _split_child_command(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    own, child = _split_child_command(args_list)
    commands = list(COMMANDS)
    if own and _mistyped_command(own[0], commands):
        sys.stderr.write(
            f"cachewatchd: error: {own[0]!r} is not a command (commands: {', '.join(commands)}; "
            "a PATH for 'run' must exist)\n"
        )
        return EXIT_USAGE
    if not own or (own[0] not in commands and own[0] not in {"-h", "--help", "--version"}):
        own.insert(0, _DEFAULT_COMMAND)
    parser = build_parser(own[0])
    try:
        args = parser.parse_args(own)
    except SystemExit as exc:  # argparse's --help / --version / error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    args.child_command = child
    args.child_separator = "--" in args_list  # 'run PATH --' with no COMMAND is refused
    if child and args.command != _DEFAULT_COMMAND:
        sys.stderr.write("cachewatchd: error: '-- COMMAND' is only valid with 'run'\n")
        return EXIT_USAGE
    try:
        code: int = args.handler(args)
    except CachewatchdError as exc:
        _say(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except OSError as exc:  # the environment refused what no command expected: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"{where}{exc.strerror or exc}")
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - a bug: one line saying where, never a traceback
        _say(f"unexpected error (please report it): {_described(exc)}")
        return EXIT_FAILURE
    try:
        sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
    except BrokenPipeError:
        return _reader_gone()
    return code


def _say(message: str) -> None:
    """One line on stderr, whatever *message* holds."""
    sys.stderr.write(f"cachewatchd: {' '.join(message.splitlines())}\n")


def _described(exc: BaseException) -> str:
    """``Type: message at file:line`` (the innermost frame)."""
    import traceback  # only for a bug: tokenize, linecache and textwrap stay out of every start

    frames = traceback.extract_tb(exc.__traceback__)
    at = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _reader_gone() -> int:
    """The reader of stdout went away (``cachewatchd scan | head``): quiet, like other Unix tools."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _mistyped_command(word: str, commands: Sequence[str]) -> bool:
    """A bare word that is neither a command nor an existing path: a typo, not a PATH for 'run'."""
    if word in commands or word.startswith("-") or os.sep in word or word in {".", ".."}:
        return False
    return not os.path.lexists(word)


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
