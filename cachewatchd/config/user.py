"""The user's TOML config: roots, polling, excludes, the own child's options and the managed processes
(their tables: :mod:`cachewatchd.config.process_table`; the typed getters and the bounds of numbers:
:mod:`cachewatchd.config.reader`).

Every problem in the user's config is a :class:`~cachewatchd.errors.ConfigError` naming the file,
the line and the key (``process[1].supervisor.url``; array indices count from 0). A project's own
``pyproject.toml``: :mod:`cachewatchd.config.project`; how the two combine:
:func:`cachewatchd.config.settings.plan_root`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachewatchd.config.process_table import ProcessTables
from cachewatchd.config.toml import loads, show_value, value_name
from cachewatchd.errors import ConfigError
from cachewatchd.paths import APP_NAME, read_regular
from cachewatchd.processes.listen import address_problem
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.watch.mounts import POLL_MODES, PollMode

__all__ = ["CONFIG_FILE_LIMIT", "Config", "default_config_path", "load_config"]

CONFIG_FILE_LIMIT = 1024 * 1024
"""The user's config file larger than this is refused (a ConfigError)."""

_TOP_KEYS = ("roots", "poll", "poll_interval", "reconcile_interval", "exclude", "process", "child")
_CHILD_KEYS = ("listen", "warm")
"""The ``[child]`` table: options of the own child (whose COMMAND comes from the command line)."""
_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


@dataclass(frozen=True)
class Config:
    """The user's configuration (defaults when no file exists)."""

    roots: tuple[Path, ...] = ()
    poll: PollMode = "auto"
    poll_interval: float = 1.0
    reconcile_interval: float = 600.0
    exclude: tuple[str, ...] = ()
    processes: tuple[ProcessSpec, ...] = ()
    child_listen: str | None = None
    """``[child] listen``: the address the daemon holds for the own child (``--listen`` beats it)."""
    child_warm: bool = True
    """``[child] warm``: fork a Python child's generations from a preloaded interpreter
    (``false``, like ``--cold``: always a cold start)."""
    path: Path | None = None
    """The file this came from; ``None`` for the built-in defaults."""
    explicit: frozenset[str] = frozenset()
    """Top-level keys the file set (so ``poll = "auto"`` written out still beats a project's poll)."""


def default_config_path() -> Path:
    """``<user config dir>/config.toml``, e.g. ``~/.config/cachewatchd/config.toml``.

    Nothing is created: reading the config must work (and find none) where the directory cannot
    be made, e.g. a service user whose ``$HOME`` does not exist."""
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """Read and validate the user's config.

    With *path* ``None`` the default file is read, and its absence gives the defaults; a *path*
    given explicitly must exist. Raises :class:`ConfigError` for anything wrong in the file, and
    for a file that is not a regular file (a FIFO is refused, never read) or is larger than
    :data:`CONFIG_FILE_LIMIT`.
    """
    file = path if path is not None else default_config_path()
    try:
        data = read_regular(file, CONFIG_FILE_LIMIT)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if path is None:  # nothing at the default place (or on the way to it): the defaults
            return Config()
        missing = isinstance(exc, FileNotFoundError)
        reason = "no such file" if missing else f"cannot read: {exc.strerror}"
        raise ConfigError(str(file), reason) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(str(file), f"cannot read: {reason}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(file), "not valid UTF-8 text", line=line) from None
    return _Validator(file, text).config(_parse_toml(str(file), text))


def _parse_toml(file: str, text: str) -> dict[str, Any]:
    """``tomllib.loads`` with its errors turned into a ConfigError carrying the line."""
    try:
        table: dict[str, Any] = loads(text)
    except RecursionError:
        raise ConfigError(file, "invalid TOML: nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError and friends
        message = str(exc)
        if m := _AT_LINE.search(message):
            message, line = f"{message[: m.start()]} (column {m.group(2)})", int(m.group(1))
        elif m := _AT_END.search(message):
            message, line = (
                f"{message[: m.start()]} (at end of file)",
                text.rstrip().count("\n") + 1,
            )
        else:
            line = None
        raise ConfigError(file, f"invalid TOML: {message}", line=line) from None
    return table


class _Validator(ProcessTables):
    """Turns the parsed TOML of the user's config into a :class:`Config`, or a ConfigError."""

    def config(self, table: Mapping[str, Any]) -> Config:
        self.known_keys((), table, _TOP_KEYS)
        return Config(
            roots=tuple(
                self.path(("roots", i), v) for i, v in enumerate(self.array(table, "roots"))
            ),
            poll=self.poll(table.get("poll", "auto")),
            poll_interval=self.seconds(("poll_interval",), table.get("poll_interval", 1.0)),
            reconcile_interval=self.seconds(
                ("reconcile_interval",), table.get("reconcile_interval", 600.0)
            ),
            exclude=tuple(
                self.string(("exclude", i), v) for i, v in enumerate(self.array(table, "exclude"))
            ),
            processes=self.processes(table),
            child_listen=self.child(table).get("listen"),
            child_warm=self.child_warm(table),
            path=self.file,
            explicit=frozenset(table),
        )

    def poll(self, value: object) -> PollMode:
        if value not in POLL_MODES:
            allowed = ", ".join(f'"{m}"' for m in POLL_MODES)
            raise self.error(("poll",), f"must be one of {allowed}, not {show_value(value)}")
        return value

    # -- [child] -------------------------------------------------------------------------------
    def child(self, table: Mapping[str, Any]) -> dict[str, str]:
        """The ``[child]`` table's options, checked."""
        item = table.get("child", {})
        if not isinstance(item, dict):
            raise self.error(("child",), f"must be a table ([child]), not {value_name(item)}")
        self.known_keys(("child",), item, _CHILD_KEYS)
        options = {key: self.string(("child", key), item[key]) for key in item if key != "warm"}
        if "listen" in options and (problem := address_problem(options["listen"])) is not None:
            raise self.error(("child", "listen"), problem)
        if options.get("listen", "").startswith("unix:"):  # relative: to the config's directory
            options["listen"] = f"unix:{self.path(('child', 'listen'), options['listen'][5:])}"
        return options

    def child_warm(self, table: Mapping[str, Any]) -> bool:
        """``[child] warm``: a boolean, ``true`` when absent."""
        item = table.get("child", {})
        value = item.get("warm", True) if isinstance(item, dict) else True
        if not isinstance(value, bool):
            raise self.error(("child", "warm"), f"must be true or false, not {value_name(value)}")
        return value
