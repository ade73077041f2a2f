"""The systemd unit and launchd agent: rendering (systemd-analyze verify, plistlib), install, uninstall."""

from __future__ import annotations

import configparser
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewatchd.cli import main
from cachewatchd.errors import RuntimeFailure, UsageError
from cachewatchd.service.files import (
    LABEL,
    UNIT_NAME,
    render_plist,
    render_unit,
    service_command,
    service_file_path,
    systemd_quote,
)
from cachewatchd.service.install import (
    detect_manager,
    install_service,
    plan_install,
    uninstall_service,
)

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
CONSOLE_SCRIPT = Path(sys.executable).parent / "cachewatchd"
EXAMPLE_COMMAND = ("/usr/local/bin/cachewatchd",)
EXAMPLE_LOG_DIR = Path("/Users/USER/Library/Logs/cachewatchd")
AWKWARD_ROOTS = [
    "/srv/plain",
    "/tmp/with space",
    "/tmp/100%",
    "/tmp/$HOME and ${HOME}",
    "/tmp/back\\slash",
    '/tmp/quo"te',
    "/tmp/it's",
    "/tmp/semi;colon",
    "/tmp/tab\there",
    "/tmp/new\nline",
    "/tmp/caf\u00e9",
]


# --- a reference reader of systemd command lines -------------------------------------------------

_C_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "s": " ",
}  # fmt: skip


def _resolve_specifiers(line: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) != "%%":
            raise AssertionError(f"unexpected specifier {match.group(0)!r} in {line!r}")
        return "%"

    return re.sub(r"%.", one, line)


def _replace_env(word: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) != "$$":
            raise AssertionError(f"systemd would expand {match.group(0)!r} in {word!r}")
        return "$"

    return re.sub(r"\$(\$|\{|[A-Za-z_])", one, word)


def systemd_split(line: str) -> list[str]:
    """argv of an ExecStart= value as systemd builds it: specifiers, quotes, C escapes, then ``$$``."""
    text = _resolve_specifiers(line)
    words: list[str] = []
    i = 0
    while True:
        while i < len(text) and text[i] in " \t\n\r":
            i += 1
        if i >= len(text):
            return words
        buf, quote = bytearray(), ""
        while i < len(text) and (quote or text[i] not in " \t\n\r"):
            c = text[i]
            if c == "\\" and text[i + 1] == "x":
                buf.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            if c == "\\":
                buf += _C_ESCAPES[text[i + 1]].encode()
                i += 2
                continue
            if c == quote:
                quote = ""
            elif not quote and c in "\"'":
                quote = c
            else:
                buf += c.encode("utf-8", "surrogateescape")
            i += 1
        assert not quote, f"unbalanced quotes in {line!r}"
        words.append(_replace_env(os.fsdecode(bytes(buf))))


def exec_start(unit: str) -> str:
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


# --- rendering ---------------------------------------------------------------------------------


def test_quoting_round_trips_awkward_paths() -> None:
    for root in [*AWKWARD_ROOTS, os.fsdecode(b"/tmp/not-utf8-\xff")]:
        assert systemd_split(systemd_quote(root)) == [root]
    assert systemd_quote("/srv/plain") == "/srv/plain"


@given(st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1))
def test_quoting_round_trips_any_text(text: str) -> None:
    assert systemd_split(systemd_quote(text)) == [text]


def test_unit_command_line_is_absolute_foreground_and_roots() -> None:
    roots = [Path(r) for r in AWKWARD_ROOTS]
    unit = render_unit(roots)
    assert systemd_split(exec_start(unit)) == [*service_command(), "--foreground", *AWKWARD_ROOTS]
    assert Path(service_command()[0]).is_absolute()


