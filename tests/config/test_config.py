"""Config: the user's TOML file (every error with its line and key), a project's pyproject.toml
(trust model), precedence, and the platformdirs locations."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewatchd import paths
from cachewatchd.config.project import ProjectConfig, load_project_config
from cachewatchd.config.settings import RootPlan, plan_root
from cachewatchd.config.toml import format_key, key_lines
from cachewatchd.config.user import Config, default_config_path, load_config
from cachewatchd.errors import EXIT_USAGE, ConfigError
from cachewatchd.processes.spec import DockerSpec, ProcessSpec, SupervisorSpec


@pytest.fixture(autouse=True)
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Redirect every platformdirs location (and ~) into the test's directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".state"))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- locations ---------------------------------------------------------------------------------


def test_dirs_follow_xdg_and_are_private(xdg: Path, tmp_path: Path) -> None:
    assert paths.config_dir() == xdg / ".config" / "cachewatchd"
    assert paths.state_dir() == xdg / ".state" / "cachewatchd"
    assert paths.runtime_dir() == tmp_path / "run" / "cachewatchd"
    assert paths.log_dir().is_relative_to(xdg / ".state" / "cachewatchd")
    for directory in (paths.config_dir(), paths.state_dir(), paths.runtime_dir(), paths.log_dir()):
        assert directory.is_dir()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert default_config_path() == xdg / ".config" / "cachewatchd" / "config.toml"


@pytest.mark.parametrize("problem", ["unset", "relative", "group-readable", "missing"])
def test_runtime_dir_falls_back_to_state_dir(
    problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    if problem == "unset":
        monkeypatch.delenv("XDG_RUNTIME_DIR")
    elif problem == "relative":
        monkeypatch.setenv("XDG_RUNTIME_DIR", "run")
    elif problem == "group-readable":
        runtime.chmod(0o750)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "nowhere"))
    assert paths.runtime_dir() == paths.state_dir()


# -- loading -------------------------------------------------------------------------------------


def test_missing_default_file_gives_defaults() -> None:
    assert load_config() == Config()
    assert load_config().path is None


def test_default_file_is_read(xdg: Path) -> None:
    file = write(xdg / ".config" / "cachewatchd" / "config.toml", 'poll = "always"\n')
    config = load_config()
    assert config.poll == "always"
    assert config.path == file
    assert config.explicit == {"poll"}


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: no such file"
    assert info.value.exit_code == EXIT_USAGE


def test_unreadable_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_full_config(tmp_path: Path, xdg: Path) -> None:
    file = write(
        tmp_path / "etc" / "c.toml",
        """\
roots = ["~/src", "rel/proj", "/abs"]
poll = "never"
poll_interval = 2
reconcile_interval = 60.5
exclude = ["*.tmp", "build/**"]

[[process]]
name = "web"
supervisor = { url = "unix:///tmp/s.sock", program = "group:*", username = "u", password = "p" }

[[process]]
name = "gunicorn"
action = "signal"
signal = "sighup"
match = "gunicorn: master"
cwd = "srv"
root = "/abs/app"
grace = 3
import_check = "app.main"
health_url = "http://127.0.0.1:8000/health"
health_timeout = 5

[[process]]
name = "api"
pidfile = "~/api.pid"
action = "signal"
signal = "USR2"

[[process]]
name = "unit"
systemd = "app@1.service"

