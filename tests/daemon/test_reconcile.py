"""The reconciliation by stat-only deltas: unchanged directories are not judged again (no pyc
header read), a change that no event reported is still found and removed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cachewatchd.cache.auditor import Auditor
from cachewatchd.cache.plan import AuditOptions
from cachewatchd.daemon import reconcile
from cachewatchd.daemon.batch_handler import BatchHandler, Counters
from cachewatchd.daemon.reconcile import Sweeper
from tests.support.pycs import restore_mtime_edit, write
from tests.support.wait import compile_pyc


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """``__pycache__`` directories whose pycs the audit read, counted (the hook)."""
    seen: Counter[str] = Counter()
    real = Auditor.pycache

    def counting(
        self: Auditor, source_dir: str, cache_dir: str, sources: dict[str, object]
    ) -> None:
        seen[cache_dir] += 1
        real(self, source_dir, cache_dir, sources)  # type: ignore[arg-type]

    monkeypatch.setattr(Auditor, "pycache", counting)
    monkeypatch.setattr(reconcile, "SETTLED_NS", 0)  # the files of a test are seconds old
    return seen


@pytest.fixture
def tree(tmp_path: Path, clean_env: None) -> Path:
    root = tmp_path.resolve() / "proj"
    for d in range(4):
        for m in range(5):
            compile_pyc(write(root / f"p{d}" / f"m{m}.py", f"X = {d * 10 + m}\n"))
    return root


def test_a_rescan_judges_only_what_changed_and_finds_what_events_missed(
    tree: Path, reads: Counter[str]
) -> None:
    handler = BatchHandler({tree: ()}, pycache_prefix=None, counters=Counters(), eager=True)
    assert handler.reconcile(tree, "start") == 0
    assert len(reads) == 4  # the first rescan judges every directory
    sweeper = handler.sweepers[tree]
    assert sweeper.judged == 5  # the root and its four packages

    reads.clear()
    assert handler.reconcile(tree, "reconcile interval") == 0
    assert reads == Counter()  # nothing changed: no pyc read
    assert (sweeper.judged, sweeper.unchanged) == (0, 5)

    source = tree / "p2" / "m3.py"
    pyc = compile_pyc(source)
    restore_mtime_edit(source, "X = 99\n")  # the edit CPython misses; no event reported it
    assert handler.reconcile(tree, "event queue overflow") == 1
    assert not pyc.exists()
    assert reads == Counter({str(tree / "p2" / "__pycache__"): 1})
    assert sweeper.judged == 1


def test_a_pyc_written_or_removed_is_a_change(
    tree: Path, tmp_path: Path, reads: Counter[str]
) -> None:
    sweeper = Sweeper(AuditOptions())
    sweeper.audit(tree)
    reads.clear()
    compile_pyc(tree / "p0" / "m0.py", optimize=2)  # written
    (tree / "p1" / "__pycache__").rename(tmp_path / "gone")  # removed
    report = sweeper.audit(tree)
    assert sweeper.judged == 2
    assert set(reads) == {str(tree / "p0" / "__pycache__")}
    assert report.summary()["fresh"] == 6  # the judged directories' entries only


def test_recent_files_and_a_prefix_tree_are_always_judged(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: Counter[str]
) -> None:
    monkeypatch.setattr(reconcile, "SETTLED_NS", 3600 * 10**9)  # every file is "recent"
    sweeper = Sweeper(AuditOptions())
    sweeper.audit(tree)
    sweeper.audit(tree)
    assert sweeper.judged == 4  # the packages are not remembered (the root has no file)
    prefixed = Sweeper(AuditOptions(pycache_prefix=tmp_path / "prefix"))
    prefixed.audit(tree)
    assert prefixed.judged == -1  # the whole audit, prefix tree included


def test_a_pyc_rewritten_in_place_is_found_within_a_rotation(
    tree: Path, reads: Counter[str]
) -> None:
    """No writer of pycs rewrites one in place (CPython renames a new file over it), so the
    ``__pycache__`` directory's stat stands for its pycs; each rescan still stats the pycs of one
    directory in ROTATION."""
    handler = BatchHandler({tree: ()}, pycache_prefix=None, counters=Counters(), eager=True)
    handler.reconcile(tree, "start")
    pyc = next((tree / "p1" / "__pycache__").iterdir())
    with open(pyc, "r+b") as f:  # in place: the directory does not change
        f.seek(16)
        f.write(b"\xff" * 8)
    reads.clear()
    removed = [handler.reconcile(tree, "reconcile interval") for _ in range(reconcile.ROTATION)]
    assert removed.count(1) == 1  # found once, in one of the rescans
    assert not pyc.exists()
    assert set(reads) == {str(tree / "p1" / "__pycache__")}  # nothing else was read (it is
    # read once more in the rescan after the removal, which changed its directory)
