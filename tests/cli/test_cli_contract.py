"""The command line's contract with the shell: closed pipes, typos, the log stream, colour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachewatchd.cli import main
from cachewatchd.errors import EXIT_BROKEN_PIPE, EXIT_USAGE
from cachewatchd.log import LogSink, configure_logging, get_logger


def _many_orphans(root: Path, count: int) -> None:
    cache = root / "__pycache__"
    cache.mkdir(parents=True)
    for i in range(count):
        (cache / f"gone_module_number_{i}.cpython-311.pyc").write_bytes(b"")


def test_scan_into_a_pipe_whose_reader_left_exits_141_quietly(tmp_path: Path) -> None:
    """``cachewatchd scan | head -2``: no traceback, no message, 128 + SIGPIPE like Unix tools."""
    _many_orphans(tmp_path, 3000)  # far more output than a pipe buffers
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachewatchd", "scan", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline()  # head -1 ...
    proc.stdout.close()  # ... and goes away
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert err == b""


def test_a_mistyped_command_is_named_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["frobnicate"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "'frobnicate' is not a command" in err
    assert "scan" in err
    assert "doctor" in err
    assert "no such directory" not in err
    assert err.count("\n") == 1


def test_an_existing_directory_is_still_a_path_for_run(tmp_path: Path) -> None:
    from cachewatchd.cli import _mistyped_command

    (tmp_path / "frobnicate").mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert not _mistyped_command("frobnicate", ["run", "scan"])
        assert _mistyped_command("frobnicat", ["run", "scan"])
        assert not _mistyped_command("scan", ["run", "scan"])
        assert not _mistyped_command("./missing", ["run", "scan"])  # a path: run says what is wrong
    finally:
        os.chdir(cwd)


def test_a_log_stream_whose_reader_left_drops_and_counts_lines() -> None:
    """A broken pipe under the log must never raise into the thread that logs."""
    r, w = os.pipe()
    os.close(r)
    stream = os.fdopen(w, "w", buffering=1)
    try:
        sink = configure_logging("json", "info", stream=stream)
        log = get_logger("test")
        log.info("first")
        log.warning("second", detail=1)
        assert sink.broken
        assert sink.dropped == 2
    finally:
        configure_logging("json", "info", stream=sys.stderr)
        try:
            stream.close()
        except BrokenPipeError:
            pass


def test_log_sink_passes_lines_while_the_stream_works(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as f:
        sink = LogSink(f)
        sink.write("one\n")
        sink.flush()
        assert not sink.broken
        assert sink.dropped == 0
    assert (tmp_path / "log").read_text() == "one\n"


@pytest.mark.parametrize("no_color", [None, "1"])
def test_console_log_is_coloured_on_a_terminal_unless_no_color(
    no_color: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w")
    try:
        configure_logging("auto", "info", stream=tty)
        get_logger("test").info("hello", n=1)
        tty.flush()
        out = os.read(master, 65536)
    finally:
        configure_logging("json", "info", stream=sys.stderr)
        tty.close()
        os.close(master)
    assert b"hello" in out
    assert (b"\x1b[" in out) == (no_color is None)