[[process]]
name = "sup-tcp"
[process.supervisor]
url = "https://127.0.0.1:9001/"
program = "web"
""",
    )
    config = load_config(file)
    base = tmp_path / "etc"
    assert config.roots == (xdg / "src", base / "rel" / "proj", Path("/abs"))
    assert (config.poll, config.poll_interval, config.reconcile_interval) == ("never", 2.0, 60.5)
    assert config.exclude == ("*.tmp", "build/**")
    assert config.path == file
    web, gun, api, unit, tcp = config.processes
    assert web == ProcessSpec(
        name="web",
        supervisor=SupervisorSpec("unix:///tmp/s.sock", "group:*", username="u", password="p"),
    )
    assert gun == ProcessSpec(
        name="gunicorn",
        action="signal",
        signal="HUP",
        match="gunicorn: master",
        cwd=base / "srv",
        root=Path("/abs/app"),
        grace=3.0,
        import_check="app.main",
        health_url="http://127.0.0.1:8000/health",
        health_timeout=5.0,
    )
    assert api == ProcessSpec(name="api", pidfile=xdg / "api.pid", action="signal", signal="USR2")
    assert unit == ProcessSpec(name="unit", systemd="app@1.service")
    assert tcp.supervisor == SupervisorSpec("https://127.0.0.1:9001/", "web")
    assert all(isinstance(p.grace, float) for p in config.processes)


# Each case: file text, expected line, expected key (None: no key), fragment of the message.
ERRORS = [
    ("roots = []\npoll = = 3\n", 2, None, "invalid TOML: Invalid value (column 8)"),
    ('roots = []\nx = "abc', 2, None, "invalid TOML: Unterminated string (at end of file)"),
    ("a = 1\na = 2\n", 2, None, "Cannot overwrite a value"),
    ('poll = "auto"\n\npolling = 1\n', 3, "polling", "unknown key (expected one of: roots,"),
    ('roots = []\ncommand = ["x"]\n', 2, "command", "only from the command line"),
    (
        '\npoll = "sometimes"\n',
        2,
        "poll",
        'must be one of "auto", "always", "never", not "sometimes"',
    ),
    ("poll = 1\n", 1, "poll", "not an integer"),
    ("poll_interval = -1\n", 1, "poll_interval", "a number of seconds from 0.05 to 3600, not -1"),
    ("poll_interval = 0\n", 1, "poll_interval", "from 0.05 to 3600, not 0"),
    ("poll_interval = 0.01\n", 1, "poll_interval", "from 0.05 to 3600, not 0.01"),
    ("poll_interval = 1e12\n", 1, "poll_interval", "from 0.05 to 3600, not 1e+12"),
    ("poll_interval = 10000\n", 1, "poll_interval", "from 0.05 to 3600, not 10000"),
    ('poll_interval = "1"\n', 1, "poll_interval", "must be a number of seconds, not a string"),
    ("poll_interval = true\n", 1, "poll_interval", "not a boolean"),
    ("poll_interval = inf\n", 1, "poll_interval", "from 0.05 to 3600, not inf"),
    ("poll_interval = nan\n", 1, "poll_interval", "from 0.05 to 3600, not nan"),
    ("# c\nreconcile_interval = -5.5\n", 2, "reconcile_interval", "not -5.5"),
    ("reconcile_interval = 1e12\n", 1, "reconcile_interval", "from 1 to 604800, not 1e+12"),
    (
        "reconcile_interval = 99999999999999999999999\n",
        1,
        "reconcile_interval",
        "from 1 to 604800, not 99999999999999999999999",
    ),
    ('roots = "/x"\n', 1, "roots", "must be an array, not a string"),
    ("roots = [\n  1,\n]\n", 1, "roots[0]", "must be a string, not an integer"),
    ('roots = ["/a", ""]\n', 1, "roots[1]", "must not be empty"),
    ('roots = ["/a\\u0000b"]\n', 1, "roots[0]", "NUL"),
    ("exclude = [1]\n", 1, "exclude[0]", "must be a string"),
    ('[process]\nname = "a"\n', 1, "process", "use [[process]] tables"),
    ("process = [1]\n", 1, "process[0]", "must be a table, not an integer"),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\n\n[[process]]\npidfile = "/q"\n',
        5,
        "process[1]",
        'needs a name = "..."',
    ),
    ('[[process]]\nname = "a"\npidfile = "/p"\nfoo = 1\n', 4, "process[0].foo", "unknown key"),
    (
        '[[process]]\nname = "a"\ncommand = ["uvicorn", "app:app"]\n',
        3,
        "process[0].command",
        "not allowed in the config file: the daemon's own child comes only from the command line",
    ),
    ('[[process]]\nname = "a"\n', 1, "process[0]", "needs exactly one of supervisor, pidfile"),
    (
        '[[process]]\nname = "a"\nmatch = "x"\npidfile = "/p"\n',
        4,
        "process[0].pidfile",
        "(found pidfile and match)",
    ),
    ('[[process]]\nname = "a"\npidfile = "/p"\naction = "kill"\n', 4, "process[0].action", "kill"),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\naction = "signal"\n',
        4,
        "process[0].action",
        'needs signal = "HUP"',
    ),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\nsignal = "HUP"\n',
        4,
        "process[0].signal",
        'only applies with action = "signal"',
    ),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\naction = "signal"\nsignal = "SIGNOPE"\n',
        5,
        "process[0].signal",
        "unknown signal 'SIGNOPE'",
    ),
    ('[[process]]\nname = "a"\nsupervisor = "web"\n', 3, "process[0].supervisor", "a table"),
    (
        '[[process]]\nname = "a"\nsupervisor = { url = "unix:///s" }\n',
        3,
        "process[0].supervisor",
        "needs program",
    ),
    (
        '[[process]]\nname = "a"\nsupervisor = { url = "unix:///s", program = "w", x = 1 }\n',
        3,
        "process[0].supervisor.x",
        "unknown key (expected one of: url, program, username, password)",
    ),
    (
        '[[process]]\nname = "a"\n[process.supervisor]\nprogram = "w"\nurl = "unix://rel.sock"\n',
        5,
        "process[0].supervisor.url",
        "absolute socket path",
    ),
    (
        '[[process]]\nname = "a"\n[process.supervisor]\nprogram = "w"\nurl = "ftp://h:1"\n',
        5,
        "process[0].supervisor.url",
        "must be a URL like http://127.0.0.1:9001",
    ),
    (
        '[[process]]\nname = "a"\n[process.supervisor]\nprogram = "w"\nurl = "http://h"\n',
        5,
        "process[0].supervisor.url",
        "must be http(s)://host:port",
    ),
    (
        '[[process]]\nname = "a"\nsupervisor = { url = "unix:///s", program = "w", username = "u" }\n',
        3,
        "process[0].supervisor",
        "username and password go together",
    ),
    ('[[process]]\nname = "a"\nmatch = "("\n', 3, "process[0].match", "not a valid regular expr"),
    ('[[process]]\nname = "a"\nmatch = ".*"\n', 3, "process[0].match", "would match every process"),
    ('[[process]]\nname = "a"\npidfile = "/p"\ncwd = "/x"\n', 4, "process[0].cwd", "with match"),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\nscope = "any"\n',
        4,
        "process[0].scope",
        "with match",
    ),
    (
        '[[process]]\nname = "a"\nmatch = "x"\nscope = "everywhere"\n',
        4,
        "process[0].scope",
        'must be "roots" or "any", not "everywhere"',
    ),
    ('[[process]]\nname = "a"\npidfile = "/p"\ngrace = 0\n', 4, "process[0].grace", "0.1 to 3600"),
    ('[[process]]\nname = "a"\npidfile = "/p"\ngrace = 1e12\n', 4, "process[0].grace", "1e+12"),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\nhealth_url = "http://h/"\nhealth_timeout = 1e12\n',
        5,
        "process[0].health_timeout",
        "a number of seconds from 0.1 to 3600, not 1e+12",
    ),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\nhealth_timeout = 3\n',
        4,
        "process[0].health_timeout",
        "only applies together with health_url",
    ),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\nhealth_url = "ftp://x/"\n',
        4,
        "process[0].health_url",
        "must be a URL like http://host/",
    ),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\nhealth_url = "http://h:99999/"\n',
        4,
        "process[0].health_url",
        "not a valid URL",
    ),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\nimport_check = "pkg.1mod"\n',
        4,
        "process[0].import_check",
        "not a dotted module name",
    ),
    (
        '[[process]]\nname = "a"\npidfile = "/p"\nimport_check = "class.x"\n',
        4,
        "process[0].import_check",
        "not a dotted module name",
    ),
    ('[[process]]\nname = "a"\nsystemd = "app/x.service"\n', 3, "process[0].systemd", "unit name"),
    (
        '[[process]]\nname = "web"\npidfile = "/p"\n\n[[process]]\nname = "other"\npidfile = "/q"\n'
        '\n[[process]]\n  name = "web"\npidfile = "/r"\n',
        10,
        "process[2].name",
        "duplicate name 'web' (already used by process[0])",
    ),
    (
        'x = """\npoll = 3\n"""\n[[process]]\n"name" = "a"\npidfile.x = 1\n',
        1,
        "x",
        "unknown key",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), ERRORS)
def test_config_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str | None, fragment: str
) -> None:
    file = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    error = info.value
    assert (error.file, error.line, error.key) == (str(file), line, key)
    prefix = f"{file}:{line}: {key}: " if key else f"{file}:{line}: "
    assert str(error).startswith(prefix), str(error)
    assert fragment in str(error)
    assert "\n" not in str(error)


def test_scanner_finds_the_line_after_a_multiline_string(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        'roots = []\n[[process]]\nname = "a"\nmatch = """\npidfile = 1\n"""\npidfile = 2\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert (info.value.line, info.value.key) == (7, "process[0].pidfile")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_bytes(b'poll = "auto"\n# ok\nroots = ["\xff"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value) == f"{file}:3: not valid UTF-8 text"


def test_key_lines_understands_headers_and_quoted_keys() -> None:
    text = (
        "top = 1\n"
        "[a.b]\n"
        "'lit.key' = 1\n"
        '  "q\\"k".x = 2\n'
        "[[arr]]\n"
        "v = 1\n"
        "[[arr]]\n"
        "[arr.sub]\n"
        "w = 2\n"
        "[[arr.items]]\n"
        "z = 3\n"
    )
    lines = key_lines(text)
    assert lines[("top",)] == 1
    assert lines[("a", "b", "lit.key")] == 3
    assert lines[("a", "b", 'q"k', "x")] == 4
    assert lines[("arr", 0, "v")] == 6
    assert lines[("arr", 1)] == 7
    assert lines[("arr", 1, "sub", "w")] == 9
    assert lines[("arr", 1, "items", 0, "z")] == 11
    assert format_key(("arr", 1, "sub", "a.b")) == 'arr[1].sub."a.b"'


# -- property: nothing but ConfigError -----------------------------------------------------------

FRAGMENTS = [
    "[[process]]",
    "[process]",
    "[process.supervisor]",
    'name = "a"',
    'name = "b"',
    "name = 1",
    'pidfile = "/p"',
    'match = "x+"',
    'match = "("',
    'systemd = "a.service"',
    'action = "signal"',
    'signal = "HUP"',
    "signal = 9",
    'supervisor = { url = "unix:///s", program = "w" }',
    'url = "http://h:1"',
    'program = "p"',
    "grace = -1",
    "grace = 1e400",
    "grace = 10",
    'roots = ["~", "a"]',
    "roots = [[]]",
    'poll = "always"',
    "poll_interval = 0.5",
    "reconcile_interval = 99999999999999999999",
    'exclude = ["x"]',
    "command = 1",
    'cwd = "/"',
    'health_url = "http://[::1"',
    'health_url = "http://h/"',
    "health_timeout = 1",
    'import_check = "a.b"',
    '"key with space" = 1',
    "x = {",
    '"""',
    "a.b.c = 1",
    "",
]


