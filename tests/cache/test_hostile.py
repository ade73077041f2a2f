"""Hostile pycs and sources: each gets a verdict, in a checking process, with bounded memory.

Every pyc here has a header CPython accepts (taken from a real pyc of its source, or written by
CPython's own ``_code_to_timestamp_pyc``); only the body, or the source, is hostile. What CPython
does with each is checked with a real import, and the verdict must agree.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from cachewatchd.cache import check_process
from cachewatchd.cache.audit import AuditOptions, State, audit, build_report
from cachewatchd.cache.auditor import Auditor
from cachewatchd.cache.checks import CheckPool, Limits
from cachewatchd.cache.clean import clean
from cachewatchd.cache.judge import judge_pycache
from cachewatchd.cache.parallel import audit_jobs
from cachewatchd.daemon.recheck import Rechecker
from tests.conftest import child_env
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.pycs import write
from tests.support.ticks import past_the_tick
from tests.support.wait import compile_pyc, find_interpreters, wait_until

TAG = sys.implementation.cache_tag
DEEP_SUM = "x = " + "+".join(["1"] * 100_000) + "\n"
"""A source CPython cannot compile: ``RecursionError`` during compilation (3.10 to 3.13)."""


def cache_path(source: Path) -> Path:
    return Path(importlib.util.cache_from_source(str(source)))


def with_body(root: Path, name: str, body: bytes) -> Path:
    """A real pyc of ``name.py`` whose body is replaced by *body*: the header still matches."""
    pyc = compile_pyc(write(root / f"{name}.py", "X = 1\n"))
    pyc.write_bytes(pyc.read_bytes()[:16] + body)
    return pyc


def argcount_minus_one() -> bytes:
    """A code object whose argument count is -1: ``marshal.loads`` raises ``SystemError``."""
    data = bytearray(marshal.dumps(compile("X = 1\n", "m.py", "exec")))
    data[1:5] = (-1).to_bytes(4, "little", signed=True)
    return bytes(data)


HUGE_TUPLE = b"(" + (2**27).to_bytes(4, "little")
"""5 bytes declaring a 2**27-element tuple: ``marshal.loads`` allocates 1 GiB, then fails."""
HUGE_LIST = b"[" + (2**31 - 1).to_bytes(4, "little")
"""A list of 2**31-1 elements: ``marshal.loads`` raises ``MemoryError``."""


def behind_header(root: Path, name: str, text: str) -> tuple[Path, Path]:
    """A real pyc of a one-line source padded to the size of *text*, then the source rewritten
    to *text* with its mtime put back: the header matches a source the pyc was not compiled from.
    """
    old = "x = 1\n" + "#" * (len(text) - 7) + "\n"
    assert len(old) == len(text)
    source = write(root / f"{name}.py", old)
    pyc = compile_pyc(source)
    st = source.stat()
    source.write_text(text)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    return source, pyc


def unbuildable_source(root: Path, name: str = "deep") -> tuple[Path, Path]:
    """A pyc whose header matches :data:`DEEP_SUM`, a source that cannot compile."""
    return behind_header(root, name, DEEP_SUM)


def huge_stack(root: Path, name: str = "stack") -> Path:
    """A pyc written by CPython's own writer for a code object with ``co_stacksize = 2**31-1``."""
    source = write(root / f"{name}.py", "X = 1\n\ndef f():\n    return X\n")
    code = compile(source.read_text(), str(source), "exec", dont_inherit=True)
    st = source.stat()
    data = importlib._bootstrap_external._code_to_timestamp_pyc(  # type: ignore[attr-defined]
        code.replace(co_stacksize=2**31 - 1), int(st.st_mtime), st.st_size
    )
    pyc = cache_path(source)
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(data)
    return pyc


def triggered(pyc: Path) -> None:
    """Make the pyc older than its source's ctime (the audit's trigger for the exact check)
    without touching the header CPython compares."""
    os.utime(pyc, ns=(0, 0))


def _one_gib() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY))


