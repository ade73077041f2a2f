"""Black-box tests of the console script: text, JSON, exit codes, colour."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cachewatchd.cli import main
from tests._pycs import restore_mtime_edit, write
from tests.helpers import compile_pyc

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
    assert proc.stdout.splitlines()[0] == "1 cache entries under ."
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
