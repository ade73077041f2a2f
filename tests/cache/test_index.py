"""The verification index: exact checks remembered by fingerprint, never trusted blindly, never
fatal (cachewatchd/cache/index.py, cachewatchd/cache/verified.py)."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from cachewatchd.cache import index as index_module
from cachewatchd.cache.audit import AuditOptions, State, audit
from cachewatchd.cache.checks import CheckPool, Outcome
from cachewatchd.cache.index import VerifyIndex, default_path
from cachewatchd.cache.parallel import audit_jobs
from cachewatchd.cache.plan import AuditOptions as PlanOptions
from cachewatchd.cache.verified import Memory
from tests.support.pycs import late_writer_pyc, restore_mtime_edit, write
from tests.support.ticks import past_the_tick
from tests.support.wait import compile_pyc

TAG = sys.implementation.cache_tag


@pytest.fixture
def index_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.mktemp("index")
    monkeypatch.setenv("CACHEWATCHD_CACHE_DIR", str(path))
    return path


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pycs the exact check ran for (the real check still runs)."""
    seen: list[str] = []
    real = CheckPool.exact_many

    def counting(self: CheckPool, requests: Sequence[tuple[str, str, int]]) -> list[Outcome]:
        seen.extend(pyc for pyc, _, _ in requests)
        return real(self, requests)

    monkeypatch.setattr(CheckPool, "exact_many", counting)
    return seen


def tree(root: Path, n: int = 3) -> list[Path]:
    """*n* modules with pycs written more than a tick after their sources."""
    sources = [write(root / f"m{i}.py", f"X = {i}\n") for i in range(n)]
    past_the_tick(*sources)
    pycs = [compile_pyc(source) for source in sources]
    past_the_tick(*pycs)
    return pycs


def deep(root: Path) -> dict[str, State]:
    report = audit([root.resolve()], AuditOptions(deep=True, keep_fresh=True))
    assert not report.errors
    return {e.path.name: e.state for e in report.entries}


def test_the_index_lives_in_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHEWATCHD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert default_path() == Path("/x/cache/cachewatchd/verified.sqlite3")
    monkeypatch.setenv("CACHEWATCHD_CACHE_DIR", "/y")
    assert default_path() == Path("/y/verified.sqlite3")


def test_a_repeated_deep_audit_checks_only_what_changed(
    tmp_path: Path, index_dir: Path, checked: list[str]
) -> None:
    pycs = tree(tmp_path)
    assert set(deep(tmp_path).values()) == {State.FRESH}
    assert sorted(checked) == sorted(map(str, pycs))
    checked.clear()
    assert set(deep(tmp_path).values()) == {State.FRESH}
    assert checked == []  # every record still applies
    os.utime(pycs[0])  # the pyc's mtime (and ctime) moved: its fingerprint changed
    source = tmp_path / "m1.py"
    restore_mtime_edit(source, "X = 7\n")  # the source's ctime moved
    past_the_tick(source, pycs[0])
    states = deep(tmp_path)
    assert sorted(checked) == sorted(map(str, pycs[:2]))
    assert states[pycs[1].name] is State.STALE


