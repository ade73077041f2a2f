"""``cachewatchd doctor`` on real trees, real pycs, real processes and real inotify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cachewatchd.cache.audit import mirror_dir
from cachewatchd.cli import main
from cachewatchd.doctor.findings import plural
from cachewatchd.doctor.report import DoctorOptions, DoctorReport, Finding, run_doctor
from cachewatchd.errors import ConfigError
from tests.support.fifo import fifo_at, rescued
from tests.support.pycs import restore_mtime_edit, write
from tests.support.wait import compile_pyc, wait_until

CONSOLE_SCRIPT = Path(sys.executable).parent / "cachewatchd"
TAG = sys.implementation.cache_tag


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Own config, state and runtime dirs; no bytecode variables from the developer's shell."""
    for var in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "SOURCE_DATE_EPOCH",
                "PYTHONCHECKHASHBASEDPYCS"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root / "pkg" / "__init__.py", "")
    write(root / "pkg" / "m.py", "X = 1\n")
    return root.resolve()


def plant_stale_pyc(source: Path, cfile: Path | None = None) -> Path:
    """A real pyc, then a same-size edit whose mtime is restored: CPython would load the old code."""
    pyc = compile_pyc(source, cfile=cfile)
    # The pyc's own mtime is never read by CPython; moving it back makes "source changed after the
    # pyc was written" (ctime) certain even on filesystems with coarse timestamps.
    old = time.time() - 100
    os.utime(pyc, (old, old))
    restore_mtime_edit(source, source.read_text().replace("1", "2"))
    return pyc


def by_id(report: DoctorReport) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for finding in report.findings:
        out.setdefault(finding.id, []).append(finding)
    return out


def doctor(root: Path, **options: object) -> DoctorReport:
    return run_doctor([root], DoctorOptions(**{"environ": {}, **options}))  # type: ignore[arg-type]


