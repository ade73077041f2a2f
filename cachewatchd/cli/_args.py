"""What the subcommands' parsers share, cheap to import: argument types, choices, help formatters.

Every run builds the parsers of every subcommand, ``scan`` in a pre-commit hook included, so this
module imports nothing beyond argparse (no ``cachewatchd.watch``: its ``mounts`` loads dataclasses).
"""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False  # typing's own: 2 ms of every start-up (mypy honours this name too)
if TYPE_CHECKING:
    from typing import Any

    from cachewatchd.watch.mounts import PollMode

__all__ = ["POLL_MODES", "HelpFormatter", "RawDescriptionHelpFormatter", "seconds"]

POLL_MODES: tuple[PollMode, ...] = ("auto", "always", "never")
"""The choices of ``--poll``: :data:`cachewatchd.watch.mounts.POLL_MODES`, in its order (a test
holds them equal)."""


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing :mod:`shutil` (and with it bz2,
    lzma and zlib): argparse makes a formatter for every ``add_argument``, and its own formatter
    imports shutil for the width."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        stdout = sys.__stdout__
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, the same width (the terminal's less 2), found without shutil."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
        **kwargs: Any,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width, **kwargs)


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """argparse's, found without shutil as :class:`HelpFormatter`."""