def test_a_plain_scan_reports_a_stale_verdict_recorded_by_deep(
    tmp_path: Path, index_dir: Path
) -> None:
    """A late writer's pyc: only an exact check can tell (tests/cache/test_triggers.py)."""
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    restore_mtime_edit(source, "X = 2\n")
    past_the_tick(source)
    pyc = late_writer_pyc(source, "X = 1\n")
    past_the_tick(pyc)
    assert audit([tmp_path.resolve()]).entries == []  # fresh to the times
    audit_jobs([tmp_path.resolve()], AuditOptions(deep=True), 2)
    (entry,) = audit([tmp_path.resolve()]).entries
    assert entry.state is State.STALE
    proc = subprocess.run(
        [sys.executable, "-m", "cachewatchd", "scan", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stale" in proc.stdout


def test_forked_jobs_record_what_they_checked(tmp_path: Path, index_dir: Path) -> None:
    for d in range(12):
        tree(tmp_path / f"p{d}", 2)
    report = audit_jobs([tmp_path.resolve()], AuditOptions(deep=True), 2)
    assert report.summary()["fresh"] == 24
    records = VerifyIndex()
    found = sum(len(records.directory(str(tmp_path / f"p{d}" / "__pycache__"))) for d in range(12))
    records.close()
    assert found == 24


def test_a_corrupt_index_is_rebuilt_not_trusted(
    tmp_path: Path, index_dir: Path, checked: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    tree(tmp_path, 2)
    deep(tmp_path)
    db = index_dir / "verified.sqlite3"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    checked.clear()
    with caplog.at_level(logging.WARNING):
        assert set(deep(tmp_path).values()) == {State.FRESH}
    assert len(checked) == 2  # nothing was believed
    assert [r.getMessage() for r in caplog.records if "verification index" in r.getMessage()]
    assert len([r for r in caplog.records if "verification index" in r.getMessage()]) == 1
    checked.clear()
    deep(tmp_path)
    assert checked == []  # the rebuilt index serves again


def test_a_record_with_other_values_in_it_is_not_believed(
    tmp_path: Path, index_dir: Path, checked: list[str]
) -> None:
    """Rows that do not apply (another source path) are ignored, not trusted."""
    (pyc,) = tree(tmp_path, 1)
    deep(tmp_path)
    db = sqlite3.connect(index_dir / "verified.sqlite3")
    with db:
        db.execute("UPDATE verified SET source = '/elsewhere.py', state = 'stale'")
    db.close()
    checked.clear()
    assert deep(tmp_path) == {pyc.name: State.FRESH}
    assert checked == [str(pyc)]


def test_an_unusable_index_is_one_line_and_the_audit_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An index that exists but can be neither used nor replaced (here a directory in its place):
    one line per audit, which then runs without it."""
    monkeypatch.setenv("CACHEWATCHD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache" / "verified.sqlite3" / "x").mkdir(parents=True)
    root = tmp_path / "tree"
    tree(root, 2)
    with caplog.at_level(logging.WARNING):
        assert set(deep(root).values()) == {State.FRESH}
        assert set(deep(root).values()) == {State.FRESH}
    lines = [r.getMessage() for r in caplog.records if "verification index" in r.getMessage()]
    assert len(lines) == 2, lines  # one per audit: each tries once, then does without
    assert "running without it" in lines[0]


def test_nowhere_to_keep_an_index_is_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No cache dir can be made (``HOME=/nonexistent``, a read-only one): nothing is lost, and a
    line on every run would be noise."""
    blocker = write(tmp_path / "file", "not a directory\n")
    monkeypatch.setenv("CACHEWATCHD_CACHE_DIR", str(blocker / "sub"))
    root = tmp_path / "tree"
    tree(root, 2)
    with caplog.at_level(logging.WARNING):
        assert set(deep(root).values()) == {State.FRESH}
    assert not [r for r in caplog.records if "verification index" in r.getMessage()]


def test_the_scan_json_stays_clean_when_the_index_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "cache" / "verified.sqlite3").mkdir(parents=True)
    root = tmp_path / "tree"
    source = write(root / "m.py", "X = 1\n")
    compile_pyc(source)
    restore_mtime_edit(source, "X = 2\n")
    env = {
        **os.environ,
        "CACHEWATCHD_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cachewatchd", "scan", "--json", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    import json

    assert json.loads(proc.stdout)["summary"]["stale"] == 1
    assert proc.stderr.count("verification index") == 1, proc.stderr


def test_the_index_is_bounded(
    tmp_path: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "MAX_RECORDS", 10)
    for d in range(4):
        tree(tmp_path / f"p{d}", 4)
    deep(tmp_path)
    db = sqlite3.connect(index_dir / "verified.sqlite3")
    (count,) = db.execute("SELECT count(*) FROM verified").fetchone()
    db.close()
    assert 0 < count <= 10


def test_content_hashes_stand_in_for_an_untrusted_ctime(tmp_path: Path, index_dir: Path) -> None:
    """On sshfs an edit that keeps the size and puts the mtime back leaves every stamp as it was
    (ctime is the mtime there): the record must not apply when the content changed. The stamps
    sshfs would report are simulated by reusing the stat taken before the edit."""
    (pyc,) = tree(tmp_path, 1)
    source = tmp_path / "m0.py"
    options = PlanOptions(ctime_untrusted=(tmp_path,))
    memory = Memory(options)
    pyc_stat, source_stat = pyc.stat(), source.stat()
    content = memory.content(str(source), str(pyc), untrusted=True)
    memory.index.add(
        str(pyc), pyc_stat, str(source), source_stat, content, "fresh", "identical", "timestamp"
    )
    memory.flush()
    record = memory.records(str(pyc.parent))[pyc.name]
    args = (record, str(pyc), pyc_stat, str(source), source_stat)
    assert memory.known(*args, untrusted=True) is not None
    source.write_text("X = 9\n")  # same size
    assert memory.known(*args, untrusted=True) is None
    memory.close()


def test_concurrent_writers_share_the_index(tmp_path: Path, index_dir: Path) -> None:
    """Four ``scan --deep`` processes at once (a daemon and scans do this): WAL mode lets them all
    read and write; every record lands, no process fails."""
    trees = [tmp_path / f"t{i}" for i in range(4)]
    for root in trees:
        tree(root, 5)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cachewatchd", "scan", "--deep", "--jobs", "1", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for root in trees
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, outputs
    assert all(not err for _, err in outputs), outputs
    records = VerifyIndex()
    found = sum(len(records.directory(str(root / "__pycache__"))) for root in trees)
    records.close()
    assert found == 20
