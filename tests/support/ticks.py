"""Wait until a file's last change lies a timestamp tick in the past: a pyc written after that is
newer than its source by more than the tick, so the audit's trigger does not fire for it (and an
exact check's result may be remembered: :mod:`cachewatchd.cache.verified`)."""

from __future__ import annotations

import time
from pathlib import Path

from cachewatchd.cache.judge import TICK_NS, WHOLE_SECOND_NS
from tests.support.wait import wait_until

__all__ = ["past_the_tick"]


def past_the_tick(*paths: Path) -> None:
    """Return once the clock is more than a tick past the last change (ctime) of every path."""
    last = max(p.stat().st_ctime_ns for p in paths)
    tick = WHOLE_SECOND_NS if not last % 1_000_000_000 else TICK_NS
    wait_until(lambda: time.time_ns() > last + tick, timeout=5, message="the tick to pass")
