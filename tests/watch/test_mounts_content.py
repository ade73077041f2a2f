"""The poller's content hash where the filesystem's ctime cannot be trusted (sshfs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

from cachewatchd.watch import content_stat
from cachewatchd.watch.content_stat import ContentStat
from tests.support.pycs import restore_mtime_edit


def _lstat_like_sshfs(path: str) -> os.stat_result:
    """Stat as sshfs answers it: the ctime says nothing (it is the mtime)."""
    st = os.lstat(path)
    fields = list(st[:10])
    fields[9] = fields[8]
    extra = {"st_mtime": st.st_mtime, "st_ctime": st.st_mtime, "st_mtime_ns": st.st_mtime_ns}
    extra.update(st_atime=st.st_atime, st_atime_ns=st.st_atime_ns, st_ctime_ns=st.st_mtime_ns)
    return os.stat_result(fields, extra)


@pytest.fixture(autouse=True)
def _no_ctime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(content_stat, "change_stat", _lstat_like_sshfs)


def _snap(root: Path, stat: ContentStat) -> DirectorySnapshot:
    stat.new_pass()
    return DirectorySnapshot(str(root), stat=stat)


def test_a_restored_mtime_edit_is_a_modified_file(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("X = 1\n")
    stat = ContentStat()
    before = _snap(tmp_path, stat)
    assert not DirectorySnapshotDiff(before, _snap(tmp_path, stat)).files_modified
    restore_mtime_edit(source, "X = 2\n")
    plain = DirectorySnapshot(str(tmp_path), stat=_lstat_like_sshfs)
    assert plain.mtime(str(source)) == before.stat_info(str(source)).st_ctime  # nothing to see
    after = _snap(tmp_path, stat)
    assert DirectorySnapshotDiff(before, after).files_modified == [str(source)]
    assert not DirectorySnapshotDiff(after, _snap(tmp_path, stat)).files_modified


def test_unchanged_files_are_hashed_in_turn(tmp_path: Path) -> None:
    sources = [tmp_path / f"m{i}.py" for i in range(3)]
    for source in sources:
        source.write_text("X = 1\n")
    stat = ContentStat(budget=1)
    ref = _snap(tmp_path, stat)
    restore_mtime_edit(sources[1], "X = 2\n")
    modified: list[bytes | str] = []
    for _ in range(4):  # three files, one a pass: each is read again within three passes
        snap = _snap(tmp_path, stat)
        modified += DirectorySnapshotDiff(ref, snap).files_modified
        ref = snap
    assert modified == [str(sources[1])]


def test_a_file_that_vanishes_while_hashed_is_no_error(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("X = 1\n")
    stat = ContentStat()
    stat.new_pass()
    assert stat(str(source)).st_mtime_ns > 0
    assert content_stat._digest(str(tmp_path / "gone.py"), 0) == 0
