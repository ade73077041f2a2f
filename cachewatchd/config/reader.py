"""Reading a parsed TOML table: typed getters whose every problem is a
:class:`~cachewatchd.errors.ConfigError` naming the file, the line and the key; and the bounds of
every number of seconds cachewatchd accepts, from a config file or the command line."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cachewatchd.config.toml import KeyPath, format_key, key_lines, value_name
from cachewatchd.errors import ConfigError, UsageError
from cachewatchd.watch.polling import POLL_INTERVAL_RANGE

__all__ = ["BOUNDS", "COMMAND_REFUSED", "Reader", "check_number"]

BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "poll_interval": POLL_INTERVAL_RANGE,  # config poll_interval, --poll-interval
        "reconcile_interval": (1.0, 7 * 86400.0),  # config reconcile_interval, --reconcile-interval
        "grace": (0.1, 3600.0),  # [[process]] grace, --grace
        "health_timeout": (0.1, 3600.0),  # [[process]] health_timeout, --health-timeout
        "stop_timeout": (0.1, 3600.0),  # stop --timeout
        "probe_timeout": (0.05, 600.0),  # doctor --probe-timeout
    }
)
"""Every number of seconds cachewatchd accepts, from the config or the command line: (lowest,
highest), both included. The highest stay far below ``threading.TIMEOUT_MAX``: a thread waiting
longer than that dies of ``OverflowError``. :func:`check_number` applies them."""

COMMAND_REFUSED = (
    "not allowed in the config file: the daemon's own child comes only from the command line "
    "(cachewatchd PATH -- COMMAND ARGS...)"
)


def check_number(name: str, value: object, low: float, high: float) -> float:
    """*value* as a float of seconds from *low* to *high*; else :class:`UsageError` ``"NAME: ..."``.

    The one check of a number of seconds (the config's keys go through it too, as a ConfigError
    with file, line and key). *name* is what the user wrote, e.g. ``"--poll-interval"``; the bounds
    come from :data:`BOUNDS`: ``check_number("--grace", args.grace, *BOUNDS["grace"])``. Booleans,
    strings, NaN and infinities are refused like any number out of range.
    """
    number, problem = _seconds(value, low, high)
    if problem is not None:
        raise UsageError(f"{name}: {problem}")
    return number


def _seconds(value: object, low: float, high: float) -> tuple[float, str | None]:
    """``(value as a float, None)``, or ``(nan, why it is refused)``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan, f"must be a number of seconds, not {value_name(value)}"
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not low <= number <= high:  # NaN fails every comparison
        shown = value if isinstance(value, int) else f"{number:g}"
        return math.nan, f"must be a number of seconds from {low:g} to {high:g}, not {shown}"
    return number, None


class Reader:
    """The typed getters of a config file's tables (subclasses read the tables)."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.base = file.absolute().parent
        self.lines = key_lines(text)

    def error(self, key: KeyPath, message: str) -> ConfigError:
        line = next(
            (self.lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in self.lines), None
        )
        return ConfigError(str(self.file), message, line=line, key=format_key(key) or None)

    # -- typed getters -------------------------------------------------------------------------
    def known_keys(self, at: KeyPath, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in table:
            if key == "command":
                raise self.error((*at, key), COMMAND_REFUSED)
            if key not in allowed:
                raise self.error((*at, key), f"unknown key (expected one of: {', '.join(allowed)})")

    def array(self, table: Mapping[str, Any], key: str) -> list[Any]:
        value = table.get(key, [])
        if not isinstance(value, list):
            raise self.error((key,), f"must be an array, not {value_name(value)}")
        return value

    def string(self, key: KeyPath, value: object) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {value_name(value)}")
        if not value.strip():
            raise self.error(key, "must not be empty")
        if "\0" in value:
            raise self.error(key, "must not contain a NUL character")
        return value

    def path(self, key: KeyPath, value: object) -> Path:
        """``~`` is expanded; a relative path is taken relative to the config file's directory."""
        expanded = Path(self.string(key, value)).expanduser()
        return expanded if expanded.is_absolute() else self.base / expanded

    def seconds(self, key: KeyPath, value: object) -> float:
        """A number of seconds within :data:`BOUNDS` of the key's name (``grace``...)."""
        name = key[-1]
        assert isinstance(name, str)
        number, problem = _seconds(value, *BOUNDS[name])
        if problem is not None:
            raise self.error(key, problem)
        return number