def _assert_only_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "config.toml"
        file.write_text(text, encoding="utf-8", errors="surrogatepass")
        error: ConfigError | None = None
        try:
            load_config(file)
        except ConfigError as exc:
            error = exc
        assert error is None or error.message.startswith(str(file))


@settings(
    max_examples=300, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.text())
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    _assert_only_config_error(text)


@settings(
    max_examples=300, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12))
def test_plausible_configs_raise_only_config_error(lines: list[str]) -> None:
    _assert_only_config_error("\n".join(lines))


# -- project config: the trust model -------------------------------------------------------------


def test_project_without_pyproject_or_section(tmp_path: Path) -> None:
    assert load_project_config(tmp_path) == ProjectConfig()
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert load_project_config(tmp_path) == ProjectConfig()


def test_project_may_set_exclude_and_poll_only(tmp_path: Path) -> None:
    file = write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n\n[tool.cachewatchd]\nexclude = ["gen/*"]\npoll = "always"\n'
        'roots = ["/"]\ncommand = ["rm", "-rf", "/"]\n\n[[tool.cachewatchd.process]]\n'
        'name = "evil"\nmatch = "sshd"\naction = "signal"\nsignal = "KILL"\n',
    )
    project = load_project_config(tmp_path)
    assert project.exclude == ("gen/*",)
    assert project.poll == "always"
    assert len(project.warnings) == 3
    roots, command, process = project.warnings
    assert roots.startswith(f"{file}:7: [tool.cachewatchd] roots ignored: ")
    assert command.startswith(f"{file}:8: [tool.cachewatchd] command ignored: ")
    assert process.startswith(f"{file}:10: [tool.cachewatchd] process ignored: ")
    assert "may set only exclude and poll" in process


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[tool.cachewatchd\n", "cannot read [tool.cachewatchd]: "),
        ("[tool]\ncachewatchd = 3\n", "2: [tool.cachewatchd] is not a table; ignored"),
        ('[tool.cachewatchd]\nexclude = "x"\n', "2: [tool.cachewatchd] exclude must be an array"),
        ("[tool.cachewatchd]\nexclude = [1]\n", "2: [tool.cachewatchd] exclude must be an array"),
        ('[tool.cachewatchd]\npoll = "often"\n', "2: [tool.cachewatchd] poll must be one of auto"),
        ("[tool.cachewatchd]\npoll = true\n", "not a boolean; ignored"),
    ],
)
def test_broken_project_config_is_a_warning(tmp_path: Path, text: str, fragment: str) -> None:
    file = write(tmp_path / "pyproject.toml", text)
    project = load_project_config(tmp_path)
    assert (project.exclude, project.poll) == ((), None)
    assert len(project.warnings) == 1
    assert project.warnings[0].startswith(str(file))
    assert fragment in project.warnings[0]


