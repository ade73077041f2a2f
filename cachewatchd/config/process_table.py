"""The ``[[process]]`` tables of the user's config, each checked into a
:class:`~cachewatchd.processes.spec.ProcessSpec`; every problem a ConfigError with file, line and
key (``process[1].supervisor.url``; array indices count from 0)."""

from __future__ import annotations

import keyword
import re
import signal
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from cachewatchd.config.docker_table import DockerTables, docker_options
from cachewatchd.config.toml import KeyPath, show_value, value_name
from cachewatchd.processes.spec import SCOPES, ProcessSpec, SupervisorSpec

__all__ = ["ProcessTables"]

_SELECTORS = ("supervisor", "pidfile", "match", "systemd", "docker", "compose")
_OPTIONS = ("cwd", "root", "scope", "grace", "import_check", "health_url", "health_timeout", "log")
_PROCESS_KEYS = ("name", "action", "signal", *_SELECTORS, *_OPTIONS)
_SUPERVISOR_KEYS = ("url", "program", "username", "password")
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@\\-]+")


class ProcessTables(DockerTables):
    """A reader that also knows the ``[[process]]`` tables."""

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
            "docker": self.docker_table,
            "compose": self.compose_table,
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
        return ProcessSpec(action=action, **docker_options(kwargs))

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
