"""Black-box tests of the console script: text, JSON, exit codes, colour."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewatchd.cache import parallel as _parallel
from cachewatchd.cache.audit import AuditOptions, audit
from cachewatchd.cache.parallel import audit_jobs
from cachewatchd.cli import main
from cachewatchd.errors import RuntimeFailure
from tests.support.fs import reachable_tree
from tests.support.pycs import compile_with, restore_mtime_edit, write
from tests.support.users import REPO, unprivileged
from tests.support.wait import compile_pyc, find_interpreters, wait_until

TAG = sys.implementation.cache_tag
STATES = ["fresh", "outdated", "stale", "suspect", "orphan", "sourceless", "corrupt"]


def console(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cachewatchd", path=str(Path(sys.executable).parent))
    assert exe is not None, "the console script is not installed next to this Python"
    full_env = {**os.environ, **env}
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=full_env
    )


def test_clean_tree_exits_zero_with_counts(tmp_path: Path) -> None:
    compile_pyc(write(tmp_path / "m.py", "X = 1\n"))
    proc = console("scan", cwd=tmp_path, NO_COLOR="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "1 cache entry under ."
    assert "\033[" not in proc.stdout


def test_stale_entry_text_and_json(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    restore_mtime_edit(source, "X = 2\n")
    proc = console("scan", str(tmp_path))
    assert proc.returncode == 1
    assert f"stale  {tmp_path}/__pycache__/m.{TAG}.pyc" in proc.stdout
    assert "Python runs the old code" in proc.stdout
    assert "do:     Python runs OLD code: `cachewatchd clean`" in proc.stdout

    proc = console("scan", "--json", str(tmp_path))
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["version"] == 1
    assert doc["roots"] == [str(tmp_path.resolve())]
    assert list(doc["summary"]) == STATES
    assert doc["summary"]["stale"] == 1
    assert doc["entries"] == [
        {
            "path": str(tmp_path.resolve() / "__pycache__" / f"m.{TAG}.pyc"),
            "source": str(tmp_path.resolve() / "m.py"),
            "state": "stale",
            "reason": doc["entries"][0]["reason"],
            "tag": TAG,
            "opt": "",
            "mode": "timestamp",
        }
    ]
    assert doc["errors"] == []


def test_missing_path_is_one_line_and_exit_two(tmp_path: Path) -> None:
    proc = console("scan", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"cachewatchd: {tmp_path / 'nope'}: no such directory\n"


def test_file_instead_of_directory(tmp_path: Path) -> None:
    f = write(tmp_path / "m.py", "")
    assert console("clean", str(f)).stderr == f"cachewatchd: {f}: not a directory\n"


def test_usage_error_exit_two() -> None:
    proc = console("scan", "--no-such-flag")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_python_dash_m_and_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cachewatchd", "scan", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Exit status" in proc.stdout


def test_clean_text_says_what_went_and_what_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    restore_mtime_edit(source, "X = 2\n")
    compile_pyc(write(tmp_path / "g.py", "X = 1\n"), cfile=tmp_path / "g.pyc")
    (tmp_path / "g.py").unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    kept = "kept sourceless g.pyc (use --sourceless)"
    assert main(["clean", "--dry-run"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"would remove __pycache__/m.{TAG}.pyc",
        "1 cache file would be removed (dry run)",
        kept,
    ]
    assert main(["clean", "--recompile"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "removed 1 cache file and 1 empty cache directory",
        "recompiled 1 source",
        kept,
    ]
    assert main(["clean", "--sourceless"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "removed 1 cache file and 0 empty cache directories"
    ]


def nobody_runs(*args: str) -> subprocess.CompletedProcess[str]:
    """``cachewatchd ARGS`` as an unprivileged user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env |= {"HOME": "/nonexistent", "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "cachewatchd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_an_unreadable_subtree_is_an_incomplete_audit_exit_three() -> None:
    with reachable_tree() as base:
        compile_pyc(write(base / "ok" / "m.py", "X = 1\n"))
        secret = base / "secret"
        write(secret / "inner" / "n.py", "Y = 1\n")
        secret.chmod(0o000)
        text = nobody_runs("scan", str(base))
        as_json = nobody_runs("scan", "--json", str(base))
        source = base / "ok" / "m.py"
        restore_mtime_edit(source, "X = 2\n")  # now a stale pyc too: findings beat the gap
        dangerous = nobody_runs("scan", str(base))
    assert text.returncode == 3, text.stderr
    assert "fresh            1" in text.stdout
    assert text.stderr.splitlines() == [
        f"cachewatchd: {secret}: Permission denied",
        "cachewatchd: incomplete audit: 1 directory could not be read (listed above)",
    ]
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["errors"] == [
        {"path": str(secret), "error": "Permission denied"}
    ]
    assert as_json.stderr == ""
    assert dangerous.returncode == 1
    assert dangerous.stderr.splitlines()[-1] == (
        "cachewatchd: incomplete audit: 1 directory could not be read (listed above)"
    )


def test_scan_help_documents_exit_three() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cachewatchd", "scan", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "3 nothing dangerous found, but part of the tree could not be read" in " ".join(
        proc.stdout.split()
    )


