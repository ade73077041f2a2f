"""The user's TOML config: roots, polling, excludes and the managed processes.

Every problem in the user's config is a :class:`~cachewatchd.errors.ConfigError` naming the file,
the line and the key (``process[1].supervisor.url``; array indices count from 0). A project's own
``pyproject.toml``: :mod:`cachewatchd.config.project`; how the two combine:
:func:`cachewatchd.config.settings.plan_root`.
"""

from __future__ import annotations

import keyword
import math
import re
import signal
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cachewatchd.config.toml import KeyPath, format_key, key_lines, loads, show_value, value_name
from cachewatchd.errors import ConfigError, UsageError
from cachewatchd.paths import APP_NAME, read_regular
from cachewatchd.processes.listen import address_problem
from cachewatchd.processes.spec import SCOPES, ProcessSpec, SupervisorSpec
from cachewatchd.watch.mounts import POLL_MODES, PollMode
from cachewatchd.watch.polling import POLL_INTERVAL_RANGE

__all__ = [
    "BOUNDS",
    "CONFIG_FILE_LIMIT",
    "Config",
    "check_number",
    "default_config_path",
    "load_config",
]

CONFIG_FILE_LIMIT = 1024 * 1024
"""The user's config file larger than this is refused (a ConfigError)."""

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

_TOP_KEYS = ("roots", "poll", "poll_interval", "reconcile_interval", "exclude", "process", "child")
_CHILD_KEYS = ("listen", "warm")
"""The ``[child]`` table: options of the own child (whose COMMAND comes from the command line)."""
_SELECTORS = ("supervisor", "pidfile", "match", "systemd")
_OPTIONS = ("cwd", "root", "scope", "grace", "import_check", "health_url", "health_timeout", "log")
_PROCESS_KEYS = ("name", "action", "signal", *_SELECTORS, *_OPTIONS)
_SUPERVISOR_KEYS = ("url", "program", "username", "password")
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@\\-]+")
_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")
_COMMAND_REFUSED = (
    "not allowed in the config file: the daemon's own child comes only from the command line "
    "(cachewatchd PATH -- COMMAND ARGS...)"
)


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