def test_project_pyproject_not_utf8_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_bytes(b"\xff\xfe")
    assert "cannot read" in load_project_config(tmp_path).warnings[0]


# -- precedence --------------------------------------------------------------------------------


def test_poll_precedence_and_exclude_union(tmp_path: Path) -> None:
    root = tmp_path / "root"
    project = ProjectConfig(exclude=("p", "shared"), poll="always")
    defaults = Config()
    assert plan_root(root, defaults, ProjectConfig()) == RootPlan(root, "auto", "default")
    assert plan_root(root, defaults, project) == RootPlan(
        root, "always", "project", ("p", "shared")
    )
    user = load_config(write(tmp_path / "c.toml", 'poll = "auto"\nexclude = ["u", "shared"]\n'))
    plan = plan_root(root, user, project)
    assert (plan.poll, plan.poll_source) == ("auto", "config")
    plan = plan_root(root, user, project, cli_poll="never", cli_exclude=["c"])
    assert (plan.path, plan.poll, plan.poll_source) == (root, "never", "command line")
    assert plan.exclude == ("c", "u", "shared", "p")


def test_config_path_is_not_resolved(tmp_path: Path) -> None:
    """A symlinked config (dotfiles) takes relative roots from the link's directory."""
    real = write(tmp_path / "dotfiles" / "c.toml", 'roots = ["proj"]\n')
    link_dir = tmp_path / "conf"
    link_dir.mkdir()
    os.symlink(real, link_dir / "c.toml")
    assert load_config(link_dir / "c.toml").roots == (link_dir / "proj",)