def cpython_import(root: Path, module: str) -> subprocess.CompletedProcess[str]:
    """Import *module* from *root* with the real interpreter, reading (not writing) its pyc, with
    the address space of a checking process (1 GiB)."""
    return subprocess.run(
        [sys.executable, "-B", "-c", f"import {module}"],
        preexec_fn=_one_gib,
        cwd=root,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def deep_states(root: Path) -> dict[str, tuple[State, str]]:
    report = audit([root.resolve()], AuditOptions(deep=True, keep_fresh=True))
    assert not report.errors, report.errors
    return {e.path.name: (e.state, e.reason) for e in report.entries}


def no_children() -> bool:
    return not psutil.Process().children(recursive=True)


# -- 1. a source that exhausts the compiler --------------------------------------------------------


def test_a_source_cpython_cannot_compile_is_stale_not_a_recursion_error(tmp_path: Path) -> None:
    source, pyc = unbuildable_source(tmp_path)
    # CPython: the pyc's header matches, so it runs the cached code; the source alone fails.
    assert cpython_import(tmp_path, "deep").returncode == 0
    alone = subprocess.run(
        [sys.executable, "-B", "-c", f"compile(open({str(source)!r}).read(), 'deep.py', 'exec')"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "RecursionError" in alone.stderr
    state, reason = deep_states(tmp_path)[pyc.name]
    assert state is State.STALE
    assert "RecursionError" in reason


def test_scan_and_clean_of_an_uncompilable_source_finish(tmp_path: Path) -> None:
    _, pyc = unbuildable_source(tmp_path)
    triggered(pyc)
    fine = compile_pyc(write(tmp_path / "fine.py", "Y = 2\n"))
    report = audit([tmp_path.resolve()])
    assert [(e.path.name, e.state) for e in report.entries] == [(pyc.name, State.STALE)]
    result = clean([tmp_path.resolve()])
    assert result.removed == (pyc,)
    assert result.ok
    assert fine.exists()


def test_the_second_look_survives_an_uncompilable_source(tmp_path: Path) -> None:
    source, pyc = unbuildable_source(tmp_path)
    assert Rechecker(pycache_prefix=None).wrong_caches(source) == [pyc]
    assert no_children()


# -- 2. bodies that make marshal raise or allocate -------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (argcount_minus_one(), "SystemError"),
        (HUGE_LIST, "MemoryError"),
        (HUGE_TUPLE, "MemoryError"),
    ],
    ids=["argcount-1", "list-2**31", "tuple-2**27"],
)
def test_a_body_marshal_cannot_load_is_corrupt(tmp_path: Path, body: bytes, error: str) -> None:
    pyc = with_body(tmp_path, "m", body)
    imported = cpython_import(tmp_path, "m")
    assert imported.returncode != 0  # CPython's import fails too
    assert error in imported.stderr
    state, reason = deep_states(tmp_path)[pyc.name]
    assert state is State.CORRUPT
    assert f"body does not unmarshal ({error}" in reason


def test_a_body_that_is_not_code_is_corrupt(tmp_path: Path) -> None:
    pyc = with_body(tmp_path, "m", marshal.dumps(12))
    assert "Non-code object" in cpython_import(tmp_path, "m").stderr
    assert deep_states(tmp_path)[pyc.name][0] is State.CORRUPT


def test_a_21_byte_pyc_declaring_a_gib_does_not_grow_this_process(tmp_path: Path) -> None:
    pyc = with_body(tmp_path, "m", HUGE_TUPLE)
    assert pyc.stat().st_size == 21
    triggered(pyc)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = audit([tmp_path.resolve()], AuditOptions(deep=True))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert [e.state for e in report.entries] == [State.CORRUPT]
    assert grown_mib < 64, f"the audit grew this process by {grown_mib:.0f} MiB"


def test_hostile_bodies_never_stop_a_scan_or_a_clean(tmp_path: Path) -> None:
    hostile = [
        with_body(tmp_path, "argcount", argcount_minus_one()),
        with_body(tmp_path, "tuple", HUGE_TUPLE),
        with_body(tmp_path, "listed", HUGE_LIST),
    ]
    for pyc in hostile:
        triggered(pyc)  # a plain scan checks them: the sources changed after the pycs
    fine = compile_pyc(write(tmp_path / "fine.py", "Y = 2\n"))
    report = audit([tmp_path.resolve()])
    assert {e.path: e.state for e in report.entries} == dict.fromkeys(hostile, State.CORRUPT)
    assert report.summary()["fresh"] == 1
    result = clean([tmp_path.resolve()], recompile=True)
    assert set(result.removed) == set(hostile)
    assert set(result.recompiled) == set(hostile)  # recompiled from their sources
    assert result.ok
    assert fine.exists()
    assert cpython_import(tmp_path, "argcount").returncode == 0


def test_the_console_scan_prints_verdicts_not_tracebacks(tmp_path: Path) -> None:
    with_body(tmp_path, "argcount", argcount_minus_one())
    with_body(tmp_path, "tuple", HUGE_TUPLE)
    huge_stack(tmp_path)
    unbuildable_source(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "cachewatchd", "scan", "--deep", "--json", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**child_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""
    # the huge stack is corrupt only where CPython cannot allocate it (before 3.12: see below)
    assert f'"corrupt": {3 if sys.version_info < (3, 12) else 2}' in proc.stdout
    assert '"stale": 1' in proc.stdout


def test_the_daemon_start_audit_removes_hostile_pycs_and_keeps_running(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    bad = with_body(root, "argcount", argcount_minus_one())
    _, deep = unbuildable_source(root)
    for pyc in (bad, deep):
        triggered(pyc)
    with DaemonProc([str(root)], isolated_env(tmp_path / "home")) as daemon:
        daemon.ready()
        wait_until(lambda: not bad.exists() and not deep.exists(), 30, message="both removed")
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0


def test_the_second_look_removes_a_body_that_does_not_load(tmp_path: Path) -> None:
    pyc = with_body(tmp_path, "m", argcount_minus_one())
    assert Rechecker(pycache_prefix=None).wrong_caches(tmp_path / "m.py") == [pyc]


# -- 3. a code object CPython refuses to run --------------------------------------------------------


def test_a_stack_size_cpython_cannot_allocate_is_judged_as_cpython_runs_it(tmp_path: Path) -> None:
    """Up to 3.11 the import fails (MemoryError): corrupt. From 3.12 the frame is allocated lazily
    and the import runs the source's code: the interpreter is the judge, so it is not corrupt."""
    pyc = huge_stack(tmp_path)
    imported = cpython_import(tmp_path, "stack")
    state, reason = deep_states(tmp_path)[pyc.name]
    triggered(pyc)
    audited = [e.state for e in audit([tmp_path.resolve()], AuditOptions(keep_fresh=True)).entries]
    if sys.version_info < (3, 12):
        assert imported.returncode != 0
        assert "MemoryError" in imported.stderr
        assert state is State.CORRUPT
        assert "co_stacksize 2147483647" in reason
        assert audited == [State.CORRUPT]
    else:
        assert imported.returncode == 0, imported.stderr
        assert state is State.FRESH, reason
        assert audited == [State.FRESH]


# -- the checking process: limits, failures, lifetime ---------------------------------------------


@pytest.fixture
def slow_source(tmp_path: Path) -> tuple[Path, Path]:
    """A pyc whose header matches a source that takes CPython a second or more to compile."""
    return behind_header(
        tmp_path, "slow", "".join(f"v{i} = [{i}, {i}+1]\n" for i in range(300_000))
    )


def worker_of(pool: CheckPool) -> int | None:
    return pool.worker_pid


def judge(pool: CheckPool, pyc: Path, source: Path) -> tuple[State, str]:
    verdict = judge_pycache(str(pyc), str(source), source.stat(), TAG, "", checks=pool, deep=True)
    return verdict.state, verdict.reason


def test_a_compile_over_the_time_limit_is_unchecked_and_the_worker_replaced(
    tmp_path: Path, slow_source: tuple[Path, Path]
) -> None:
    source, pyc = slow_source
    quick = compile_pyc(write(tmp_path / "quick.py", "Q = 1\n"))
    with CheckPool(Limits(timeout=0.05)) as pool:
        assert judge(pool, quick, tmp_path / "quick.py")[0] is State.FRESH
        first = pool.worker_pid
        state, reason = judge(pool, pyc, source)
        assert state is State.SUSPECT  # the source changed after the pyc: it may be stale
        assert "compiling the source failed (checking process timed out after 0.05 s)" in reason
        assert not psutil.pid_exists(first or 0)  # killed and reaped
        assert worker_of(pool) not in (None, first)  # the fresh one that loaded the body alone
        past_the_tick(source)
        os.utime(pyc)  # no change since the pyc: --deep alone finds it fresh
        unchanged = judge(pool, pyc, source)
        assert unchanged[0] is State.FRESH
        assert "timed out" in unchanged[1]
        assert judge(pool, quick, tmp_path / "quick.py") == (
            State.FRESH,
            "code identical to a fresh compile",
        )
        assert worker_of(pool) not in (None, first)
    assert no_children()


def test_a_worker_failing_amid_a_directory_costs_only_that_entry(tmp_path: Path) -> None:
    """The exact checks of a directory are pipelined; the worker times out on the slow source in
    the middle; every other entry still gets its own verdict, from a fresh worker."""
    for i in range(6):
        compile_pyc(write(tmp_path / f"a{i}.py", f"A = {i}\n"))
    slow = behind_header(tmp_path, "m", "".join(f"v{i} = [{i}]\n" for i in range(300_000)))[1]
    bad = with_body(tmp_path, "n", argcount_minus_one())
    for i in range(6):
        compile_pyc(write(tmp_path / f"z{i}.py", f"Z = {i}\n"))
    with Auditor(
        AuditOptions(deep=True, keep_fresh=True), checks=CheckPool(Limits(timeout=0.5))
    ) as auditor:
        auditor.tree(str(tmp_path))
        report = build_report([tmp_path], [auditor.take()])
    verdicts = {e.path.name: (e.state, e.reason) for e in report.entries}
    assert verdicts.pop(slow.name) == (
        State.SUSPECT,
        "header matches but the source changed after the cache was written, and the exact check "
        "could not run: compiling the source failed (checking process timed out after 0.5 s)",
    )
    assert verdicts.pop(bad.name)[0] is State.CORRUPT
    assert set(verdicts.values()) == {(State.FRESH, "code identical to a fresh compile")}
    assert len(verdicts) == 12


def test_a_body_the_worker_cannot_unmarshal_in_time_is_corrupt(tmp_path: Path) -> None:
    pyc = with_body(tmp_path, "m", marshal.dumps(list(range(3_000_000))))
    with CheckPool(Limits(timeout=0.01)) as pool:
        state, reason = judge(pool, pyc, tmp_path / "m.py")
    assert state is State.CORRUPT
    assert reason == "the body cannot be unmarshalled (checking process timed out after 0.01 s)"


def test_a_compile_over_the_memory_limit_is_unchecked(tmp_path: Path) -> None:
    source, pyc = behind_header(tmp_path, "big", "X = [" + "1, " * 1_000_000 + "]\n")
    triggered(pyc)
    with CheckPool(Limits(memory=128 << 20)) as pool:
        state, reason = judge(pool, pyc, source)
    assert state is State.SUSPECT
    assert "compiling the source needs more than 128 MiB" in reason


def test_a_killed_worker_gives_a_verdict_and_a_fresh_worker(
    tmp_path: Path, slow_source: tuple[Path, Path]
) -> None:
    source, pyc = slow_source
    triggered(pyc)
    quick = compile_pyc(write(tmp_path / "quick.py", "Q = 1\n"))
    with CheckPool() as pool:
        judge(pool, quick, tmp_path / "quick.py")
        victim = pool.worker_pid
        assert victim is not None
        killer = threading.Timer(0.1, os.kill, (victim, 9))
        killer.start()
        try:
            state, reason = judge(pool, pyc, source)
        finally:
            killer.join()
        assert state is State.SUSPECT
        assert "killed by SIGKILL" in reason
        assert judge(pool, quick, tmp_path / "quick.py")[0] is State.FRESH
        assert pool.worker_pid != victim


def test_a_worker_that_cannot_start_gives_a_suspect_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check_process, "interpreters", lambda: [str(tmp_path / "no-python")])
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = compile_pyc(source)
    triggered(pyc)
    (entry,) = audit([tmp_path.resolve()]).entries
    assert entry.state is State.SUSPECT
    assert "cannot start" in entry.reason


def test_another_python_version_is_refused_as_the_checking_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    supported = ("3.10", "3.11", "3.12", "3.13", "3.14")  # older ones cannot run the worker
    found = find_interpreters()
    other = next((found[v] for v in supported if v != running and v in found), None)
    if other is None:
        pytest.skip("no other supported CPython version on this machine")
    monkeypatch.setattr(check_process, "interpreters", lambda: [other])
    source = write(tmp_path / "m.py", "X = 1\n")
    triggered(compile_pyc(source))
    (entry,) = audit([tmp_path.resolve()]).entries
    assert entry.state is State.SUSPECT
    assert f"{other} is not the Python running cachewatchd" in entry.reason


def test_one_worker_per_audit_started_only_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    real = check_process.CheckProcess.__init__

    def counting(self: check_process.CheckProcess, *args: Any) -> None:
        real(self, *args)
        started.append(self.pid)

    monkeypatch.setattr(check_process.CheckProcess, "__init__", counting)
    sources = [write(tmp_path / f"m{i}.py", f"X = {i}\n") for i in range(5)]
    past_the_tick(*sources)  # a pyc written within a tick of its source is checked exactly
    for source in sources:
        compile_pyc(source)
    audit([tmp_path.resolve()])
    assert started == []  # a plain scan of fresh pycs reads 16 bytes of each, in this process
    audit([tmp_path.resolve()], AuditOptions(deep=True))
    assert len(started) == 1
    assert no_children()


def test_a_forked_child_starts_its_own_worker_and_leaves_the_parents_alone(
    tmp_path: Path,
) -> None:
    pyc = compile_pyc(write(tmp_path / "m.py", "X = 1\n"))
    with CheckPool() as pool:
        assert pool.load(str(pyc)).result == "loaded"
        parent_worker = pool.worker_pid
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: check with the inherited pool, report its worker, exit
            code = 1
            try:
                loaded = pool.load(str(pyc)).result == "loaded"
                os.write(write_end, f"{loaded} {pool.worker_pid}".encode())
                pool.close()
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as report:
            child_loaded, child_worker = report.read().split()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert child_loaded == "True"
        assert int(child_worker) not in (parent_worker, pid)
        assert pool.load(str(pyc)).result == "loaded"
        assert pool.worker_pid == parent_worker


def test_forked_scan_workers_each_check_with_their_own_process(tmp_path: Path) -> None:
    for d in range(30):
        for m in range(15):
            compile_pyc(write(tmp_path / f"d{d}" / f"m{m}.py", f"X = {d * m}\n"))
    hostile = with_body(tmp_path / "d7", "bad", argcount_minus_one())
    options = AuditOptions(deep=True)
    report = audit_jobs([tmp_path.resolve()], options, 2)
    assert [(e.path, e.state) for e in report.entries] == [(hostile, State.CORRUPT)]
    assert report.summary() == audit([tmp_path.resolve()], options).summary()
    wait_until(no_children, 10, message="the forked workers' checking processes to exit")


# -- the caps of this process's own reads ------------------------------------------------------------


def test_a_hash_pyc_of_a_source_over_the_cap_is_not_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cachewatchd.cache import judge as judge_module

    source = write(tmp_path / "m.py", "X = 1\n" + "#" * 5000 + "\n")
    compile_pyc(source, mode="checked-hash")
    monkeypatch.setattr(judge_module, "MAX_SOURCE_BYTES", 4096)
    (entry,) = audit([tmp_path.resolve()]).entries
    assert entry.state is State.SUSPECT
    assert "hash is not computed" in entry.reason


def test_a_source_over_the_cap_is_not_compiled(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n" + "#" * 5000 + "\n")
    pyc = compile_pyc(source)
    triggered(pyc)
    with CheckPool(Limits(max_source=4096)) as pool:
        state, reason = judge(pool, pyc, source)
    assert state is State.SUSPECT
    assert "source over 4096 bytes" in reason
