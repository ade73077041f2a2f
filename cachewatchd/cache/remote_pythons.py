"""Interpreters reached through a command, for the pycs another system writes in a shared tree.

A container's Python writes the caches inside its bind mounts, often another version than any on
this host. Where the host has no CPython of a pyc's version
(:class:`~cachewatchd.cache.interpreters.Finder`), the exact check can run in the interpreter that
wrote it: a :class:`Command` is an argv prefix that runs it (``docker exec -i CONTAINER PYTHON``)
and the directory of this host it sees at another path (a bind mount's source and destination).

This layer knows nothing of containers: whoever knows them (the Docker targets) registers a
provider with :func:`provide`; :func:`commands_for` asks every provider about one pyc.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Sequence

from cachewatchd.cache.named import NamedTuple

__all__ = ["Command", "commands_for", "provide"]


class Command(NamedTuple):
    """An interpreter run by *argv* (its arguments follow), which sees this host's directory
    *host* at *inside*. Empty *argv*: it cannot run here, *why* says why."""

    argv: tuple[str, ...]
    host: str
    inside: str
    name: str
    """Who runs it, for messages: ``container backend (0123456789ab)``."""
    why: str = ""

    def covers(self, path: str) -> bool:
        """Whether *path* (of this host; :attr:`host` is a real path) lies in :attr:`host`."""
        real = os.path.realpath(path)
        return real == self.host or real.startswith(self.host.rstrip("/") + "/")

    def path(self, path: str) -> str:
        """*path* of this host as the interpreter sees it (unchanged outside :attr:`host`)."""
        if not self.covers(path):
            return path
        rest = os.path.realpath(path)[len(self.host.rstrip("/")) :]
        return self.inside.rstrip("/") + rest if rest else self.inside


Provider = Callable[[str], Sequence[Command]]
"""The commands whose interpreters see a pyc (an absolute path of this host)."""

_lock = threading.Lock()
_providers: dict[Hashable, Provider] = {}


def provide(owner: Hashable, provider: Provider | None) -> None:
    """Register *provider* for *owner* (a Docker target), or remove *owner*'s with ``None``."""
    with _lock:
        if provider is None:
            _providers.pop(owner, None)
        else:
            _providers[owner] = provider


def commands_for(pyc: str) -> list[Command]:
    """Every registered provider's commands covering *pyc* (providers never raise)."""
    with _lock:
        providers = list(_providers.values())
    path = os.path.realpath(pyc)
    found: list[Command] = []
    for provider in providers:
        found += [c for c in provider(path) if c.covers(path) and c not in found]
    return found
