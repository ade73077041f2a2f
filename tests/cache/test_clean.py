"""`cachewatchd clean`: removes only what it should, only cache files, never outside the tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewatchd.cache.remove import cache_files_for_source, invalidate_source, remove_cache_files
from cachewatchd.cli import main
from tests.support.pycs import restore_mtime_edit, write
from tests.support.wait import compile_pyc

TAG = sys.implementation.cache_tag


def clean(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["clean", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def plant(root: Path) -> dict[str, Path]:
    fresh = compile_pyc(write(root / "fresh.py", "X = 1\n"))
    stale_src = write(root / "stale.py", "X = 1\n")
    stale = compile_pyc(stale_src)
    restore_mtime_edit(stale_src, "X = 2\n")
    orphan_src = write(root / "pkg" / "gone.py", "X = 1\n")
    orphan = compile_pyc(orphan_src)
    orphan_src.unlink()
    ghost_src = write(root / "ghost.py", "X = 1\n")
    ghost = compile_pyc(ghost_src, cfile=root / "ghost.pyc")
    ghost_src.unlink()
    return {"fresh": fresh, "stale": stale, "orphan": orphan, "sourceless": ghost}


def test_clean_removes_dangerous_and_clutter_keeps_fresh_and_sourceless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = plant(tmp_path)
    code, doc = clean(capsys, str(tmp_path))
    assert code == 1  # a sourceless pyc was kept
    assert set(doc["removed"]) == {str(files["stale"]), str(files["orphan"])}
    assert files["fresh"].exists()
    assert files["sourceless"].exists()
    assert not (tmp_path / "pkg" / "__pycache__").exists()  # left empty, removed
    assert [k["path"] for k in doc["kept"]] == [str(files["sourceless"])]


def test_clean_sourceless_and_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = plant(tmp_path)
    code, doc = clean(capsys, "--all", "--sourceless", str(tmp_path))
    assert code == 0
    assert set(doc["removed"]) == {str(p) for p in files.values()}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fresh.py", "pkg", "stale.py"]


def test_dry_run_removes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = plant(tmp_path)
    _, doc = clean(capsys, "--dry-run", "--all", str(tmp_path))
    assert len(doc["removed"]) == 3
    assert all(p.exists() for p in files.values())


def test_recompile_writes_fresh_caches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = plant(tmp_path)
    code, doc = clean(capsys, "--recompile", "--invalidation-mode", "checked-hash", str(tmp_path))
    assert doc["recompiled"] == [str(files["stale"])]
    assert files["stale"].read_bytes()[4] == 0b11
    assert main(["scan", str(tmp_path)]) == 1  # only the sourceless ghost is left
    capsys.readouterr()
    assert code == 1


def test_read_only_and_refusals_are_reported_and_the_rest_goes_on(tmp_path: Path) -> None:
    files = plant(tmp_path)
    outside = write(tmp_path.parent / f"{tmp_path.name}-outside.pyc", "not a cache of ours")
    result = remove_cache_files(
        [tmp_path / "fresh.py", outside, files["stale"], files["orphan"]], [tmp_path]
    )
    assert result.removed == [files["stale"], files["orphan"]]
    assert [reason for _, reason in result.errors] == [
        "refused: not a .pyc/.pyo file",
        "refused: outside the watched roots",
    ]
    assert (tmp_path / "fresh.py").exists()
    assert outside.exists()
    outside.unlink()


def test_permission_error_on_one_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may delete anything")
    files = plant(tmp_path)
    files["stale"].parent.chmod(0o555)
    try:
        result = remove_cache_files([files["stale"], files["orphan"]], [tmp_path])
    finally:
        files["stale"].parent.chmod(0o755)
    assert result.errors == [(files["stale"], "permission denied")]
    assert result.removed == [files["orphan"]]


def test_symlinked_pycache_is_not_entered_by_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside"
    orphan = compile_pyc(write(outside / "gone.py", "X = 1\n"))
    (outside / "gone.py").unlink()
    root = tmp_path / "root"
    write(root / "gone.py", "X = 1\n")
    (root / "__pycache__").symlink_to(outside / "__pycache__", target_is_directory=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    clean(capsys, "--all", "--sourceless", str(root))
    assert orphan.exists()
    result = remove_cache_files([root / "__pycache__" / orphan.name], [root])
    assert result.removed == []
    assert orphan.exists()


def test_invalidate_source_removes_every_tag_and_opt_level(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    made = [compile_pyc(source, optimize=level) for level in (0, 1, 2)]
    other_tag = made[0].with_name("m.cpython-39.pyc")
    other_tag.write_bytes(made[0].read_bytes())
    legacy = compile_pyc(source, cfile=tmp_path / "m.pyc")
    unrelated = compile_pyc(write(tmp_path / "mm.py", "X = 1\n"))
    assert len(cache_files_for_source(source)) == 4
    result = invalidate_source(source, [tmp_path], legacy=True)
    assert sorted(result.removed) == sorted([*made, other_tag, legacy])
    assert unrelated.exists()


names = st.sampled_from(
    ["a.py", "b.pyc", "c.pyo", "__pycache__", "d.txt", "e.cpython-311.pyc", "pyvenv.cfg", "f"]
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(names, min_size=1, max_size=4), min_size=1, max_size=25), st.data())
def test_clean_never_removes_a_non_cache_file(
    tmp_path_factory: pytest.TempPathFactory, layout: list[list[str]], data: st.DataObject
) -> None:
    root = tmp_path_factory.mktemp("tree")
    for parts in layout:
        path = root.joinpath(*parts)
        if path.exists() or any(
            p.is_file() for p in path.parents if p != root and p.is_relative_to(root)
        ):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name in {"__pycache__", "f"}:
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(data.draw(st.binary(max_size=40)))
    before = {p for p in root.rglob("*") if p.is_file()}
    keep = {p for p in before if not p.name.endswith((".pyc", ".pyo"))}
    main(["clean", "--all", "--sourceless", "--json", "--no-default-excludes", str(root)])
    after = {p for p in root.rglob("*") if p.is_file()}
    assert keep <= after


def _can_bind_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_bind_mount(), reason="needs root and mount namespaces")
def test_read_only_filesystem_is_reported_and_the_rest_goes_on(tmp_path: Path) -> None:
    ro_src = write(tmp_path / "ro" / "m.py", "X = 1\n")
    ro_pyc = compile_pyc(ro_src)
    restore_mtime_edit(ro_src, "X = 2\n")
    rw_src = write(tmp_path / "rw" / "m.py", "X = 1\n")
    rw_pyc = compile_pyc(rw_src)
    restore_mtime_edit(rw_src, "X = 2\n")
    ro = tmp_path / "ro"
    script = (
        f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
        f"exec {sys.executable} -m cachewatchd clean --json {tmp_path}"
    )
    # A private mount namespace: the read-only mount never leaks out of this command.
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["removed"] == [str(rw_pyc)]
    assert doc["errors"] == [{"path": str(ro_pyc), "error": "read-only file system"}]
    assert ro_pyc.exists()
    assert not rw_pyc.exists()


def plant_wide(root: Path) -> None:
    """plant() in 16 packages below *root*: big enough for --jobs 2 to fork."""
    for i in range(4):
        for j in range(4):
            plant(root / f"a{i}" / f"b{j}")


@pytest.mark.parametrize("args", [["--all", "--sourceless"], [], ["--sourceless"]])
def test_clean_with_jobs_does_what_one_process_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    plant_wide(tmp_path)
    dry = {jobs: clean(capsys, "--dry-run", "--jobs", jobs, *args, str(tmp_path)) for jobs in "123"}
    assert dry["2"] == dry["1"] == dry["3"]
    assert dry["1"][1]["removed"]
    one, two = tmp_path / "one", tmp_path / "two"
    plant_wide(one)
    plant_wide(two)
    code_one, doc_one = clean(capsys, "--jobs", "1", *args, str(one))
    code_two, doc_two = clean(capsys, "--jobs", "2", *args, str(two))
    assert code_two == code_one
    assert json.dumps(doc_two).replace(str(two), "ROOT") == json.dumps(doc_one).replace(
        str(one), "ROOT"
    )
    assert sorted(p.relative_to(two) for p in two.rglob("*")) == sorted(
        p.relative_to(one) for p in one.rglob("*")
    )


def test_clean_prunes_the_emptied_prefix_mirror_but_not_the_prefix(tmp_path: Path) -> None:
    from cachewatchd.cache.audit import mirror_dir

    root = (tmp_path / "proj").resolve()
    prefix = (tmp_path / "prefix").resolve()
    gone = write(root / "pkg" / "gone.py", "X = 1\n")
    mirror = mirror_dir(prefix, gone.parent)
    mirror.mkdir(parents=True)
    compile_pyc(gone, cfile=mirror / f"gone.{TAG}.pyc")
    gone.unlink()
    assert main(["clean", "--pycache-prefix", str(prefix), str(root)]) == 0
    assert prefix.is_dir()
    assert list(prefix.iterdir()) == []


# -- the cache layer's clean(): the policy the CLI and the daemon share ------------------------------
def test_clean_function_removes_by_policy_and_says_what_it_did(tmp_path: Path) -> None:
    from cachewatchd.cache.audit import State
    from cachewatchd.cache.clean import clean as clean_tree

    files = plant(tmp_path)
    result = clean_tree([tmp_path])
    assert set(result.removed) == {files["stale"], files["orphan"]}
    assert tmp_path / "pkg" / "__pycache__" in result.removed_dirs
    assert [(e.path, e.state) for e in result.kept] == [(files["sourceless"], State.SOURCELESS)]
    assert result.errors == ()
    assert result.ok
    assert result.recompiled == ()
    assert result.report.summary()["stale"] == 1
    assert files["fresh"].exists()
    assert files["sourceless"].exists()


def test_clean_function_fresh_sourceless_dry_run_and_recompile(tmp_path: Path) -> None:
    from cachewatchd.cache.clean import clean as clean_tree

    files = plant(tmp_path)
    dry = clean_tree([tmp_path], fresh=True, sourceless=True, dry_run=True)
    assert dry.dry_run
    assert set(dry.removed) == set(files.values())
    assert dry.removed_dirs == ()
    assert all(p.exists() for p in files.values())
    assert sum(dry.report.summary().values()) == len(dry.report.entries) == 4

    result = clean_tree([tmp_path], recompile=True, invalidation_mode="checked-hash")
    assert result.recompiled == (files["stale"],)
    assert files["stale"].read_bytes()[4] == 0b11
    with pytest.raises(ValueError, match="invalidation_mode"):
        clean_tree([tmp_path], recompile=True, invalidation_mode="sometimes")  # type: ignore[arg-type]


def test_clean_function_with_jobs_gives_the_result_of_one_process(tmp_path: Path) -> None:
    from cachewatchd.cache.clean import clean as clean_tree

    plant_wide(tmp_path)
    one = clean_tree([tmp_path], fresh=True, dry_run=True, jobs=1)
    two = clean_tree([tmp_path], fresh=True, dry_run=True, jobs=2)
    assert two.removed == one.removed
    assert two.kept == one.kept


def test_removed_by_default_is_every_state_but_fresh_and_sourceless() -> None:
    from cachewatchd.cache.audit import State
    from cachewatchd.cache.clean import REMOVED_BY_DEFAULT, removed_by_default

    assert {s for s in State if removed_by_default(s)} == REMOVED_BY_DEFAULT
    assert set(State) - REMOVED_BY_DEFAULT == {State.FRESH, State.SOURCELESS}


def test_cache_files_by_source_lists_each_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cachewatchd.cache.remove import cache_files_by_source

    prefix = (tmp_path / "prefix").resolve()
    root = (tmp_path / "proj").resolve()
    sources = [write(root / f"m{i}.py", "X = 1\n") for i in range(5)]
    for source in sources:
        compile_pyc(source)
        compile_pyc(source, optimize=1)
    mirror = prefix / root.relative_to(root.anchor)
    mirror.mkdir(parents=True)
    in_prefix = compile_pyc(sources[0], cfile=mirror / f"m0.{TAG}.pyc")
    legacy = compile_pyc(sources[1], cfile=root / "m1.pyc")
    lonely = compile_pyc(write(root / "other.py", "X = 1\n"))

    listed: list[str] = []
    real_listdir = os.listdir

    def counting_listdir(path: Any) -> list[str]:
        listed.append(str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", counting_listdir)
    found = cache_files_by_source(sources, pycache_prefix=prefix, legacy={sources[1]})
    assert sorted(listed) == sorted([str(root / "__pycache__"), str(mirror)])
    monkeypatch.undo()
    assert list(found) == sources
    for source in sources:
        assert found[source] == cache_files_for_source(
            source, pycache_prefix=prefix, legacy=source == sources[1]
        )
        assert len(found[source]) == 2 + (source in sources[:2])
    assert in_prefix in found[sources[0]]
    assert found[sources[1]][-1] == legacy
    assert all(lonely not in files for files in found.values())
