"""Errors the CLI turns into one line on stderr and a documented exit code."""

from __future__ import annotations

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILURE",
    "EXIT_FINDINGS",
    "EXIT_OK",
    "EXIT_USAGE",
    "CachewatchdError",
    "ConfigError",
    "RuntimeFailure",
    "UsageError",
]

EXIT_OK = 0
"""Nothing needs action."""
EXIT_FINDINGS = 1
"""The command ran and found something that needs action (stale, sourceless or corrupt caches...)."""
EXIT_USAGE = 2
"""Bad command line, bad config, or a path that does not exist or cannot be read."""
EXIT_FAILURE = 3
"""The command could not do its job: permission denied, read-only filesystem, dead pid, daemon failed."""
EXIT_BROKEN_PIPE = 141
"""The reader of standard output went away (``cachewatchd scan | head``): 128 + SIGPIPE, as a shell
reports a Unix tool that the signal ended; nothing is printed."""


class CachewatchdError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CachewatchdError):
    """Bad command line or a path argument that does not exist / cannot be read."""

    exit_code = EXIT_USAGE


class ConfigError(CachewatchdError):
    """Invalid configuration; the message names the file, the line where known, and the key."""

    exit_code = EXIT_USAGE

    def __init__(
        self, file: str, message: str, *, line: int | None = None, key: str | None = None
    ) -> None:
        where = f"{file}:{line}" if line is not None else file
        what = f"{key}: {message}" if key else message
        super().__init__(f"{where}: {what}")
        self.file = file
        self.line = line
        self.key = key


class RuntimeFailure(CachewatchdError):
    """The environment refused: permission denied, read-only filesystem, dead pid..."""

    exit_code = EXIT_FAILURE
