"""Terminal helpers for the CLI: colour only on a TTY and never with NO_COLOR."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing's own: 2 ms of every start-up (mypy honours this name too)
if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["colour", "use_colour"]

_CODES = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "bold": "1", "dim": "2"}


def use_colour(stream: TextIO) -> bool:
    if "NO_COLOR" in os.environ:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def colour(text: str, name: str, stream: TextIO | None = None) -> str:
    """*text* in colour *name* when *stream* (default: ``sys.stdout`` at call time) takes colour."""
    if not use_colour(sys.stdout if stream is None else stream):
        return text
    return f"\033[{_CODES[name]}m{text}\033[0m"
