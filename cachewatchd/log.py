"""structlog configuration: console renderer on a TTY, JSON lines otherwise.

Only the CLI calls :func:`configure_logging` and :func:`route_stdlib_logging`; modules call
:func:`get_logger`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal, TextIO

from cachewatchd.errors import UsageError

__all__ = [
    "LEVELS",
    "LogFormat",
    "LogSink",
    "ReportedPaths",
    "configure_logging",
    "get_logger",
    "route_stdlib_logging",
]

LogFormat = Literal["auto", "console", "json"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def get_logger(name: str) -> Any:
    """Return a structlog logger bound to ``logger=name``."""
    import structlog

    return structlog.get_logger(name)


class LogSink:
    """The stream log lines go to, which never raises.

    A log line that cannot be written (the terminal closed, ``| head`` went away, a full disk) is
    dropped and counted: a dead output stream must never stop the thread that logs, least of all
    the one that invalidates caches. After the first failure the stream is not tried again.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.dropped = 0
        """Lines that could not be written."""
        self.error: str | None = None

    @property
    def broken(self) -> bool:
        return self.error is not None

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def write(self, text: str) -> int:
        with self._lock:
            if self.error is None:
                try:
                    self._stream.write(text)
                except (OSError, ValueError) as exc:
                    self.error = str(exc) or type(exc).__name__
                else:
                    return len(text)
            self.dropped += text.count("\n")  # lines: a line's text may be written before its end
            return len(text)

    def flush(self) -> None:
        with self._lock:
            if self.error is None:
                try:
                    self._stream.flush()
                except (OSError, ValueError) as exc:
                    self.error = str(exc) or type(exc).__name__


class ReportedPaths:
    """Paths whose problem was already logged: one report per path, whichever thread finds it.

    The daemon creates one and hands it to its watchers and its batch handler; ``first_time`` is the
    only way to test and add, under the lock. *on_first* is called (outside the lock, on the
    reporting thread) with each path reported for the first time: the owner counts the reports
    there, wherever they happen.
    """

    def __init__(self, on_first: Callable[[str], None] | None = None) -> None:
        self._paths: set[str] = set()
        self._lock = threading.Lock()
        self._on_first = on_first

    def first_time(self, path: str | os.PathLike[str]) -> bool:
        """True the first time *path* is reported (and it is remembered), False afterwards."""
        key = os.fspath(path)
        with self._lock:
            if key in self._paths:
                return False
            self._paths.add(key)
        if self._on_first is not None:
            self._on_first(key)
        return True


def configure_logging(
    fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> LogSink:
    """Configure structlog to write one event per line to *stream* (default stderr).

    Returns the :class:`LogSink` wrapping the stream: it counts the lines it had to drop. Colours
    only on a terminal and never with ``NO_COLOR`` set (https://no-color.org).
    """
    import structlog

    sink = LogSink(stream if stream is not None else sys.stderr)
    numeric = LEVELS.get(level.lower())
    if numeric is None:
        raise UsageError(f"unknown log level {level!r} (one of: {', '.join(LEVELS)})")
    tty = sink.isatty()
    use_console = fmt == "console" or (fmt == "auto" and tty)
    renderer: Any
    if use_console:
        colors = tty and not os.environ.get("NO_COLOR")
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
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
        logger_factory=structlog.PrintLoggerFactory(file=sink),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    return sink


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