def test_a_root_that_is_a_symlink_loop_is_one_line_exit_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(loop)
    for command in ("scan", "clean", "doctor"):
        assert main([command, str(loop)]) == 2, command
        assert (
            capsys.readouterr().err == f"cachewatchd: {loop}: Too many levels of symbolic links\n"
        )


def test_corrupt_is_dangerous_but_outdated_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    source.write_text("X = 100\n")
    assert main(["scan", str(tmp_path)]) == 0
    (tmp_path / "__pycache__" / f"m.{TAG}.pyc").write_bytes(b"garbage")
    assert main(["scan", str(tmp_path)]) == 1
    assert "corrupt" in capsys.readouterr().out


def test_pycache_prefix_from_the_environment(tmp_path: Path) -> None:
    root = (tmp_path / "p").resolve()
    prefix = (tmp_path / "prefix").resolve()
    source = write(root / "m.py", "X = 1\n")
    subprocess.run(
        [sys.executable, "-c", "import m"],
        cwd=root,
        check=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        | {"PYTHONPYCACHEPREFIX": str(prefix)},
    )
    restore_mtime_edit(source, "X = 2\n")
    assert console("scan", str(root)).returncode == 0
    assert console("scan", str(root), PYTHONPYCACHEPREFIX=str(prefix)).returncode == 1
    assert console("scan", "--pycache-prefix", str(prefix), str(root)).returncode == 1


# -- --jobs: one audit shared by several processes ------------------------------------------------

KINDS = ("fresh", "outdated", "stale", "orphan", "sourceless", "corrupt", "hash", "opt", "fifo")


def plant(directory: Path, name: str, kind: str) -> None:
    """One cache entry of *kind* (a real pyc of this CPython) for the module *name*."""
    source = write(directory / f"{name}.py", "X = 1\n")
    if kind == "fifo":  # unreadable: an error, and the scan goes on
        (directory / "__pycache__").mkdir(exist_ok=True)
        os.mkfifo(directory / "__pycache__" / f"{name}.{TAG}.pyc")
        return
    if kind == "sourceless":
        compile_pyc(source, cfile=directory / f"{name}.pyc")
        source.unlink()
        return
    mode = "unchecked-hash" if kind == "hash" else "timestamp"
    pyc = compile_pyc(source, mode=mode, optimize=1 if kind == "opt" else -1)
    if kind == "outdated":
        os.utime(source, (1, 1))
    elif kind == "stale":
        restore_mtime_edit(source, "X = 2\n")
    elif kind == "orphan":
        source.unlink()
    elif kind == "corrupt":
        pyc.write_bytes(pyc.read_bytes()[:16])
    elif kind == "hash":
        source.write_text("X = 3\n")


