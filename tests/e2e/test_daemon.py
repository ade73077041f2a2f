"""The daemon as users run it: a subprocess, real files, real inotify and polling, real git."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from cachewatchd.cache.audit import State
from cachewatchd.daemon.batch_handler import BatchHandler, Counters
from cachewatchd.watch.batch import Batch, GitMove, Rescan
from tests.support.daemon import DaemonProc, cli, isolated_env
from tests.support.fs import reachable_tree
from tests.support.pycs import restore_mtime_edit, write
from tests.support.users import REPO, unprivileged
from tests.support.wait import compile_pyc, wait_until
from tests.support.wait import git as run_git

GIT = shutil.which("git")


def watchdog_major() -> int:
    from importlib.metadata import version

    return int(version("watchdog").split(".")[0])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_env(tmp_path / "home")


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "sub" / "deep.py").write_text("Y = 1\n")
    return root.resolve()


# -- events -----------------------------------------------------------------------------------------
def test_ready_then_mtime_restored_edit_delete_and_renames(proj: Path, env: dict[str, str]) -> None:
    mod, deep = proj / "pkg" / "mod.py", proj / "pkg" / "sub" / "deep.py"
    init = proj / "pkg" / "__init__.py"
    with DaemonProc([str(proj)], env) as daemon:
        ready = daemon.ready()
        assert ready["observers"][str(proj)]["observer"] == "native"
        assert ready["observers"][str(proj)]["reason"]
        assert ready["pid"] == daemon.pid

        pyc = compile_pyc(mod)
        restore_mtime_edit(mod, "X = 2\n")
        wait_until(lambda: not pyc.exists(), 10, message="pyc of the edited source gone")
        event = daemon.wait_event("invalidated", lambda e: e["source"] == str(mod))
        assert event["removed"] == [str(pyc)]

        legacy = compile_pyc(init, cfile=proj / "pkg" / "__init__.pyc")
        cached = compile_pyc(init)
        init.unlink()
        wait_until(lambda: not legacy.exists() and not cached.exists(), 10, message="ghost gone")

        deep_pyc = compile_pyc(deep)
        deep.rename(deep.with_name("renamed.py"))
        wait_until(lambda: not deep_pyc.exists(), 10, message="renamed source's pyc gone")

        moved_pyc = compile_pyc(mod)
        (proj / "pkg").rename(proj / "lib")
        wait_until(lambda: not (proj / "lib" / "__pycache__" / moved_pyc.name).exists(), 10)
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


def test_start_reconcile_removes_stale_entries_made_while_not_watching(
    proj: Path, env: dict[str, str]
) -> None:
    mod = proj / "pkg" / "mod.py"
    pyc = compile_pyc(mod)
    restore_mtime_edit(mod, "X = 3\n")  # stale: header matches, content does not
    keep = compile_pyc(proj / "pkg" / "sub" / "deep.py")
    with DaemonProc([str(proj)], env) as daemon:
        daemon.ready()
        rescan = daemon.events("rescan")[0]
        assert rescan["reason"] == "start"
        assert rescan["counts"]["stale"] == 1
        assert rescan["removed"] == 1
        assert not pyc.exists()
        assert keep.exists()  # fresh entries stay
        assert daemon.stop() == 0


def test_forced_polling_sees_an_invisible_edit(proj: Path, env: dict[str, str]) -> None:
    mod = proj / "pkg" / "mod.py"
    args = [str(proj), "--poll", "always", "--poll-interval", "0.1"]
    with DaemonProc(args, env) as daemon:
        ready = daemon.ready()
        assert ready["observers"][str(proj)]["observer"] == "polling"
        assert ready["observers"][str(proj)]["reason"] == "--poll always"
        assert ready["observers"][str(proj)]["poll"] == "always (command line)"
        pyc = compile_pyc(mod)
        restore_mtime_edit(mod, "X = 4\n")
        wait_until(lambda: not pyc.exists(), 10, message="pyc gone under polling")
        assert daemon.stop() == 0


def test_pycache_prefix_tree_is_invalidated(
    proj: Path, env: dict[str, str], tmp_path: Path
) -> None:
    prefix = tmp_path / "prefix"
    mod = proj / "pkg" / "mod.py"
    mirror = prefix / mod.parent.relative_to("/")
    mirror.mkdir(parents=True)
    with DaemonProc([str(proj), "--pycache-prefix", str(prefix)], env) as daemon:
        daemon.ready()
        pyc = compile_pyc(mod, cfile=mirror / "mod.cpython-311.pyc")
        restore_mtime_edit(mod, "X = 5\n")
        wait_until(lambda: not pyc.exists(), 10, message="prefix-tree pyc gone")
        assert daemon.stop() == 0


def test_excluded_and_project_trust_rule(proj: Path, env: dict[str, str]) -> None:
    (proj / "pyproject.toml").write_text(
        '[tool.cachewatchd]\nexclude = ["gen"]\npoll = "never"\n'
        'roots = ["/"]\n\n[[tool.cachewatchd.process]]\nname = "evil"\nmatch = "sshd"\n'
    )
    gen = proj / "gen"
    gen.mkdir()
    (gen / "g.py").write_text("G = 1\n")
    with DaemonProc([str(proj)], env) as daemon:
        ready = daemon.ready()
        assert ready["observers"][str(proj)]["poll"] == "never (project)"
        warnings = " ".join(e["warning"] for e in daemon.events("config-warning"))
        assert "process ignored" in warnings
        assert "roots ignored" in warnings
        gen_pyc = compile_pyc(gen / "g.py")
        restore_mtime_edit(gen / "g.py", "G = 2\n")
        mod_pyc = compile_pyc(proj / "pkg" / "mod.py")
        restore_mtime_edit(proj / "pkg" / "mod.py", "X = 6\n")
        wait_until(lambda: not mod_pyc.exists(), 10)
        assert gen_pyc.exists()  # excluded by the project: not watched
        status = json.loads(cli(["status", "--json"], env).stdout)
        assert status["daemons"][0]["processes"] == []  # the project cannot add processes
        assert daemon.stop() == 0


# -- git ----------------------------------------------------------------------------------------------
def _git(cwd: Path, *args: str) -> str:
    return run_git(cwd, *args)


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_git_checkout_of_2000_files(tmp_path: Path, env: dict[str, str]) -> None:
    repo = tmp_path / "repo"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    n = 2000
    for i in range(n):
        (pkg / f"m{i}.py").write_text(f"X = {i}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "main")
    _git(repo, "checkout", "-qb", "feature")
    for i in range(n):
        (pkg / f"m{i}.py").write_text(f"X = -{i}\n")
    _git(repo, "commit", "-qam", "feature")
    _git(repo, "checkout", "-q", "main")
    import compileall

    assert compileall.compile_dir(str(pkg), quiet=1, workers=1)
    pycs = list((pkg / "__pycache__").iterdir())
    assert len(pycs) == n
    repo = repo.resolve()
    with DaemonProc([str(repo)], env) as daemon:
        daemon.ready()
        _git(repo, "checkout", "-q", "feature")
        wait_until(lambda: not any(p.exists() for p in pycs), 60, message="every pyc gone")
        moved = daemon.wait_event("git-moved")
        assert moved["repository"] == str(repo)
        assert moved["old"] != moved["new"]
        lines = daemon.events("invalidated")  # one per directory and wake-up: fewer than n
        sources = [s for e in lines for s in e.get("sources", [e.get("source")])]
        assert sorted(sources) == sorted(str(pkg.resolve() / f"m{i}.py") for i in range(n))
        assert sum(len(e["removed"]) for e in lines) == n
        assert daemon.stop() == 0


# -- faults ---------------------------------------------------------------------------------------------
def test_queue_overflow_triggers_a_rescan(proj: Path, env: dict[str, str]) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events={limit}")
    a, b = proj / "pkg" / "mod.py", proj / "pkg" / "sub" / "deep.py"
    with DaemonProc([str(proj)], env) as daemon:
        daemon.ready()
        for _ in range(20):  # flood faster than a Python reader drains: the kernel drops events
            for _ in range(limit):
                os.utime(a)
                os.utime(b)
            if daemon.events("rescan")[1:]:
                break
        daemon.wait_event("rescan", lambda e: "overflow" in e["reason"])
        if watchdog_major() >= 7:  # watchdog 6 says nothing: the rescan above is the report
            assert daemon.events("library-warning")  # watchdog's own warning, as a JSON line
        assert daemon.garbage == []  # nothing but JSON lines on stderr
        assert daemon.stop() == 0


def test_root_deleted_and_recreated(proj: Path, env: dict[str, str]) -> None:
    with DaemonProc([str(proj)], env) as daemon:
        daemon.ready()
        shutil.rmtree(proj)
        proj.mkdir()
        daemon.wait_event("rescan", lambda e: e["reason"] == "root is back")
        src = proj / "again.py"
        src.write_text("A = 1\n")
        pyc = compile_pyc(src)
        restore_mtime_edit(src, "A = 2\n")
        wait_until(lambda: not pyc.exists(), 10, message="events resumed")
        assert daemon.stop() == 0


def test_bad_config_is_one_line_with_file_and_key(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('roots = ["."]\n\npoll = "sometimes"\n')
    result = cli(["--foreground", "--config", str(config)], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(config) in lines[0]
    assert ":3:" in lines[0]
    assert "poll" in lines[0]


def test_second_daemon_on_overlapping_roots_is_refused(proj: Path, env: dict[str, str]) -> None:
    with DaemonProc([str(proj)], env) as first:
        first.ready()
        second = cli(["--foreground", str(proj / "pkg")], env)
        assert second.returncode == 3
        assert f"pid {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        other = proj.parent / "other"
        other.mkdir()
        with DaemonProc([str(other)], env) as disjoint:
            disjoint.ready()
            assert disjoint.stop() == 0
        assert first.stop() == 0


def test_sigterm_in_the_middle_of_a_storm(proj: Path, env: dict[str, str]) -> None:
    done = threading.Event()
    written = [0]

    def storm() -> None:
        while not done.is_set() and written[0] < 50_000:
            (proj / "pkg" / f"s{written[0] % 500}.py").write_text(f"S = {written[0]}\n")
            written[0] += 1

    with DaemonProc([str(proj)], env) as daemon:
        daemon.ready()
        writer = threading.Thread(target=storm)
        writer.start()
        try:
            wait_until(lambda: written[0] >= 2000, 30, message="storm under way")
            storming = writer.is_alive()
            code = daemon.stop(signal.SIGTERM)
        finally:
            done.set()
            writer.join()
    assert storming
    assert code == 0
    assert "Traceback" not in daemon.stderr()
    assert daemon.events("stopping")


def test_sigint_exits_zero(proj: Path, env: dict[str, str]) -> None:
    with DaemonProc([str(proj)], env) as daemon:
        daemon.ready()
        assert daemon.stop(signal.SIGINT) == 0
    assert "Traceback" not in daemon.stderr()


def test_sighup_reloads_the_config(proj: Path, env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('poll = "never"\n')
    with DaemonProc([str(proj), "--config", str(config)], env) as daemon:
        assert daemon.ready()["observers"][str(proj)]["observer"] == "native"
        config.write_text('poll = "always"\npoll_interval = 0.1\n')
        daemon.send(signal.SIGHUP)
        reloaded = daemon.wait_event("reloaded")
        assert reloaded["changed"] is True
        assert reloaded["observers"][str(proj)]["observer"] == "polling"
        status = json.loads(cli(["status", "--json"], env).stdout)
        assert status["daemons"][0]["observers"][str(proj)]["observer"] == "polling"
        config.write_text('poll = "bogus"\n')  # a broken config is refused, the daemon goes on
        daemon.send(signal.SIGHUP)
        daemon.wait_event("error", lambda e: "reload failed" in e["error"])
        pyc = compile_pyc(proj / "pkg" / "mod.py")
        restore_mtime_edit(proj / "pkg" / "mod.py", "X = 7\n")
        wait_until(lambda: not pyc.exists(), 10)
        assert daemon.stop() == 0


def test_status_and_stop_commands(proj: Path, env: dict[str, str]) -> None:
    assert cli(["status"], env).stdout.strip() == "no cachewatchd daemon running"
    with DaemonProc([str(proj)], env) as daemon:
        daemon.ready()
        pyc = compile_pyc(proj / "pkg" / "mod.py")
        restore_mtime_edit(proj / "pkg" / "mod.py", "X = 8\n")
        wait_until(lambda: not pyc.exists(), 10)
        wait_until(
            lambda: (
                json.loads(cli(["status", "--json"], env).stdout)["daemons"][0]["counters"][
                    "invalidations"
                ]
                == 1
            ),
            10,
        )
        record = json.loads(cli(["status", "--json"], env).stdout)["daemons"][0]
        assert record["pid"] == daemon.pid
        assert record["roots"] == [str(proj)]
        assert record["observers"][str(proj)]["observer"] == "native"
        assert record["last_event"]
        human = cli(["status"], env).stdout
        assert f"pid {daemon.pid}" in human
        assert f"{proj}: native" in human
        assert "invalidated 1" in human
        elsewhere = proj.parent / "elsewhere"
        elsewhere.mkdir()  # a PATH that does not exist is a usage error (exit 2)
        other = cli(["stop", str(elsewhere)], env)
        assert other.returncode == 0
        assert "no cachewatchd daemon running" in other.stdout
        stopped = cli(["stop", str(proj / "pkg")], env)
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped cachewatchd (pid {daemon.pid})" in stopped.stdout
        assert daemon.wait_exit() == 0


def test_detached_daemon_returns_when_ready_and_stops(proj: Path, env: dict[str, str]) -> None:
    started = cli(["run", str(proj)], env)
    assert started.returncode == 0, started.stderr
    records = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
    assert len(records) == 1
    pid = records[0]["pid"]
    try:
        assert f"pid {pid}" in started.stdout
        assert os.getsid(pid) == pid  # detached: a session of its own
        pyc = compile_pyc(proj / "pkg" / "mod.py")
        restore_mtime_edit(proj / "pkg" / "mod.py", "X = 9\n")
        wait_until(lambda: not pyc.exists(), 10, message="the detached daemon works")
        again = cli(["run", str(proj)], env)
        assert again.returncode == 3
        assert f"pid {pid}" in again.stderr
    finally:
        stopped = cli(["stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    log = Path(started.stdout.rstrip("\n").rpartition("; log: ")[2])  # its roots' own log
    assert '"event": "ready"' in log.read_text()


def test_own_child_starts_after_ready_and_stops_with_the_daemon(
    proj: Path, env: dict[str, str]
) -> None:
    command = ["--", os.path.realpath(sys.executable), "-c", "import signal; signal.pause()"]
    with DaemonProc([str(proj), "--grace", "2", *command], env) as daemon:
        daemon.ready()

        def child_pids() -> list[int]:
            return [
                p.pid
                for p in psutil.Process(daemon.pid).children(recursive=True)
                if "signal.pause()" in " ".join(p.cmdline())
            ]

        wait_until(child_pids, 20, message="own child running")
        child = child_pids()[0]
        assert daemon.stop() == 0
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_child_options_without_a_command_are_refused(proj: Path, env: dict[str, str]) -> None:
    result = cli(["--foreground", str(proj), "--grace", "3"], env)
    assert result.returncode == 2
    assert "-- COMMAND" in result.stderr


# -- the handler, in process -------------------------------------------------------------------------
def test_handler_events_git_moves_and_rescans(proj: Path) -> None:
    mod, init = proj / "pkg" / "mod.py", proj / "pkg" / "__init__.py"
    counters = Counters()
    handler = BatchHandler({proj: ()}, pycache_prefix=None, counters=counters)
    pyc = compile_pyc(mod)
    legacy = compile_pyc(init, cfile=proj / "pkg" / "__init__.pyc")
    outcome = handler.handle(Batch(changed=frozenset({mod}), removed=frozenset({init}), events=2))
    assert not pyc.exists()
    assert legacy.exists()  # the source is still there: not a ghost
    assert outcome.removed == 1
    assert {mod, init} <= outcome.touched

    init.unlink()
    handler.handle(Batch(removed=frozenset({init}), events=1))
    assert not legacy.exists()

    sourceless = compile_pyc(mod, cfile=proj / "pkg" / "gone.pyc")
    stale = compile_pyc(proj / "pkg" / "sub" / "deep.py")
    restore_mtime_edit(proj / "pkg" / "sub" / "deep.py", "Y = 2\n")
    outcome = handler.handle(
        Batch(git_moves=frozenset({GitMove(proj, "a" * 40, "b" * 40)}), events=1)
    )
    assert not stale.exists()
    assert sourceless.exists()  # sourceless pycs are never removed by an audit
    assert proj in outcome.touched
    handler.handle(Batch(rescans=frozenset({Rescan(proj, "test")}), events=1))
    assert counters.rescans == 1
    assert counters.git_moves == 1
    assert counters.invalidations == 3
    assert State.SOURCELESS.value == "sourceless"


def test_handler_reports_the_same_problem_once(proj: Path) -> None:
    from structlog.testing import capture_logs

    handler = BatchHandler({proj: ()}, pycache_prefix=None, counters=Counters())
    ghost = proj / "pkg" / "ghost.py"
    (proj / "pkg" / "ghost.pyc").symlink_to(proj / "pkg" / "mod.py")  # refused: not a regular file
    batch = Batch(removed=frozenset({ghost}), events=1)
    with capture_logs() as logs:
        handler.handle(batch)
        handler.handle(batch)
    errors = [e for e in logs if e["event"] == "error"]
    assert len(errors) == 1
    assert "refused" in errors[0]["error"]
    assert handler.counters.errors == 1
    assert (proj / "pkg" / "ghost.pyc").is_symlink()


def test_sd_notify_ready_reloading_stopping(proj: Path, tmp_path: Path) -> None:
    import socket

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        env = isolated_env(tmp_path / "home", NOTIFY_SOCKET=str(path))
        with DaemonProc([str(proj)], env) as daemon:
            daemon.ready()
            ready = sock.recv(4096).decode()
            assert "READY=1" in ready
            assert "STATUS=watching 1 root(s) (native)" in ready
            daemon.send(signal.SIGHUP)
            assert "RELOADING=1" in sock.recv(4096).decode()
            assert "READY=1" in sock.recv(4096).decode()
            assert daemon.stop() == 0
            assert "STOPPING=1" in sock.recv(4096).decode()


def test_status_counts_the_denied_subtree_the_watcher_reported() -> None:
    """The watcher meets the unreadable directory first and reports it; the start audit meets it
    too and stays quiet (one report per path): the one report still counts as an error."""
    with reachable_tree() as base:
        home = base / "home"
        home.mkdir(mode=0o777)
        home.chmod(0o777)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "NOTIFY_"))}
        env |= {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_RUNTIME_DIR": str(home / "run"),
            "PYTHONPATH": str(REPO),
        }
        project = base / "project"
        write(project / "ok" / "m.py", "X = 1\n")
        (project / "secret" / "inner").mkdir(parents=True)
        (project / "secret").chmod(0o000)
        nobody = unprivileged()
        log = base / "home" / "daemon.log"
        command = [*nobody, sys.executable, "-m", "cachewatchd", "--foreground"]
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [*command, "--log-format", "json", str(project)], stderr=err, env=env
            )
        try:
            wait_until(lambda: '"event": "ready"' in log.read_text(), 30, message="ready")
            status = [*nobody, sys.executable, "-m", "cachewatchd", "status"]

            def errors_shown() -> object:
                shown = subprocess.run(
                    [*status, "--json"], capture_output=True, text=True, env=env, timeout=60
                )
                (record,) = json.loads(shown.stdout)["daemons"]
                return record["counters"]["errors"] == 1

            counted = wait_until(errors_shown, 10, raise_on_timeout=False)
            human = subprocess.run(status, capture_output=True, text=True, env=env, timeout=60)
        finally:
            proc.terminate()
            assert proc.wait(30) == 0
        lines = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [e for e in lines if e["event"] == "error"]
    assert [(e["path"], e.get("action")) for e in errors] == [
        (str(project / "secret"), "not watched")
    ]
    assert counted, human.stdout
    assert "errors 1;" in human.stdout
