"""Wait until a file's last change lies a timestamp tick in the past: a pyc written after that is
newer than its source by more than the tick, so the audit's trigger does not fire for it (and an
exact check's result may be remembered: :mod:`cachewatchd.cache.verified`).

The kernel stamps file times from a coarse clock that lags ``time.time_ns()`` by up to a jiffy, so
the wait is on the filesystem's own clock: a probe file beside the first path is touched until its
ctime is past the tick (a wall-clock wait let a loaded machine's next write land inside it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cachewatchd.cache.judge import TICK_NS, WHOLE_SECOND_NS
from tests.support.wait import wait_until

__all__ = ["past_the_tick"]


def past_the_tick(*paths: Path) -> None:
    """Return once the filesystem's clock is more than a tick past the last change (ctime) of
    every path."""
    last = max(p.stat().st_ctime_ns for p in paths)
    tick = WHOLE_SECOND_NS if not last % 1_000_000_000 else TICK_NS
    fd, probe = tempfile.mkstemp(prefix=".tick-", dir=tempfile.gettempdir())
    try:

        def passed() -> bool:
            os.utime(fd)
            return os.fstat(fd).st_ctime_ns > last + tick

        wait_until(passed, timeout=5, message="the tick to pass")
    finally:
        os.close(fd)
        os.unlink(probe)