def test_the_documented_example_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path / "config.toml", example))
    names = ["web", "api", "worker", "queue", "backend", "celery"]
    assert [p.name for p in config.processes] == names
    assert config.processes[1].signal == "HUP"
    assert config.processes[4].docker == DockerSpec(container="backend", stop_timeout=5.0)
    assert config.processes[5].docker == DockerSpec(
        project="shop", service="celery", host="unix:///run/user/1000/docker.sock"
    )
    trusted = doc.split("```toml\n", 2)[2].split("```", 1)[0]
    write(tmp_path / "project" / "pyproject.toml", trusted)
    project = load_project_config(tmp_path / "project")
    assert (project.exclude, project.poll) == (("generated",), "always")
    assert len(project.warnings) == 2


def test_process_log_option(tmp_path: Path) -> None:
    from cachewatchd.config.user import load_config

    cfg = tmp_path / "config.toml"
    cfg.write_text('[[process]]\nname = "web"\nmatch = "uvicorn"\nlog = "web.log"\n')
    assert load_config(cfg).processes[0].log == tmp_path / "web.log"
    cfg.write_text('[[process]]\nname = "web"\nsystemd = "web.service"\nlog = "web.log"\n')
    with pytest.raises(ConfigError, match=r"config.toml:4: process\[0\].log: only applies"):
        load_config(cfg)


def test_process_scope_option(tmp_path: Path) -> None:
    from cachewatchd.config.user import load_config

    cfg = tmp_path / "config.toml"
    cfg.write_text('[[process]]\nname = "web"\nmatch = "uvicorn"\nscope = "any"\n')
    assert load_config(cfg).processes[0].scope == "any"
    cfg.write_text('[[process]]\nname = "web"\nmatch = "uvicorn"\n')
    assert load_config(cfg).processes[0].scope == "roots"