class _Validator:
    """Turns the parsed TOML of the user's config into a :class:`Config`, or a ConfigError."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.base = file.absolute().parent
        self.lines = key_lines(text)

    def error(self, key: KeyPath, message: str) -> ConfigError:
        line = next(
            (self.lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in self.lines), None
        )
        return ConfigError(str(self.file), message, line=line, key=format_key(key) or None)

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

    # -- typed getters -------------------------------------------------------------------------
    def known_keys(self, at: KeyPath, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in table:
            if key == "command":
                raise self.error((*at, key), _COMMAND_REFUSED)
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

    # -- [[process]] ---------------------------------------------------------------------------
    def processes(self, table: Mapping[str, Any]) -> tuple[ProcessSpec, ...]:
        if isinstance(table.get("process"), dict):
            raise self.error(("process",), "use [[process]] tables (an array), not [process]")
        specs: dict[str, ProcessSpec] = {}
        for index, item in enumerate(self.array(table, "process")):
            if not isinstance(item, dict):
                raise self.error(("process", index), f"must be a table, not {value_name(item)}")
            spec = self.process(("process", index), item)
            if spec.name in specs:
                first = list(specs).index(spec.name)
                message = f"duplicate name {spec.name!r} (already used by process[{first}])"
                raise self.error(("process", index, "name"), message)
            specs[spec.name] = spec
        return tuple(specs.values())

    def process(self, at: KeyPath, item: Mapping[str, Any]) -> ProcessSpec:
        self.known_keys(at, item, _PROCESS_KEYS)
        if "name" not in item:
            raise self.error(at, 'needs a name = "..."')
        chosen = [key for key in _SELECTORS if key in item]
        if len(chosen) != 1:
            found = f" (found {' and '.join(chosen)})" if chosen else ""
            keys = [(*at, key) for key in chosen] or [at]
            where = max(keys, key=lambda k: self.lines.get(k, 0))
            raise self.error(where, f"needs exactly one of {', '.join(_SELECTORS)}{found}")
        for option, needs in (
            ("cwd", "match"),
            ("scope", "match"),
            ("health_timeout", "health_url"),
        ):
            if option in item and needs not in item:
                raise self.error((*at, option), f"only applies together with {needs}")
        if "log" in item and not ("match" in item or "pidfile" in item):
            raise self.error((*at, "log"), "only applies together with match or pidfile")
        action = item.get("action", "restart")
        if action not in ("restart", "signal"):
            raise self.error(
                (*at, "action"), f'must be "restart" or "signal", not {show_value(action)}'
            )
        checks: dict[str, Callable[[KeyPath, Any], object]] = {
            "name": self.string,
            "supervisor": self.supervisor,
            "pidfile": self.path,
            "match": self.regex,
            "systemd": self.unit,
            "cwd": self.path,
            "root": self.path,
            "scope": self.scope,
            "grace": self.seconds,
            "import_check": self.module,
            "health_url": self.http_url,
            "health_timeout": self.seconds,
            "log": self.path,
        }
        kwargs = {key: check((*at, key), item[key]) for key, check in checks.items() if key in item}
        kwargs["signal"] = self.signal_name(at, item, action)
        return ProcessSpec(action=action, **kwargs)  # type: ignore[arg-type]

    def signal_name(self, at: KeyPath, item: Mapping[str, Any], action: str) -> str | None:
        if action == "restart":
            if "signal" in item:
                raise self.error((*at, "signal"), 'only applies with action = "signal"')
            return None
        if "signal" not in item:
            raise self.error((*at, "action"), 'action = "signal" needs signal = "HUP" (or another)')
        name = self.string((*at, "signal"), item["signal"]).strip().upper().removeprefix("SIG")
        if f"SIG{name}" not in signal.Signals.__members__:
            raise self.error((*at, "signal"), f"unknown signal {item['signal']!r}")
        return name

    def supervisor(self, key: KeyPath, value: object) -> SupervisorSpec:
        if not isinstance(value, dict):
            raise self.error(key, 'must be a table: { url = "unix:///...", program = "..." }')
        self.known_keys(key, value, _SUPERVISOR_KEYS)
        for required in ("url", "program"):
            if required not in value:
                raise self.error(key, f"needs {required}")
        if ("username" in value) != ("password" in value):
            raise self.error(key, "username and password go together")
        url = self.string((*key, "url"), value["url"])
        if url.startswith("unix://"):
            if not url.removeprefix("unix://").startswith("/"):
                raise self.error(
                    (*key, "url"), "needs an absolute socket path: unix:///path/x.sock"
                )
        else:
            self.http_url((*key, "url"), url, supervisor=True)
        strings = {k: self.string((*key, k), value[k]) for k in _SUPERVISOR_KEYS if k in value}
        return SupervisorSpec(**strings)

    def http_url(self, key: KeyPath, value: object, *, supervisor: bool = False) -> str:
        text = self.string(key, value)
        example = "http://127.0.0.1:9001 or unix:///path/x.sock" if supervisor else "http://host/"
        try:
            parts = urllib.parse.urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise self.error(key, f"is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(key, f"must be a URL like {example}, not {text!r}")
        if supervisor and (port is None or parts.path not in ("", "/") or parts.query):
            raise self.error(key, f"must be http(s)://host:port like {example}, not {text!r}")
        return text

    def regex(self, key: KeyPath, value: object) -> str:
        pattern = self.string(key, value)
        try:
            compiled = re.compile(pattern)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise self.error(key, f"is not a valid regular expression: {exc}") from None
        if compiled.search("") is not None:
            raise self.error(key, "matches an empty command line, so it would match every process")
        return pattern

    def scope(self, key: KeyPath, value: object) -> str:
        if value not in SCOPES:
            allowed = " or ".join(f'"{s}"' for s in SCOPES)
            raise self.error(key, f"must be {allowed}, not {show_value(value)}")
        return str(value)

    def unit(self, key: KeyPath, value: object) -> str:
        unit = self.string(key, value)
        if not _UNIT_NAME.fullmatch(unit) or unit.startswith("-"):
            raise self.error(key, f"is not a systemd unit name: {unit!r}")
        return unit

    def module(self, key: KeyPath, value: object) -> str:
        module = self.string(key, value)
        if not all(p.isidentifier() and not keyword.iskeyword(p) for p in module.split(".")):
            raise self.error(key, f"is not a dotted module name: {module!r}")
        return module
