"""Reading TOML for messages: where a key sits (a small line scanner aware of ``[table]`` and
``[[array]]`` headers), how to name a value, and the one ``tomllib``/``tomli`` import.

tomllib reports line numbers for syntax errors only; config validation uses this to name the line of
a key whose value is wrong.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["KeyPath", "format_key", "key_lines", "loads", "show_value", "value_name"]

KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_QUOTED_KEY = re.compile(r""""((?:[^"\\\n]|\\.)*)"|'([^'\n]*)'""")


def loads(text: str) -> dict[str, Any]:
    """``tomllib.loads`` (``tomli`` on Python 3.10); raises ``ValueError`` for invalid TOML."""
    table: dict[str, Any] = tomllib.loads(text)
    return table


def value_name(value: object) -> str:
    """What a TOML value is, for a message: ``"an integer"``, ``"a table"``..."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def show_value(value: object) -> str:
    """A string quoted, anything else by :func:`value_name`."""
    return f'"{value}"' if isinstance(value, str) else value_name(value)


def format_key(key: KeyPath) -> str:
    """``("process", 2, "supervisor", "url")`` -> ``process[2].supervisor.url``."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            out += f".{shown}" if out else shown
    return out


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key and table header of a (valid) TOML text to the line (1-based) defining it.

    Array-of-tables elements get their index: ``("process", 1, "name")``. Keys inside inline
    tables and array elements are not listed; callers fall back to the enclosing key's line.
    """
    found: dict[KeyPath, int] = {}
    arrays: dict[KeyPath, int] = {}
    table: KeyPath = ()
    closing: str | None = None
    for number, line in enumerate(text.split("\n"), 1):
        if closing is not None:
            closing = None if closing in line else closing
            continue
        pos = _skip_blanks(line, 0)
        if line.startswith("[", pos):
            is_array = line.startswith("[[", pos)
            parsed = _read_key(line, pos + (2 if is_array else 1))
            if parsed is not None:
                table = _resolve_header(parsed[0], arrays, is_array, found, number)
                found.setdefault(table, number)
            continue
        parsed = _read_key(line, pos)
        if parsed is None or not line.startswith("=", parsed[1]):
            continue
        found.setdefault((*table, *parsed[0]), number)
        value = line[_skip_blanks(line, parsed[1] + 1) :]
        if value[:3] in ('"""', "'''") and value[:3] not in value[3:]:
            closing = value[:3]
    return found


def _resolve_header(
    parts: list[str],
    arrays: dict[KeyPath, int],
    is_array: bool,
    found: dict[KeyPath, int],
    line: int,
) -> KeyPath:
    """Insert the current index of every array of tables along a header's path."""
    resolved: list[str | int] = []
    for i, part in enumerate(parts):
        resolved.append(part)
        path = tuple(resolved)
        if is_array and i == len(parts) - 1:
            arrays[path] = arrays.get(path, 0) + 1
            found.setdefault(path, line)
        if path in arrays:
            resolved.append(arrays[path] - 1)
    return tuple(resolved)


def _read_key(line: str, pos: int) -> tuple[list[str], int] | None:
    """A dotted key starting at *pos*: its parts and the position after it and its spaces."""
    parts: list[str] = []
    while True:
        pos = _skip_blanks(line, pos)
        match = _BARE_KEY.match(line, pos) or _QUOTED_KEY.match(line, pos)
        if match is None:
            return None
        if match.re is _BARE_KEY:
            parts.append(match.group(0))
        elif match.group(2) is not None:
            parts.append(match.group(2))
        else:
            try:
                parts.append(str(json.loads(f'"{match.group(1)}"')))
            except ValueError:
                parts.append(match.group(1))
        pos = _skip_blanks(line, match.end())
        if not line.startswith(".", pos):
            return parts, pos
        pos += 1


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos
