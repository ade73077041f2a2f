"""The Docker selectors of a ``[[process]]`` table: ``docker = { container = "backend" }`` and
``compose = { project = "shop", service = "backend" }``, each with an optional ``host``
(``unix:///path/docker.sock``); checked into a :class:`~cachewatchd.processes.spec.DockerSpec`."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from cachewatchd.config.reader import Reader
from cachewatchd.config.toml import KeyPath, value_name
from cachewatchd.processes.spec import DockerSpec

__all__ = ["DockerTables", "docker_options"]

_CONTAINER = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9_.-]*")
"""A container name (Docker's rule) or an id (hex, a prefix of it)."""
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")
"""A compose project name (compose's rule: lowercase letters, digits, dashes, underscores)."""
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class DockerTables(Reader):
    """The getters of the ``docker`` and ``compose`` tables."""

    def docker_table(self, key: KeyPath, value: object) -> DockerSpec:
        table = self._table(key, value, ("container", "host"), 'docker = { container = "name" }')
        container = self._name(key, table, "container", _CONTAINER, "a container name or id")
        return DockerSpec(container=container.lstrip("/"), host=self._host(key, table))

    def compose_table(self, key: KeyPath, value: object) -> DockerSpec:
        example = 'compose = { project = "shop", service = "backend" }'
        table = self._table(key, value, ("project", "service", "host"), example)
        project = self._name(key, table, "project", _PROJECT, "a compose project name")
        service = self._name(key, table, "service", _SERVICE, "a compose service name")
        return DockerSpec(project=project, service=service, host=self._host(key, table))

    def _table(
        self, key: KeyPath, value: object, keys: tuple[str, ...], example: str
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table: {example}, not {value_name(value)}")
        self.known_keys(key, value, keys)
        return value

    def _name(
        self, key: KeyPath, table: dict[str, Any], name: str, rule: re.Pattern[str], what: str
    ) -> str:
        if name not in table:
            raise self.error(key, f"needs {name}")
        text = self.string((*key, name), table[name])
        if not rule.fullmatch(text):
            raise self.error((*key, name), f"is not {what}: {text!r}")
        return text

    def _host(self, key: KeyPath, table: dict[str, Any]) -> str | None:
        if "host" not in table:
            return None
        host = self.string((*key, "host"), table["host"])
        if not host.startswith("unix:///"):
            raise self.error(
                (*key, "host"),
                f"must be a unix socket like unix:///var/run/docker.sock, not {host!r} "
                "(cachewatchd talks to Docker only over a unix socket)",
            )
        return host


def docker_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """*kwargs* of a ``ProcessSpec`` with ``compose`` as its ``docker`` selector, and a ``grace``
    the user gave as the container's stop timeout."""
    if "compose" in kwargs:
        kwargs["docker"] = kwargs.pop("compose")
    if "docker" in kwargs and "grace" in kwargs:
        kwargs["docker"] = dataclasses.replace(kwargs["docker"], stop_timeout=kwargs["grace"])
    return kwargs
