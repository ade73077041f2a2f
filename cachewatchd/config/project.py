"""A project's own ``pyproject.toml`` ``[tool.cachewatchd]``.

The project's file is the project's, not the user's: it may set ``exclude`` and ``poll`` only, and
anything wrong or untrusted in it becomes a warning string, never an error (trust model: a cloned
repository never makes the daemon act on processes or run commands). How it combines with the
user's config and the command line: :func:`cachewatchd.config.settings.plan_root`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachewatchd.config.toml import key_lines, loads, show_value
from cachewatchd.paths import read_regular
from cachewatchd.watch.mounts import POLL_MODES, PollMode

__all__ = ["PROJECT_FILE_LIMIT", "ProjectConfig", "load_project_config"]

_PROJECT_KEYS = ("exclude", "poll")
PROJECT_FILE_LIMIT = 4 * 1024 * 1024
"""A project's ``pyproject.toml`` larger than this is not read (a warning says so)."""


@dataclass(frozen=True)
class ProjectConfig:
    """What a project's own ``pyproject.toml`` may say: excludes and polling, nothing else."""

    exclude: tuple[str, ...] = ()
    poll: PollMode | None = None
    warnings: tuple[str, ...] = ()


def load_project_config(root: Path) -> ProjectConfig:
    """Read ``root/pyproject.toml`` ``[tool.cachewatchd]``: only ``exclude`` and ``poll`` count.

    Never raises for the file's content: a broken file, a wrong type or an untrusted key becomes a
    warning string naming the file (and line where known) and that setting is ignored. So does a
    ``pyproject.toml`` that is not a regular file (a FIFO is never opened for a blocking read) or
    is larger than :data:`PROJECT_FILE_LIMIT`.
    """
    file = root / "pyproject.toml"
    try:
        text = read_regular(file, PROJECT_FILE_LIMIT).decode("utf-8")
        data: dict[str, Any] = loads(text)
    except FileNotFoundError:
        return ProjectConfig()
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError, TOMLDecodeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ProjectConfig(
            warnings=(f"{file}: cannot read [tool.cachewatchd]: {reason}; ignored",)
        )
    tool = data.get("tool")
    section = tool.get("cachewatchd") if isinstance(tool, dict) else None
    if section is None:
        return ProjectConfig()
    lines = key_lines(text)

    def warn(key: str, message: str) -> str:
        line = lines.get(("tool", "cachewatchd", key)) or lines.get(("tool", "cachewatchd"))
        return f"{file}:{line}: {message}" if line else f"{file}: {message}"

    if not isinstance(section, dict):
        return ProjectConfig(warnings=(warn("", "[tool.cachewatchd] is not a table; ignored"),))
    warnings = [
        warn(
            key,
            f"[tool.cachewatchd] {key} ignored: a project's pyproject.toml may set only "
            "exclude and poll (processes, roots and commands come from your own config)",
        )
        for key in section
        if key not in _PROJECT_KEYS
    ]
    exclude = section.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(p, str) and p for p in exclude):
        warnings.append(
            warn(
                "exclude",
                "[tool.cachewatchd] exclude must be an array of non-empty strings; ignored",
            )
        )
        exclude = []
    poll = section.get("poll")
    if poll is not None and poll not in POLL_MODES:
        warnings.append(
            warn(
                "poll",
                f"[tool.cachewatchd] poll must be one of "
                f"{', '.join(POLL_MODES)}, not {show_value(poll)}; ignored",
            )
        )
        poll = None
    return ProjectConfig(exclude=tuple(exclude), poll=poll, warnings=tuple(warnings))
