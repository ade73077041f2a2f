"""A daemon whose log stream dies (``| head -2``, a closed terminal tab) keeps invalidating."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.daemon import cli, isolated_env
from tests.support.pycs import restore_mtime_edit
from tests.support.wait import compile_pyc, wait_until


def _gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def test_invalidation_goes_on_after_the_log_reader_left(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    sources = [root / f"m{i}.py" for i in range(3)]
    for source in sources:
        source.write_text("X = 1\n")
    env = isolated_env(tmp_path / "home")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cachewatchd", "--foreground", str(root), "--log-format", "json"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert daemon.stderr is not None
        for line in daemon.stderr:  # like `| head`: read up to the ready line ...
            if json.loads(line)["event"] == "ready":
                break
        daemon.stderr.close()  # ... and go away
        for source in sources:  # each invalidation logs a line into the dead pipe
            pyc = compile_pyc(source)
            restore_mtime_edit(source, "X = 2\n")
            wait_until(_gone(pyc), 10, message=f"{pyc} removed")
            restore_mtime_edit(source, "X = 1\n")
            status = cli(["status", "--json"], env)
        assert status.returncode == 0, status.stderr
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        code = daemon.wait(30)
    assert code == 0
