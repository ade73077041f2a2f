"""Threads that never die silently.

Every long-lived thread of cachewatchd is made by :func:`daemon_thread`: its target runs inside a
guard that catches whatever escapes it (``BaseException``), logs one ``thread-died`` error (the
thread's name, the error and where it was raised) and calls the death handler of the process, if
one is set (:func:`on_death`). The daemon sets one for the length of its run: it stops everything
and exits non-zero instead of carrying on, "ready" but doing nothing.

While a handler is set, ``threading.excepthook`` does the same for threads started elsewhere
(watchdog's observer and emitter threads), so a dying thread never prints a traceback either.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections.abc import Callable, Iterator

from cachewatchd.log import get_logger

__all__ = ["DeathHandler", "daemon_thread", "died", "on_death"]

DeathHandler = Callable[[str, BaseException], None]
"""Called with the dead thread's name and what killed it, on the dying thread: keep it short."""

_lock = threading.Lock()
_handlers: list[DeathHandler] = []
"""The handlers set by :func:`on_death`, innermost last; only the innermost is called."""


def daemon_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread (not started) running *target*; its death is reported (see the module)."""

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - a thread must never die silently
            died(name, exc)

    return threading.Thread(target=guarded, name=name, daemon=True)


def died(name: str, exc: BaseException) -> None:
    """Report that the thread *name* died of *exc*: one ``thread-died`` line, then the handler."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = {"at": f"{frames[-1].filename}:{frames[-1].lineno}"} if frames else {}
    message = str(exc)
    error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    get_logger(__name__).error("thread-died", thread=name, error=error, **where)
    with _lock:
        handler = _handlers[-1] if _handlers else None
    if handler is not None:
        handler(name, exc)


def _excepthook(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "unknown thread"
    died(name, args.exc_value if args.exc_value is not None else args.exc_type())


@contextlib.contextmanager
def on_death(handler: DeathHandler) -> Iterator[None]:
    """While inside, *handler* is told of every thread that dies (``threading.excepthook`` too).

    The previous ``threading.excepthook`` comes back on exit.
    """
    with _lock:
        _handlers.append(handler)
        previous, threading.excepthook = threading.excepthook, _excepthook
    try:
        yield
    finally:
        with _lock:
            _handlers.remove(handler)
            threading.excepthook = previous
