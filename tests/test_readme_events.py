"""The README's "Log events" table names every event the code logs, with every field, and no other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})


def logged_events() -> dict[str, set[str]]:
    """Event name -> keyword fields, from every logger call in the package.

    Two wrappers log for their callers: the controller's ``_fault(event, **fields)`` (adds
    ``target``) and the daemon's ``_error(**fields)`` (event ``error``).
    """
    events: dict[str, set[str]] = {}
    for file in sorted((REPO / "cachewatchd").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            method, base = node.func.attr, ast.unparse(node.func.value)
            fields = {k.arg for k in node.keywords if k.arg is not None}
            first = node.args[0] if node.args else None
            name = first.value if isinstance(first, ast.Constant) else None
            if method == "_error" and base == "self":
                events.setdefault("error", set()).update(fields)
            elif not isinstance(name, str):
                continue
            elif method == "_fault" and base == "self":
                events.setdefault(name, set()).update((fields - {"warning"}) | {"target"})
            elif method in _LOG_METHODS and "log" in base.lower():
                events.setdefault(name, set()).update(fields)
    return events


def readme_table() -> dict[str, set[str]]:
    """Event name -> every backticked word of its row (a row may name several events)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Log events", 1)[1].split("\n### ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = line.split(" | ")
        if not line.startswith("| `") or len(cells) < 2:
            continue
        words = set(re.findall(r"`([^`]+)`", cells[1]))
        for name in re.findall(r"`([^`]+)`", cells[0]):
            rows[name] = words
    return rows


def test_every_logged_event_is_in_the_readme_with_its_fields() -> None:
    code, readme = logged_events(), readme_table()
    assert "restart-blocked" in code  # the scanner sees through the wrappers
    assert sorted(readme) == sorted(code)
    missing = {name: sorted(fields - readme[name]) for name, fields in code.items()}
    assert {name: gone for name, gone in missing.items() if gone} == {}
