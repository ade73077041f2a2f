"""The ``docker`` and ``compose`` selectors of ``[[process]]``: what they give, and every refusal
as one line with file, line and key (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachewatchd.config.user import load_config
from cachewatchd.errors import EXIT_USAGE, ConfigError
from cachewatchd.processes.spec import DockerSpec


def _load(tmp_path: Path, text: str) -> object:
    file = tmp_path / "config.toml"
    file.write_text(text, encoding="utf-8")
    return load_config(file)


def test_docker_and_compose_targets(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[[process]]\nname = "api"\ndocker = { container = "backend" }\n'
        '[[process]]\nname = "web"\naction = "signal"\nsignal = "hup"\ngrace = 20\n'
        'compose = { project = "shop", service = "web", host = "unix:///run/d.sock" }\n',
    )
    api, web = config.processes  # type: ignore[attr-defined]
    assert api.docker == DockerSpec(container="backend")
    assert api.action == "restart"
    assert web.docker == DockerSpec(
        project="shop", service="web", host="unix:///run/d.sock", stop_timeout=20.0
    )
    assert (web.action, web.signal) == ("signal", "HUP")


ERRORS = [
    ('docker = "backend"', 3, "process[0].docker", "must be a table"),
    ("docker = { }", 3, "process[0].docker", "needs container"),
    ('docker = { container = "a b" }', 3, "process[0].docker.container", "not a container name"),
    ('docker = { container = "x", image = "y" }', 3, "process[0].docker.image", "unknown"),
    ('compose = { project = "shop" }', 3, "process[0].compose", "needs service"),
    (
        'compose = { project = "Shop", service = "b" }',
        3,
        "process[0].compose.project",
        "not a compose project name",
    ),
    (
        'docker = { container = "x", host = "tcp://10.0.0.1:2375" }',
        3,
        "process[0].docker.host",
        "only over a unix socket",
    ),
    (
        'docker = { container = "x" }\nmatch = "gunicorn"',
        4,
        "process[0].match",
        "exactly one of",
    ),
    ('docker = { container = "x" }\ncwd = "/srv"', 4, "process[0].cwd", "only applies together"),
    ('docker = { container = "x" }\nlog = "/tmp/l"', 4, "process[0].log", "only applies"),
    ('docker = { container = "x" }\naction = "signal"', 4, "process[0].action", "needs signal"),
]


@pytest.mark.parametrize(("body", "line", "key", "fragment"), ERRORS)
def test_refusals_are_one_line_with_file_line_and_key(
    tmp_path: Path, body: str, line: int, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f'[[process]]\nname = "a"\n{body}\n')
    error = info.value
    assert (error.line, error.key) == (line, key), str(error)
    assert fragment in error.message
    assert "\n" not in error.message
    assert error.exit_code == EXIT_USAGE


def test_the_readmes_docker_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### From the host", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    backend, worker = _load(tmp_path, block).processes  # type: ignore[attr-defined]
    assert backend.docker == DockerSpec(container="backend", stop_timeout=5.0)
    assert backend.import_check == "app.main"
    assert worker.docker == DockerSpec(project="shop", service="worker")
    assert (worker.action, worker.signal) == ("signal", "HUP")
