"""Real FIFOs where a file belongs, and a way out for a reader the bug under test leaves blocked."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["RESCUE_AFTER", "fifo_at", "rescued"]

RESCUE_AFTER = 5.0
"""Seconds before :func:`rescued` unblocks a reader: a fixed reader returns long before."""


def fifo_at(path: Path) -> Path:
    """A real FIFO at *path* (whatever was there is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


@contextmanager
def rescued(*fifos: Path, after: float = RESCUE_AFTER) -> Iterator[None]:
    """Run the body; from *after* seconds on, a writer opens and closes each FIFO over and over, so
    that a reader blocked in ``open`` or ``read`` (the bug) sees end-of-file and the test fails on
    its assertions instead of hanging. The rescuing thread is stopped and joined on exit."""
    stop = threading.Event()

    def rescue() -> None:
        if stop.wait(after):
            return
        while not stop.is_set():
            for fifo in fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: nobody is reading it right now
                    continue
                os.close(fd)
            stop.wait(0.05)

    thread = threading.Thread(target=rescue, name="fifo-rescue", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
