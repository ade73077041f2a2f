"""Which own-child commands can start warm, and what their fork runs: :func:`warm_plan`.

A command is a Python command when it is ``PYTHON [OPTIONS] -m MODULE ARGS``, ``PYTHON [OPTIONS]
SCRIPT ARGS``, or a script whose shebang names a Python (a console script such as ``uvicorn`` or
``gunicorn``, found on the ``PATH`` of the child's environment). Its :class:`WarmPlan` says how the
preloader must be started (interpreter and options) and what a fork runs, with which ``sys.argv``
and ``sys.path[0]``: exactly what the interpreter would have made of the command. Anything else
(``-c``, ``-i``, standard input, an option this module does not know) is not a warm command, and
:func:`warm_plan` says why.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from cachewatchd.paths import read_regular

__all__ = ["WarmPlan", "warm_plan"]

_PYTHON_NAME = re.compile(r"python[0-9.]*")
_FLAGS = set("bBdEIOPqsSuv")
"""Interpreter options without a value that keep their meaning in the preloader."""
_VALUED = {"-W", "-X"}
_NO_PATH0 = set("IP")
"""``-I`` and ``-P`` (3.11+) put nothing first on ``sys.path``."""


@dataclass(frozen=True)
class WarmPlan:
    """How to start the preloader of a command, and what its forks run."""

    python: str
    """The interpreter, as the command names it (a venv's ``bin/python`` kept as is)."""
    options: tuple[str, ...]
    """The interpreter options of the command (``-u``, ``-X dev``...), given to the preloader."""
    mode: Literal["module", "script"]
    target: str
    """The module name (``-m``) or the script's path."""
    argv: tuple[str, ...]
    """``sys.argv`` of the fork before the entry point runs (``-m`` rewrites ``argv[0]``)."""
    path0: str | None
    """``sys.path[0]`` of the command (``None`` with ``-I``/``-P``)."""
    title: tuple[str, ...] = ()
    """The command line the kernel would show for the command (``/proc/PID/cmdline``)."""
    unset: tuple[str, ...] = ()
    assign: tuple[tuple[str, str], ...] = ()
    """A leading ``env -u NAME NAME=VALUE``: the variables it removes and sets."""

    def environ(self, env: Mapping[str, str]) -> dict[str, str]:
        """*env* as the command's ``env`` prefix leaves it."""
        out = {k: v for k, v in env.items() if k not in self.unset}
        out.update(self.assign)
        return out


def _which(name: str, cwd: str, env: Mapping[str, str]) -> str | None:
    if os.sep in name:
        path = os.path.join(cwd, name)
        return path if os.access(path, os.X_OK) else None
    return shutil.which(name, path=env.get("PATH", os.defpath))


def _shebang(path: str) -> list[str] | None:
    """The interpreter and its one argument from *path*'s ``#!`` line, when it names a Python."""
    try:
        first = read_regular(path, 1 << 20)[:512].split(b"\n", 1)[0]
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
        if words and words[0].startswith("-"):
            return None  # env -S...: not a plain interpreter line
    if not words or not _PYTHON_NAME.fullmatch(os.path.basename(words[0])):
        return None
    return words


def _options(args: Sequence[str]) -> tuple[list[str], int, str | None]:
    """The interpreter options at the head of *args*, the index after them, and why they are not
    usable (``None`` when they are)."""
    options: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] not in ("-", "-m"):
        arg = args[i]
        if arg == "--":
            return options, i + 1, None
        if arg[:2] in _VALUED:
            if len(arg) == 2:
                if i + 1 >= len(args):
                    return options, i, f"{arg} needs a value"
                options += [arg, args[i + 1]]
                i += 2
            else:
                options.append(arg)
                i += 1
            continue
        if arg.startswith("-m"):
            break
        if arg.startswith("--") or not set(arg[1:]) <= _FLAGS:
            return options, i, f"the interpreter option {arg} is not supported warm"
        options.append(arg)
        i += 1
    return options, i, None


def warm_plan(
    command: Sequence[str], cwd: str, env: Mapping[str, str]
) -> tuple[WarmPlan | None, str]:
    """The plan for *command* run in *cwd* with *env*, or ``None`` and why it starts cold."""
    if not command:
        return None, "the command is empty"
    if os.path.basename(command[0]) == "env":
        return _env_plan(command, cwd, env)
    exe = _which(command[0], cwd, env)
    if exe is None:
        return None, f"{command[0]!r} is not found"
    if _PYTHON_NAME.fullmatch(os.path.basename(command[0])):
        plan, why = _interpreter_plan(command[0], list(command[1:]), cwd)
        return (replace(plan, title=tuple(command)) if plan else None), why
    words = _shebang(exe)
    if words is None:
        return None, f"{command[0]!r} is not a Python command"
    python = _which(words[0], cwd, env)
    if python is None:
        return None, f"the interpreter of {command[0]!r} ({words[0]}) is not found"
    plan, why = _interpreter_plan(python, [*words[1:], exe, *command[1:]], cwd)
    title = (words[0], *words[1:], exe, *command[1:])  # what execve of a #! script makes
    return (replace(plan, title=title) if plan else None), why


def _env_plan(
    command: Sequence[str], cwd: str, env: Mapping[str, str]
) -> tuple[WarmPlan | None, str]:
    """``env [-u NAME]... [NAME=VALUE]... COMMAND``: the plan of COMMAND in the environment
    ``env`` makes."""
    unset: list[str] = []
    assign: list[tuple[str, str]] = []
    i = 1
    while i < len(command):
        token = command[i]
        if token in ("-u", "--unset") and i + 1 < len(command):
            unset.append(command[i + 1])
            i += 2
        elif token.startswith("-"):
            return None, f"env {token} is not supported warm"
        elif "=" in token:
            name, _, value = token.partition("=")
            assign.append((name, value))
            i += 1
        else:
            break
    rest = command[i:]
    if not rest or os.path.basename(rest[0]) == "env":
        return None, "env runs no command"
    done = WarmPlan("", (), "module", "", (), None, unset=tuple(unset), assign=tuple(assign))
    plan, why = warm_plan(rest, cwd, done.environ(env))
    if plan is None:
        return None, why
    return replace(plan, unset=done.unset, assign=done.assign), ""


def _interpreter_plan(python: str, args: list[str], cwd: str) -> tuple[WarmPlan | None, str]:
    options, i, problem = _options(args)
    if problem is not None:
        return None, problem
    no_path0 = any(o[:1] == "-" and o[1:2] != "-" and set(o[1:]) & _NO_PATH0 for o in options)
    if i < len(args) and args[i].startswith("-m"):
        module = args[i][2:] or (args[i + 1] if i + 1 < len(args) else "")
        rest = args[i + 1 :] if args[i][2:] else args[i + 2 :]
        if not module:
            return None, "-m needs a module name"
        path0 = None if no_path0 else cwd
        return WarmPlan(python, tuple(options), "module", module, ("-m", *rest), path0), ""
    if i >= len(args) or args[i] == "-":
        return None, "the program comes from standard input"
    script = args[i]
    if args[i].startswith("-"):
        return None, f"the interpreter option {args[i]} is not supported warm"
    path0 = None if no_path0 else os.path.dirname(os.path.realpath(os.path.join(cwd, script)))
    return WarmPlan(python, tuple(options), "script", script, (script, *args[i + 1 :]), path0), ""