def every_state_tree(root: Path, width: int = 4, depth: int = 3) -> Path:
    """Nested packages, each with a few entries of every kind, a venv and an excluded dir."""
    kinds = iter(KINDS * (width**depth))
    frontier = [root]
    for _ in range(depth):
        frontier = [d / f"p{i}" for d in frontier for i in range(width)]
        for d in frontier:
            for j in range(2):
                plant(d, f"m{j}", next(kinds))
    plant(root / "venv", "v", "orphan")
    write(root / "venv" / "pyvenv.cfg", "")
    plant(root / "node_modules", "n", "orphan")
    suspect_with = next(
        (
            v
            for k, v in find_interpreters().items()
            if k != f"{sys.version_info[0]}.{sys.version_info[1]}"
        ),
        None,
    )
    if suspect_with is not None:
        source = write(root / "p0" / "suspect.py", "X = 1\n")
        compile_with(suspect_with, source)
        restore_mtime_edit(source, "X = 2\n")
    return root


def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the forks made from this process (a forked child counts in its own copy)."""
    made: list[int] = []
    real = os.fork

    def fork() -> int:
        pid = real()
        if pid:
            made.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return made


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return every_state_tree(tmp_path_factory.mktemp("jobs"))


@pytest.mark.parametrize(
    "args", [["--json"], [], ["--json", "--deep"], ["--json", "--exclude", "p1"]]
)
def test_jobs_give_the_same_output_as_one_process(big_tree: Path, args: list[str]) -> None:
    one = console("scan", *args, "--jobs", "1", str(big_tree), NO_COLOR="1")
    assert one.returncode == 1
    for jobs in ("2", "3"):
        many = console("scan", *args, "--jobs", jobs, str(big_tree), NO_COLOR="1")
        assert (many.returncode, many.stdout, many.stderr) == (1, one.stdout, one.stderr)
    default = console("scan", *args, str(big_tree), NO_COLOR="1")
    assert (default.returncode, default.stdout, default.stderr) == (1, one.stdout, one.stderr)
    if "--json" in args:
        doc = json.loads(one.stdout)
        assert {s for s, n in doc["summary"].items() if n} >= set(STATES) - {"suspect"}
        assert len(doc["errors"]) > 1


def test_jobs_fork_for_a_big_tree_and_agree_with_audit(
    big_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = forks(monkeypatch)
    for options in (AuditOptions(), AuditOptions(keep_fresh=True), AuditOptions(deep=True)):
        expected = audit([big_tree], options)
        got = audit_jobs([big_tree], options, 2)
        assert (got.entries, got.errors, got.summary()) == (
            expected.entries,
            expected.errors,
            expected.summary(),
        )
    assert len(made) == 3


def test_small_trees_threads_and_overlapping_roots_stay_in_one_process(
    tmp_path: Path, big_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = forks(monkeypatch)
    plant(tmp_path, "m", "stale")
    assert audit_jobs([tmp_path], AuditOptions(), 2).summary()["stale"] == 1
    overlapping = [big_tree, big_tree / "p0"]
    assert audit_jobs(overlapping, AuditOptions(), 2).entries == audit(overlapping).entries
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert audit_jobs([big_tree], AuditOptions(), 2).entries == audit([big_tree]).entries
    finally:
        stop.set()
        thread.join()
    assert made == []


tree_layouts = st.lists(
    st.tuples(st.lists(st.sampled_from("abcd"), min_size=1, max_size=3), st.sampled_from(KINDS)),
    min_size=3,
    max_size=20,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree_layouts, st.booleans(), st.integers(2, 3), st.integers(0, 2), st.integers(0, 2))
def test_random_trees_give_the_same_report_with_any_jobs(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    layout: list[tuple[list[str], str]],
    keep_fresh: bool,
    jobs: int,
    pieces: int,
    listed_depth: int,
) -> None:
    # Split small trees too, at various depths (0 pieces: only the always-listed levels).
    monkeypatch.setattr(_parallel, "PIECES_PER_JOB", pieces)
    monkeypatch.setattr(_parallel, "_ALWAYS_LISTED", listed_depth)
    monkeypatch.setattr(_parallel, "_SMALL", 0)
    root = tmp_path_factory.mktemp("random")
    for i, (parts, kind) in enumerate(layout):
        plant(root.joinpath(*parts), f"m{i}", kind)
    options = AuditOptions(keep_fresh=keep_fresh)
    expected = audit([root], options)
    got = audit_jobs([root], options, jobs)
    assert (got.entries, got.errors, got.summary()) == (
        expected.entries,
        expected.errors,
        expected.summary(),
    )


def test_a_worker_that_dies_is_an_error_not_a_hang(
    big_tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parent = os.getpid()
    died = tmp_path / "died"
    real_run = _parallel._Plan.run

    def run(self: Any, index: int) -> Any:
        if os.getpid() != parent:
            died.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        wait_until(died.exists, timeout=30)  # the child takes a piece while this one waits
        return real_run(self, index)

    monkeypatch.setattr(_parallel._Plan, "run", run)
    assert main(["scan", "--jobs", "2", str(big_tree)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(
        r"cachewatchd: a scan worker process \(pid \d+\) failed: killed by signal 9; "
        r"try --jobs 1\n",
        err,
    )


def test_a_worker_that_raises_is_an_error(
    big_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = os.getpid()
    raised = tmp_path / "raised"
    real_run = _parallel._Plan.run

    def run(self: Any, index: int) -> Any:
        if os.getpid() != parent:
            raised.touch()
            raise ValueError("boom")
        wait_until(raised.exists, timeout=30)
        return real_run(self, index)

    monkeypatch.setattr(_parallel._Plan, "run", run)
    with pytest.raises(RuntimeFailure, match=r"failed: ValueError: boom; try --jobs 1"):
        audit_jobs([big_tree], AuditOptions(), 2)


def test_when_fork_fails_this_process_does_the_work(
    big_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", fork)
    got = audit_jobs([big_tree], AuditOptions(), 2)
    expected = audit([big_tree])
    assert (got.entries, got.errors, got.summary()) == (
        expected.entries,
        expected.errors,
        expected.summary(),
    )


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_jobs_must_be_a_positive_number(value: str) -> None:
    proc = console("scan", "--jobs", value)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"cachewatchd: error: argument --jobs: expected a whole number >= 1, got {value!r}\n"
    )


def test_jobs_is_documented() -> None:
    for command in ("scan", "clean"):
        assert "--jobs N" in console(command, "--help").stdout


def test_default_jobs_follow_the_cores_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert _parallel.default_jobs() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert _parallel.default_jobs() == 2
    assert _parallel.default_jobs(deep=True) == 4  # exact checks are compiles: every core


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_scan_of_a_symlinked_path_judges_the_mirror_written_through_the_link(
    tmp_path: Path, jobs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """CPython mirrors a sys.path entry as written (PYTHONPATH=link) into the prefix tree: the
    scan of that PATH judges that mirror too, though it resolves the root."""
    from cachewatchd.cache.pyc import mirror_dir
    from tests.conftest import child_env
    from tests.support.pycs import restore_mtime_edit, write

    base = tmp_path.resolve()
    real, link, prefix = base / "real", base / "link", base / "prefix"
    link.symlink_to(real, target_is_directory=True)
    source = write(real / "m.py", "X = 1\n")
    env = child_env(PYTHONPYCACHEPREFIX=str(prefix), PYTHONPATH=str(link))
    subprocess.run([sys.executable, "-c", "import m"], cwd=base, env=env, check=True, timeout=60)
    pyc = mirror_dir(prefix, link) / f"m.{sys.implementation.cache_tag}.pyc"
    assert pyc.is_file()
    restore_mtime_edit(source, "X = 2\n")
    code = main(["scan", str(link), "--pycache-prefix", str(prefix), "--json", "--jobs", jobs])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(e["path"], e["state"]) for e in doc["entries"]] == [(str(pyc), "stale")]
