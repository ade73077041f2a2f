"""remove_cache_files: the safety verdicts, now taken once per directory, are each file's own."""

from __future__ import annotations

import sys
from pathlib import Path

from cachewatchd.cache.remove import is_cache_file, remove_cache_files

TAG = sys.implementation.cache_tag


def _pyc(directory: Path, stem: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.{TAG}.pyc"
    path.write_bytes(b"\0" * 16)
    return path


def test_one_directory_many_verdicts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    pycache = root / "pkg" / "__pycache__"
    good = [_pyc(pycache, f"m{i}") for i in range(3)]
    odd = pycache / "notes.pyc"  # a .pyc in __pycache__ whose name is no cache name
    odd.write_bytes(b"x")
    link = pycache / f"l.{TAG}.pyc"
    link.symlink_to(good[0])
    directory = pycache / f"d.{TAG}.pyc"
    directory.mkdir()
    text = pycache / "m0.py"
    text.write_text("")
    result = remove_cache_files([*good, odd, link, directory, text], [root])
    assert result.removed == good
    assert dict(result.errors) == {
        odd: "refused: not a cache entry",
        link: "refused: not a regular file",
        directory: "refused: not a regular file",
        text: "refused: not a .pyc/.pyo file",
    }
    assert odd.exists()
    assert link.is_symlink()
    assert directory.is_dir()
    assert text.exists()


def test_symlinked_pycache_inside_the_root_is_refused_for_every_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    real = [_pyc(root / "a" / "__pycache__", f"m{i}") for i in range(2)]
    (root / "b").mkdir()
    (root / "b" / "__pycache__").symlink_to(root / "a" / "__pycache__", target_is_directory=True)
    via = [root / "b" / "__pycache__" / p.name for p in real]
    result = remove_cache_files(via, [root])
    assert result.removed == []
    assert [error for _, error in result.errors] == ["refused: not a cache entry"] * 2
    assert all(p.exists() for p in real)
    assert is_cache_file(real[0], [root]) is None  # the real directory's entries may go


def test_outside_the_roots_and_legacy_beside_the_source(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    inside = _pyc(root / "__pycache__", "m")
    foreign = _pyc(outside / "__pycache__", "m")
    legacy = root / "old.pyc"
    legacy.write_bytes(b"\0" * 16)
    result = remove_cache_files([foreign, inside, legacy], [root])
    assert result.removed == [inside, legacy]
    assert result.errors == [(foreign, "refused: outside the watched roots")]
    assert result.removed_dirs == [root / "__pycache__"]  # emptied, pruned
    assert foreign.exists()
