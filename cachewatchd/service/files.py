"""The service files: the systemd user unit and the launchd agent, rendered for this installation.

The canonical files are package data (``cachewatchd/service/data/``). Rendering fills in the absolute command
line of the running installation (the ``cachewatchd`` console script next to ``sys.executable``, else
``sys.executable -m cachewatchd``) followed by ``--foreground`` and the roots, quoted for systemd or
written with :mod:`plistlib`. :mod:`cachewatchd.service.install` installs them.
"""

from __future__ import annotations

import os
import plistlib
import re
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from cachewatchd.errors import RuntimeFailure, UsageError

__all__ = [
    "LABEL",
    "UNIT_NAME",
    "Manager",
    "launchd_log_dir",
    "render_plist",
    "render_unit",
    "service_command",
    "service_file_path",
    "systemd_quote",
]

LABEL = "io.github.cachewatchd"
"""launchd label of the agent (and the plist's file name without ``.plist``)."""
UNIT_NAME = "cachewatchd.service"
Manager = Literal["systemd", "launchd"]

_PLACEHOLDER = "@EXEC_START@"
_SAFE_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./$-]+\Z")


def service_command() -> tuple[str, ...]:
    """Absolute command that starts this installation of cachewatchd."""
    exe = Path(os.path.abspath(sys.executable))
    script = exe.parent / "cachewatchd"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(exe), "-m", "cachewatchd")


def systemd_quote(arg: str) -> str:
    """Quote *arg* as one word of a systemd command line (specifiers, ``$`` and C escapes)."""
    out = []
    for ch in arg:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch in "%$":
            out.append(ch * 2)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # undecodable byte of a filename (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif not ch.isprintable():
            out.append("".join(f"\\x{b:02x}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    text = "".join(out)
    return text if _SAFE_WORD.match(arg) else f'"{text}"'


def _systemd_executable(path: str) -> str:
    # systemd refuses quotes, backslashes and control characters in the executable's name and does
    # not expand $ there; % is still a specifier.
    if not os.path.isabs(path):
        raise UsageError(f"the service needs an absolute executable path, got {path!r}")
    if any(ch in "\\\"'" or not ch.isprintable() for ch in path):
        raise RuntimeFailure(
            f"systemd cannot start an executable whose path has quotes, backslashes or control "
            f"characters: {path!r}; install cachewatchd under another path"
        )
    text = path.replace("%", "%%")
    return f'"{text}"' if any(ch.isspace() for ch in path) else text


def _arguments(roots: Sequence[Path], command: Sequence[str] | None) -> tuple[list[str], list[str]]:
    cmd = list(command) if command is not None else list(service_command())
    for root in roots:
        if not root.is_absolute():
            raise UsageError(f"service roots must be absolute paths, got {str(root)!r}")
    return cmd, ["--foreground", *(str(r) for r in roots)]


def _template(name: str) -> str:
    return (
        resources.files("cachewatchd.service")
        .joinpath("data")
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


def render_unit(roots: Sequence[Path] = (), *, command: Sequence[str] | None = None) -> str:
    """The systemd user unit for *command* (default: this installation) watching *roots*."""
    cmd, args = _arguments(roots, command)
    words = [_systemd_executable(cmd[0]), *(systemd_quote(a) for a in [*cmd[1:], *args])]
    template = _template(UNIT_NAME)
    if template.count(_PLACEHOLDER) != 1:
        raise RuntimeFailure(f"damaged unit template: expected one {_PLACEHOLDER}")
    return template.replace(_PLACEHOLDER, " ".join(words))


def render_plist(
    roots: Sequence[Path] = (),
    *,
    command: Sequence[str] | None = None,
    log_dir: Path | None = None,
) -> str:
    """The launchd agent for *command* watching *roots*, logging to *log_dir*/cachewatchd.log."""
    cmd, args = _arguments(roots, command)
    data = plistlib.loads(_template(f"{LABEL}.plist").encode("utf-8"))
    log = (log_dir if log_dir is not None else launchd_log_dir()) / "cachewatchd.log"
    data["ProgramArguments"] = [*cmd, *args]
    data["StandardOutPath"] = data["StandardErrorPath"] = str(log)
    try:
        return plistlib.dumps(data, sort_keys=False).decode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError("a path of the service is not valid UTF-8; launchd cannot use it") from exc


def launchd_log_dir() -> Path:
    from platformdirs.macos import MacOS

    return Path(MacOS("cachewatchd").user_log_dir)


def service_file_path(manager: Manager) -> Path:
    """Where the unit (``$XDG_CONFIG_HOME/systemd/user/``) or the agent (``~/Library/LaunchAgents``) goes."""
    if manager == "launchd":
        return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / "systemd" / "user" / UNIT_NAME
