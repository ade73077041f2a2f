"""Compile fresh caches for the running interpreter after a clean."""

from __future__ import annotations

import os
import py_compile
import sys
from collections.abc import Iterable
from pathlib import Path

from cachewatchd.cache.judge import Entry

__all__ = ["recompile"]

_MODES = {
    "timestamp": py_compile.PycInvalidationMode.TIMESTAMP,
    "checked-hash": py_compile.PycInvalidationMode.CHECKED_HASH,
    "unchecked-hash": py_compile.PycInvalidationMode.UNCHECKED_HASH,
}


def _default_mode() -> str:
    return "checked-hash" if os.environ.get("SOURCE_DATE_EPOCH") else "timestamp"


def recompile(
    entries: Iterable[Entry], mode: str | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Compile each entry's source for this interpreter at the entry's opt level.

    Entries of another interpreter's tag, or without a source, are skipped. Returns the pycs
    written and the failures (a source that does not compile is reported, not raised).
    """
    invalidation = _MODES[mode or _default_mode()]
    tag = sys.implementation.cache_tag
    done: list[Path] = []
    failed: list[tuple[Path, str]] = []
    seen: set[tuple[Path, int]] = set()
    for entry in entries:
        if entry.source is None or entry.kind == "legacy" or entry.tag != tag:
            continue
        level = int(entry.opt) if entry.opt.isdigit() else 0
        if (entry.source, level) in seen:
            continue
        seen.add((entry.source, level))
        try:
            written = py_compile.compile(
                str(entry.source), doraise=True, optimize=level, invalidation_mode=invalidation
            )
        except py_compile.PyCompileError as exc:
            failed.append((entry.source, f"does not compile: {exc.exc_type_name}"))
            continue
        except OSError as exc:
            failed.append((entry.source, exc.strerror or str(exc)))
            continue
        if written is not None:
            done.append(Path(written))
    return done, failed