def test_clean_project_needs_no_action(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compile_pyc(project / "pkg" / "m.py")
    report = doctor(project)
    assert not report.needs_action, [f for f in report.findings if f.needs_action]
    found = by_id(report)
    assert found["caches"][0].message.startswith("1 cache entry: 1 fresh")
    assert found["events"][0].message == "native events arrive"
    assert "daemon" in found
    if sys.platform.startswith("linux"):
        assert "inotify instances" in found["inotify"][0].message
    assert not list(project.glob(".cachewatchd-probe-*")), "the probe file was left behind"
    assert main(["doctor", str(project)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("Nothing needs action.")


def test_planted_stale_pyc_is_an_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pyc = plant_stale_pyc(project / "pkg" / "m.py")
    (finding,) = by_id(doctor(project))["stale-caches"]
    assert finding.severity == "error"
    assert finding.message.startswith("1 stale cache entry")
    assert finding.details[0].startswith(f"{pyc}: ")
    assert finding.action.startswith(f"cachewatchd clean {project}")
    assert main(["doctor", str(project)]) == 1
    out = capsys.readouterr().out
    assert "error    stale-caches: 1 stale cache entry" in out
    assert f"-> cachewatchd clean {project}" in out


def test_environment_variables_are_reported(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "prefix"
    source = project / "pkg" / "m.py"
    pyc = plant_stale_pyc(source, cfile=mirror_dir(prefix, source.parent) / f"m.{TAG}.pyc")
    env = {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPYCACHEPREFIX": str(prefix),
        "SOURCE_DATE_EPOCH": "315532800",
        "PYTHONCHECKHASHBASEDPYCS": "never",
    }
    found = by_id(doctor(project, environ=env))
    assert found["env-dont-write-bytecode"][0].severity == "info"
    assert str(prefix) in found["env-pycache-prefix"][0].message
    assert "315532800" in found["env-source-date-epoch"][0].message
    assert found["env-check-hash-pycs"][0].severity == "warning"
    # The prefix tree is audited only because the variable is set.
    assert found["stale-caches"][0].details[0].startswith(f"{pyc}: ")
    assert "stale-caches" not in by_id(doctor(project))

    # The real environment is what the CLI judges.
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    report = run_doctor([project])
    assert {"env-dont-write-bytecode", "env-pycache-prefix", "env-source-date-epoch"} <= set(
        by_id(report)
    )
    monkeypatch.setenv("PYTHONCHECKHASHBASEDPYCS", "default")
    assert "env-check-hash-pycs" not in by_id(run_doctor([project]))


def test_forced_polling_from_the_command_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    found = by_id(doctor(project, poll="always"))
    assert found["polling"][0].message == (
        'polling is forced for this root (poll = "always" from the command line)'
    )
    assert "watched by polling (--poll always)" in found["filesystem"][0].message
    assert found["events"][0].message == "native events arrive (polling is not needed)"
    assert main(["doctor", "--poll", "always", "--json", str(project)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert "polling" in [f["id"] for f in document["findings"]]


def test_forced_polling_from_the_config_and_the_project(project: Path, tmp_path: Path) -> None:
    write(tmp_path / "config" / "cachewatchd" / "config.toml", 'poll = "always"\n')
    assert "from the config" in by_id(doctor(project))["polling"][0].message
    (tmp_path / "config" / "cachewatchd" / "config.toml").unlink()
    write(project / "pyproject.toml", '[tool.cachewatchd]\npoll = "always"\n')
    assert "from the project" in by_id(doctor(project))["polling"][0].message
    assert "polling" not in by_id(doctor(project, poll="auto"))


def test_project_config_warnings(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.cachewatchd]\nprocess = "evil"\n')
    found = by_id(doctor(project))
    assert "process ignored" in found["project-config"][0].message
    assert found["project-config"][0].severity == "warning"


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_broken_config_is_one_line_and_exit_2(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], json_output: bool
) -> None:
    config = write(tmp_path / "config" / "cachewatchd" / "config.toml", "poll = [\n")
    with pytest.raises(ConfigError):
        doctor(project)
    args = ["doctor", *(["--json"] if json_output else []), str(project)]
    assert main(args) == 2  # as --help says: 2 bad command line, PATH or config
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"cachewatchd: {config}:1: invalid TOML: ")
    assert out.err.count("\n") == 1


def test_fifo_as_the_config_is_one_line_and_exit_2(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = fifo_at(tmp_path / "config" / "cachewatchd" / "config.toml")
    with rescued(fifo):
        assert main(["doctor", str(project)]) == 2
    out = capsys.readouterr()
    assert (out.out, out.err) == (
        "",
        f"cachewatchd: {fifo}: cannot read: a FIFO, not a regular file\n",
    )


@pytest.mark.parametrize("value", ["nan", "inf", "1e12", "0", "-1"])
def test_probe_timeout_out_of_bounds_is_one_line_and_exit_2(
    project: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    assert main(["doctor", "--probe-timeout", value, str(project)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        f"cachewatchd: --probe-timeout: must be a number of seconds from 0.05 to 600, "
        f"not {float(value):g}\n"
    )


@pytest.fixture
def old_python_in_project(project: Path) -> Iterator[subprocess.Popen[str]]:
    """A Python process working in the project and holding one of its files open."""
    code = "import sys; f = open('data.txt'); sys.stdout.write('ready\\n'); sys.stdout.flush(); "
    code += "sys.stdin.read()"
    (project / "data.txt").write_text("x")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_stale_process_and_open_files(
    project: Path, old_python_in_project: subprocess.Popen[str]
) -> None:
    pid = old_python_in_project.pid
    started = psutil.Process(pid).create_time()
    edited = project / "pkg" / "m.py"
    os.utime(edited, (started + 30, started + 30))  # an edit after the process started
    found = by_id(doctor(project))
    (stale,) = found["stale-processes"]
    assert stale.severity == "warning"
    assert str(edited) in stale.message
    assert any(line.startswith(f"pid {pid} ") for line in stale.details)
    assert any(
        line.startswith(f"pid {pid} ") and line.endswith(str(project / "data.txt"))
        for line in found["open-files"][0].details
    )


def test_one_of_everything_is_said_in_the_singular(
    project: Path, old_python_in_project: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    pid = old_python_in_project.pid
    started = psutil.Process(pid).create_time()
    os.utime(project / "pkg" / "m.py", (started + 30, started + 30))
    found = by_id(doctor(project))
    (stale,) = found["stale-processes"]
    assert stale.message.startswith("1 Python process started before the newest source change")
    assert stale.message.endswith(": it may run old code")
    assert stale.action.startswith("restart it, or let cachewatchd restart it")
    (held,) = found["open-files"]
    assert held.message == "1 file under the roots is held open by 1 process"
    assert main(["doctor", "--probe-timeout", "5", str(project)]) == 1
    out = capsys.readouterr().out
    assert out.rstrip().endswith("\n1 finding needs action.")
    assert " 1 Python processes" not in out


def test_counts_in_the_plural() -> None:
    from cachewatchd.doctor.fs_checks import check_inotify

    if not Path("/proc/sys/fs/inotify").is_dir():
        pytest.skip("no /proc/sys/fs/inotify")
    assert check_inotify(1)[0].message.endswith("the roots need about 1 watch")
    assert check_inotify(2)[0].message.endswith("the roots need about 2 watches")
    assert plural(1, "process", "processes") == "1 process"
    assert plural(0, "file") == "0 files"


def test_process_newer_than_every_source_is_not_stale(
    project: Path, old_python_in_project: subprocess.Popen[str]
) -> None:
    # The sources were written before the process started and not touched since.
    found = by_id(doctor(project))
    stale = [line for f in found.get("stale-processes", []) for line in f.details]
    assert not [line for line in stale if line.startswith(f"pid {old_python_in_project.pid} ")]
    assert found["open-files"][0].severity == "info"


@pytest.mark.parametrize("with_child", [False, True], ids=["alone", "with-own-child"])
def test_the_daemon_itself_is_never_a_stale_process(project: Path, with_child: bool) -> None:
    from tests.support.daemon import REPO, DaemonProc

    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this test's registry (XDG_RUNTIME_DIR)
    child = ["--", sys.executable, "-c", "import signal; signal.pause()"] if with_child else []
    # A change dated after everything starts makes every process stale. Made before the daemon
    # starts, so that it is no event: an edit while it runs would restart the child mid-check.
    later = time.time() + 3600
    os.utime(project / "pkg" / "m.py", (later, later))
    with DaemonProc([str(project), *child], env, cwd=project) as daemon:
        daemon.ready()
        children = psutil.Process(daemon.pid).children
        if with_child:
            wait_until(children, 20, message="own child running")
        managed = [p.pid for p in children()]
        report = by_id(doctor(project))
        assert daemon.stop() == 0
    stale = [line for f in report.get("stale-processes", []) for line in f.details]
    assert not [line for line in stale if line.startswith(f"pid {daemon.pid} ")], stale
    for pid in managed:  # the managed child runs the project's code: it is stale indeed
        assert [line for line in stale if line.startswith(f"pid {pid} ")], stale


def test_running_daemon_is_reported(project: Path) -> None:
    from cachewatchd.daemon.registry import register_daemon

    assert "no cachewatchd daemon" in by_id(doctor(project))["daemon"][0].message
    with register_daemon([project]):
        (finding,) = by_id(doctor(project))["daemon"]
    assert finding.message == f"watched by cachewatchd (pid {os.getpid()})"


def test_bad_path_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"cachewatchd: {tmp_path / 'missing'}: no such directory\n"


@pytest.mark.skipif(not CONSOLE_SCRIPT.is_file(), reason="console script not installed")
def test_console_script_json(project: Path) -> None:
    plant_stale_pyc(project / "pkg" / "m.py")
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "doctor", "--json", "--probe-timeout", "5"],
        cwd=project, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["roots"] == [str(project)]
    assert document["needs_action"] is True
    severities = {f["id"]: f["severity"] for f in document["findings"]}
    assert severities["stale-caches"] == "error"
    assert all(set(f) == {"id", "severity", "message", "action", "root", "details"}
               for f in document["findings"])  # fmt: skip


def test_native_events_that_do_not_arrive_are_a_warning(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for a mount whose changes inotify never sees: a real observer that never looks.
    import watchdog.observers
    from watchdog.observers.polling import PollingObserver

    monkeypatch.setattr(watchdog.observers, "Observer", lambda: PollingObserver(timeout=3600))
    (finding,) = by_id(doctor(project, probe_timeout=0.2))["events"]
    assert finding.severity == "warning"
    assert finding.message.startswith("no native event arrived within 0.2 s")
    assert "--poll always" in finding.action
    assert not list(project.glob(".cachewatchd-probe-*"))
    # When the root is polled anyway, the same silence is only information.
    (finding,) = by_id(doctor(project, probe_timeout=0.2, poll="always"))["events"]
    assert (finding.severity, finding.message) == ("info", "native events do not arrive")


def test_clock_skew_between_machine_and_filesystem(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import cachewatchd.watch.probe

    real = time.time
    assert "clock-skew" not in by_id(doctor(project))
    monkeypatch.setattr(
        cachewatchd.watch.probe, "time", types.SimpleNamespace(time=lambda: real() + 90)
    )
    (finding,) = by_id(doctor(project))["clock-skew"]
    assert finding.severity == "warning"
    assert finding.message.startswith("a file written now gets an mtime -9")
    assert finding.root == str(project)
