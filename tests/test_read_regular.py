"""``paths.read_regular``: a FIFO, a directory or a huge file where a small file belongs, for real."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cachewatchd.paths import FileTooLargeError, NotRegularFileError, read_regular


def test_regular_file_is_read_whole(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_bytes(b"x" * 200_000)  # more than one read
    assert read_regular(file, 200_000) == b"x" * 200_000
    assert read_regular(str(file), 10**9) == b"x" * 200_000


def test_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    assert read_regular(tmp_path / "link", 10) == b"data"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError) as caught:
        read_regular(fifo, 1024)  # without O_NONBLOCK, open() waits for a writer forever
    assert caught.value.strerror == "a FIFO, not a regular file"
    assert caught.value.filename == str(fifo)
    assert isinstance(caught.value, OSError)


def test_fifo_with_a_writer_is_refused_too(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(NotRegularFileError):
            read_regular(fifo, 1024)  # no read at all: a writer could keep it open forever
    finally:
        os.close(writer)
        os.close(reader)


def test_directory_socket_and_device_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFileError, match="a directory, not a regular file"):
        read_regular(tmp_path, 1024)
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(OSError):  # ENXIO from open(), or refused after fstat
            read_regular(path, 1024)
    with pytest.raises(NotRegularFileError, match="a character device"):
        read_regular("/dev/null", 1024)


def test_too_large_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "big"
    file.write_bytes(b"y" * 101)
    assert read_regular(file, 101) == b"y" * 101
    with pytest.raises(FileTooLargeError) as caught:
        read_regular(file, 100)
    assert caught.value.strerror == "larger than 100 bytes"


def test_missing_file_is_the_ordinary_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing", 10)
