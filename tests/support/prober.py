"""A client that asks a server every few milliseconds, on a fresh connection each time, and counts
what happened: answered, refused, or no answer (reset, closed, timed out)."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from types import TracebackType

__all__ = ["Prober", "ask"]


def ask(host: str, port: int, timeout: float = 30.0) -> tuple[str, str]:
    """``GET /`` on a new connection: ``("answered", body)``, ``("refused", "")`` or
    ``("failed", why)``."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return "refused", ""
    except OSError as exc:
        return "failed", f"connect: {exc!r}"
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as exc:
        return "failed", f"exchange: {exc!r}"
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        return "failed", f"answer: {data[:80]!r}"
    return "answered", body.decode(errors="replace")


class Prober:
    """Asks ``GET /`` every *every* seconds on its own thread until the block ends."""

    def __init__(self, port: int, host: str = "127.0.0.1", every: float = 0.005) -> None:
        self.host, self.port, self.every = host, port, every
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.bodies: Counter[str] = Counter()
        self.last: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            outcome, text = ask(self.host, self.port)
            with self._lock:
                self.counts[outcome] += 1
                if outcome == "answered":
                    self.bodies[text] += 1
                    self.last = text
                elif outcome == "failed":
                    self.failures.append(text)
            self._stop.wait(self.every)

    def seen(self, body: str) -> bool:
        with self._lock:
            return self.bodies[body] > 0

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(60)
