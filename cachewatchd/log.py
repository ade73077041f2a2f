"""structlog configuration: console renderer on a TTY, JSON lines otherwise.

Only the CLI calls :func:`configure_logging` and :func:`route_stdlib_logging`; modules call
:func:`get_logger`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, Literal, TextIO

from cachewatchd.errors import UsageError

__all__ = ["LEVELS", "LogFormat", "configure_logging", "get_logger", "route_stdlib_logging"]

LogFormat = Literal["auto", "console", "json"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def get_logger(name: str) -> Any:
    """Return a structlog logger bound to ``logger=name``."""
    import structlog

    return structlog.get_logger(name)


def configure_logging(
    fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog to write one event per line to *stream* (default stderr)."""
    import structlog

    out = stream if stream is not None else sys.stderr
    numeric = LEVELS.get(level.lower())
    if numeric is None:
        raise UsageError(f"unknown log level {level!r} (one of: {', '.join(LEVELS)})")
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        get_logger(record.name).warning("library-warning", message=record.getMessage())


@contextlib.contextmanager
def route_stdlib_logging(name: str = "watchdog") -> Iterator[None]:
    """Route the stdlib logger *name*'s warnings (watchdog's own) into structlog while inside.

    Each record at WARNING or above becomes a ``library-warning`` event with ``logger=<record's
    logger>`` and ``message=<its text>`` instead of bare stderr text; the logger's handlers and
    ``propagate`` are restored on exit.
    """
    logger = logging.getLogger(name)
    handler = _ToStructlog(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
