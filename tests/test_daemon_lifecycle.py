"""The daemon's lifecycle around its managed targets: start, status, errors, reload."""

from __future__ import annotations

import inspect

from cachewatchd import batch
from cachewatchd.daemon import Daemon


def test_debounce_defaults_are_the_batchers_own() -> None:
    defaults = inspect.signature(Daemon).parameters
    # The very objects batch.py defines, not copies of their values that could drift apart.
    assert defaults["quiet"].default is batch.DEFAULT_QUIET
    assert defaults["max_window"].default is batch.DEFAULT_MAX_WINDOW