def test_unit_settings() -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(render_unit([Path("/srv/app")]))
    service = parser["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert int(service["WatchdogSec"]) > 0
    assert "PrivateUsers" not in service
    assert parser["Install"]["WantedBy"] == "default.target"


def _verify(unit: str, tmp_path: Path, *, user: bool) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    unit_dir = tmp_path / ("user" if user else "system")
    unit_dir.mkdir(exist_ok=True)
    (unit_dir / UNIT_NAME).write_text(unit, encoding="utf-8")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    argv = [SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify", str(unit_dir / UNIT_NAME)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("user", [False, True], ids=["system-manager", "user-manager"])
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path, user: bool) -> None:
    # The ExecStart binary must exist: service_command() is this venv's real console script.
    unit = render_unit([Path(r) for r in AWKWARD_ROOTS])
    done = _verify(unit, tmp_path, user=user)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    # The check has teeth: verify exits 0 on an unknown key, but says so on stderr.
    broken = _verify(unit.replace("[Service]\n", "[Service]\nBogusKey=1\n"), tmp_path, user=user)
    assert "BogusKey" in broken.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_executable_path_with_space_and_percent_is_found_by_systemd(tmp_path: Path) -> None:
    exe = tmp_path / "odd dir" / "cw 100%$x"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n", encoding="utf-8")
    exe.chmod(0o755)
    done = _verify(render_unit([], command=[str(exe)]), tmp_path, user=False)
    assert (done.returncode, done.stderr) == (0, "")
    missing = _verify(render_unit([], command=[str(exe) + "-gone"]), tmp_path, user=False)
    assert "is not executable" in missing.stderr


def test_unrunnable_executable_paths_are_refused() -> None:
    with pytest.raises(RuntimeFailure, match="quotes, backslashes"):
        render_unit([], command=['/opt/we"ird/cachewatchd'])
    with pytest.raises(UsageError, match="absolute"):
        render_unit([], command=["cachewatchd"])
    with pytest.raises(UsageError, match="absolute"):
        render_unit([Path("relative/root")])


def test_plist_round_trips_with_required_keys_and_types(tmp_path: Path) -> None:
    roots = [Path("/tmp/a & b <c>"), Path("/tmp/caf\u00e9")]
    data = plistlib.loads(render_plist(roots, log_dir=tmp_path / "logs").encode())
    assert data["Label"] == LABEL
    assert data["ProgramArguments"] == [*service_command(), "--foreground", *map(str, roots)]
    assert all(isinstance(a, str) for a in data["ProgramArguments"])
    assert Path(data["ProgramArguments"][0]).is_absolute()
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["KeepAlive"]["SuccessfulExit"] is False
    assert data["ProcessType"] == "Background"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert Path(data[key]).parent == tmp_path / "logs"


def test_plist_logs_go_to_the_macos_user_log_dir(fake_home: Path) -> None:
    data = plistlib.loads(render_plist([]).encode())
    assert data["StandardErrorPath"] == str(fake_home / "Library/Logs/cachewatchd/cachewatchd.log")


@pytest.mark.parametrize(
    ("example", "render"),
    [
        ("systemd/cachewatchd.service", lambda: render_unit([], command=EXAMPLE_COMMAND)),
        (
            f"launchd/{LABEL}.plist",
            lambda: render_plist([], command=EXAMPLE_COMMAND, log_dir=EXAMPLE_LOG_DIR),
        ),
    ],
)
def test_committed_examples_match_the_packaged_templates(example: str, render: object) -> None:
    assert callable(render)
    expected = render()
    actual = (REPO / example).read_text(encoding="utf-8")
    assert actual == expected, f"{example} is out of date: regenerate it from the template"


def test_service_command_falls_back_to_dash_m(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if CONSOLE_SCRIPT.is_file():
        assert service_command() == (str(CONSOLE_SCRIPT),)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert service_command() == (str(tmp_path / "python"), "-m", "cachewatchd")


def test_detect_manager() -> None:
    assert detect_manager("linux") == "systemd"
    assert detect_manager("darwin") == "launchd"
    assert detect_manager("launchd") == "launchd"
    with pytest.raises(UsageError, match="win32"):
        detect_manager("win32")


# --- install / uninstall ------------------------------------------------------------------------


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    return home


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH restricted to an empty directory: no systemctl, no launchctl."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def fake_tool(bin_dir: Path, name: str, *, stderr: str = "", status: int = 0) -> Path:
    """A real executable on PATH that records its argv, one call per line."""
    log = bin_dir / f"{name}.calls"
    script = bin_dir / name
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> {shlex.quote(str(log))}\n"
        + (f"printf '%s\\n' {shlex.quote(stderr)} >&2\n" if stderr else "")
        + f"exit {status}\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return log


def calls(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if not p.is_dir())


def test_dry_run_prints_the_unit_and_the_commands_and_writes_nothing(
    fake_home: Path, bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = fake_tool(bin_dir, "systemctl")
    project = tmp_path / "my project"
    project.mkdir()
    assert main(["install-service", "--dry-run", str(project)]) == 0
    out = capsys.readouterr().out
    assert f'ExecStart={service_command()[0]} --foreground "{project}"' in out
    assert "systemctl --user daemon-reload" in out
    assert "systemctl --user enable --now cachewatchd.service" in out
    assert "loginctl enable-linger $USER" in out
    assert all_files(fake_home) == []
    assert calls(log) == []


def test_install_and_uninstall_with_systemctl(
    fake_home: Path, bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = fake_tool(bin_dir, "systemctl")
    unit = fake_home / ".config/systemd/user/cachewatchd.service"
    assert main(["install-service", str(tmp_path)]) == 0
    assert unit.read_text(encoding="utf-8") == render_unit([tmp_path])
    assert calls(log) == ["--user daemon-reload", "--user enable --now cachewatchd.service"]
    captured = capsys.readouterr()
    assert "installed and running" in captured.out
    assert "loginctl enable-linger" in captured.out
    assert captured.err == ""

    # Reinstalling with other roots restarts a running instance onto the new unit.
    other = tmp_path / "other"
    other.mkdir()
    assert main(["install-service", str(tmp_path), str(other)]) == 0
    assert systemd_split(exec_start(unit.read_text(encoding="utf-8")))[-2:] == [
        str(tmp_path),
        str(other),
    ]
    assert calls(log)[-1] == "--user try-restart cachewatchd.service"

    log.unlink()
    assert main(["uninstall-service"]) == 0
    assert not unit.exists()
    assert calls(log) == ["--user disable --now cachewatchd.service", "--user daemon-reload"]
    assert "stopped and removed" in capsys.readouterr().out


def test_install_respects_xdg_config_home(
    fake_home: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tool(bin_dir, "systemctl")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    result = install_service([tmp_path])
    assert result.complete
    assert result.plan.path == tmp_path / "xdg/systemd/user/cachewatchd.service"
    assert result.plan.path.is_file()
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    assert service_file_path("systemd") == fake_home / ".config/systemd/user/cachewatchd.service"


def test_without_systemctl_the_unit_is_written_and_the_rest_is_explained(
    fake_home: Path, bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = fake_home / ".config/systemd/user/cachewatchd.service"
    assert main(["install-service", str(tmp_path)]) == 0
    assert unit.is_file()
    captured = capsys.readouterr()
    assert "systemctl not found on PATH" in captured.err
    assert "Run by hand:\n  systemctl --user daemon-reload\n" in captured.err
    assert "  systemctl --user enable --now cachewatchd.service\n" in captured.err
    assert "loginctl enable-linger $USER" in captured.out
    assert "installed and running" not in captured.out

    assert main(["uninstall-service"]) == 0
    assert not unit.exists()
    captured = capsys.readouterr()
    assert "systemctl not found on PATH" in captured.err
    assert "systemctl --user stop cachewatchd.service" in captured.err


def test_no_user_bus_is_a_warning_and_every_command_is_tried(
    fake_home: Path, bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = fake_tool(
        bin_dir, "systemctl", stderr="Failed to connect to bus: No medium found", status=1
    )
    result = install_service([tmp_path])
    assert result.plan.path.is_file()
    assert not result.failures
    assert [o.status for o in result.outcomes] == ["done", "unavailable", "unavailable"]
    assert "No medium found" in result.unavailable[0].detail
    assert calls(log) == ["--user daemon-reload", "--user enable --now cachewatchd.service"]
    assert main(["install-service", str(tmp_path)]) == 0
    assert "no user service manager reachable" in capsys.readouterr().err


def test_a_refusing_service_manager_is_a_failure(
    fake_home: Path, bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = fake_tool(
        bin_dir, "systemctl", stderr="Failed to enable unit: Unit file is masked.", status=1
    )
    assert main(["install-service", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "cachewatchd: error: systemctl --user daemon-reload: exit status 1" in err
    assert "  systemctl --user enable --now cachewatchd.service\n" in err
    assert calls(log) == ["--user daemon-reload"]  # nothing after the failed step


def test_unwritable_config_dir_is_one_line_and_exit_3(
    fake_home: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    log = fake_tool(bin_dir, "systemctl")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocker))
    assert main(["install-service", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "cachewatchd: error: write " in err
    assert "Traceback" not in err
    assert calls(log) == []


def test_uninstall_without_an_installed_service(
    fake_home: Path, bin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = fake_tool(bin_dir, "systemctl")
    assert main(["uninstall-service"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert calls(log) == []


def test_uninstall_dry_run_changes_nothing(
    fake_home: Path, bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = fake_tool(bin_dir, "systemctl")
    install_service([tmp_path])
    before = calls(log)
    assert main(["uninstall-service", "--dry-run"]) == 0
    assert "systemctl --user disable --now cachewatchd.service" in capsys.readouterr().out
    assert service_file_path("systemd").is_file()
    assert calls(log) == before


def test_offline_enable_link_left_behind_is_reported(
    fake_home: Path, bin_dir: Path, tmp_path: Path
) -> None:
    install_service([tmp_path])  # no systemctl: written, not enabled
    unit = service_file_path("systemd")
    link = unit.parent / "default.target.wants" / UNIT_NAME
    link.parent.mkdir()
    link.symlink_to(unit)
    result = uninstall_service()
    assert not unit.exists()
    assert f"rm {link}" in result.manual


def test_bad_path_is_a_usage_error(
    fake_home: Path, bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install-service", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"cachewatchd: {tmp_path / 'missing'}: no such directory\n"
    assert all_files(fake_home) == []


def test_launchd_install_reinstall_uninstall(
    fake_home: Path, bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = fake_tool(bin_dir, "launchctl")
    agent = fake_home / "Library/LaunchAgents" / f"{LABEL}.plist"
    domain = f"gui/{os.getuid()}"
    assert main(["install-service", "--manager", "launchd", str(tmp_path)]) == 0
    data = plistlib.loads(agent.read_bytes())
    assert data["ProgramArguments"][-2:] == ["--foreground", str(tmp_path)]
    assert (fake_home / "Library/Logs/cachewatchd").is_dir()
    assert calls(log) == [f"bootstrap {domain} {agent}"]

    assert main(["install-service", "--manager", "launchd", str(tmp_path)]) == 0
    assert calls(log)[1:] == [f"bootout {domain}/{LABEL}", f"bootstrap {domain} {agent}"]

    log.unlink()
    assert main(["uninstall-service", "--manager", "launchd"]) == 0
    assert calls(log) == [f"bootout {domain}/{LABEL}"]
    assert not agent.exists()
    capsys.readouterr()


def test_launchd_plan_without_launchctl(fake_home: Path, bin_dir: Path, tmp_path: Path) -> None:
    plan = plan_install([tmp_path], platform="darwin")
    assert plan.manager == "launchd"
    assert [s.describe() for s in plan.steps][-1].startswith("launchctl bootstrap gui/")
    result = install_service([tmp_path], platform="darwin")
    assert plan.path.is_file()
    assert [o.status for o in result.outcomes] == ["done", "done", "unavailable"]
    assert "launchctl not found on PATH" in result.unavailable[0].detail


@pytest.mark.skipif(not CONSOLE_SCRIPT.is_file(), reason="console script not installed")
def test_console_script_dry_run_and_help(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    env.update(HOME=str(home), NO_COLOR="1")
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "install-service", "--dry-run", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert f"ExecStart={CONSOLE_SCRIPT} --foreground {tmp_path}" in done.stdout
    assert all_files(home) == []
    helped = subprocess.run(
        [str(CONSOLE_SCRIPT), "uninstall-service", "--help"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert helped.returncode == 0
    assert "Exit status:" in helped.stdout


def test_pre_commit_hook_runs_a_real_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    hook = dict(
        line.strip().lstrip("- ").split(": ", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert hook["id"] == "cachewatchd-scan"
    assert hook["language"] == "python"
    assert (hook["pass_filenames"], hook["always_run"]) == ("false", "true")
    command = shlex.split(hook["entry"])
    assert command[0] == "cachewatchd"
    assert main([*command[1:], "--help"]) == 0
    assert "usage: cachewatchd scan" in capsys.readouterr().out


def test_install_without_path_or_config_roots_watches_the_current_directory(
    fake_home: Path,
    bin_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    assert main(["install-service", "--dry-run", "--manager", "systemd"]) == 0
    out = capsys.readouterr().out
    assert f"the service will watch {project.resolve()}" in out
    assert f"--foreground {project.resolve()}" in out
