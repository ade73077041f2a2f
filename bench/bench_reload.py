"""Reload benchmark: edit -> first HTTP response with the new code on a FastAPI + SQLAlchemy +
pydantic + httpx app, three ways side by side in one run.

Modes, each serving the same app from a directory of its own on a port of its own:

- ``uvicorn --reload``: ``python -m uvicorn app:app --reload`` (watchfiles; the socket stays in
  the reloader's process);
- ``cachewatchd cold``: ``cachewatchd --foreground DIR --listen 127.0.0.1:PORT --cold -- python -m
  uvicorn app:app``: every generation a new interpreter, the daemon holding the socket;
- ``cachewatchd warm``: the same without ``--cold``: every generation forked from the preloaded
  interpreter, which imported what the previous generation imported from outside DIR.

All three run for the whole benchmark, as a developer's server does. After two untimed warm-up
rounds (the warm mode learns what to preload there), each round edits each mode's ``app.py`` once
(the value it answers changes, and with it the size and the mtime), in an order rotated every round,
and from the moment the edit returned asks ``GET /`` every 5 ms (a fresh connection each time) until
the new value comes back (or 20 s pass: the edit is missed), counting refused connections; then it
waits 1-1.3 s before the next edit. Reported per mode: median and p90 of edit -> first new
response, refused connections, missed edits. Targets: warm <= 0.35x ``uvicorn --reload``'s median,
0 refused connections and no edit missed with cachewatchd.

From the repository root: ``.venv/bin/python bench/bench_reload.py`` (``--rounds N``, default 12;
``--quick``: 3 rounds, a smoke test). Needs the ``bench`` extra (fastapi, sqlalchemy, pydantic,
httpx, uvicorn).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h

__all__ = ["main"]

APP = """\
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import Column, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import StaticPool
import httpx

VALUE = {value!r}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id = Column(Integer, primary_key=True)
    name = Column(String)


class Out(BaseModel):
    value: str
    items: int


engine = create_engine(
    "sqlite://", poolclass=StaticPool, connect_args={{"check_same_thread": False}}
)
Base.metadata.create_all(engine)
app = FastAPI()


@app.get("/", response_model=Out)
def root() -> Out:
    with Session(engine) as session:
        return Out(value=VALUE, items=session.query(Item).count())
"""
DEADLINE = 20.0
STEP = 0.005
MODES = ("uvicorn --reload", "cachewatchd cold", "cachewatchd warm")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ask(port: int) -> str | None:
    """The body of ``GET /``; ``"refused"`` when nothing listens; ``None`` on any other failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return None
    else:
        return body if resp.status == 200 else None
    finally:
        conn.close()


@dataclass
class Mode:
    name: str
    directory: Path
    port: int
    proc: h.JsonProc | None = None
    seconds: list[float] = field(default_factory=list)
    refused: int = 0
    missed: int = 0
    version: int = 0

    @property
    def source(self) -> Path:
        return self.directory / "app.py"

    def value(self) -> str:
        return f"v{self.version:04d}"

    def write(self) -> None:
        self.source.write_text(APP.format(value=self.value()), encoding="utf-8")


def uvicorn(mode: Mode) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(mode.directory),
            "--host", "127.0.0.1", "--port", str(mode.port), "--log-level", "warning"]  # fmt: skip


@contextmanager
def started(mode: Mode, env: dict[str, str], work: Path) -> Iterator[Mode]:
    """*mode*'s server running and answering its first value."""
    mode.write()
    if mode.name == "uvicorn --reload":
        argv = [*uvicorn(mode), "--reload", "--log-config", str(work / "nolog.json")]
        mode.proc = h.JsonProc(argv, env, cwd=mode.directory)
    else:
        extra = ["--listen", f"127.0.0.1:{mode.port}"] + (["--cold"] if "cold" in mode.name else [])
        mode.proc = h.start_daemon(env, work, [mode.directory], *extra, child=uvicorn(mode))
    try:
        if wait_for(mode, mode.value())[0] is None:
            tail = "".join(mode.proc.garbage[-5:])
            raise RuntimeError(f"{mode.name} did not answer within 120 s:\n{tail}")
        yield mode
    finally:
        mode.proc.stop()


def wait_for(mode: Mode, value: str, deadline: float = 120.0) -> tuple[float | None, int]:
    """Ask every :data:`STEP` until *mode* answers *value*: (seconds, refused), or (None, refused)."""
    start = time.monotonic()
    refused = 0
    while time.monotonic() - start < deadline:
        body = ask(mode.port)
        if body == "refused":
            refused += 1
        elif body is not None and value in body:
            return time.monotonic() - start, refused  # when the answer came, not the question
        time.sleep(STEP)
    return None, refused


def edit(mode: Mode, *, timed: bool) -> None:
    mode.version += 1
    mode.write()
    seconds, refused = wait_for(mode, mode.value(), DEADLINE)
    if not timed:
        return
    mode.refused += refused
    if seconds is None:
        mode.missed += 1
    else:
        mode.seconds.append(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="3 rounds: a smoke test")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    missing = [m for m in ("fastapi", "sqlalchemy", "pydantic", "httpx", "uvicorn")
               if importlib.util.find_spec(m) is None]  # fmt: skip
    if missing:
        print(f"bench_reload needs the bench extra: pip install -e '.[bench]' ({missing} missing)")
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        work = Path(tmp)
        (work / "nolog.json").write_text('{"version": 1, "disable_existing_loggers": false}')
        env = h.child_env(work / "home", bytecode=True)
        h.print_header("bench_reload", env, work)
        print(f"  {rounds} rounds + 2 warm-up rounds, edit -> first new response, GET every 5 ms")
        modes = [Mode(name, work / name.replace(" ", "_").replace("-", ""), free_port())
                 for name in MODES]  # fmt: skip
        rng = random.Random(1)
        with ExitStack() as stack:
            for mode in modes:
                mode.directory.mkdir()
                stack.enter_context(started(mode, env, work))
            for rep in range(-2, rounds):
                shift = rep % len(modes)
                for mode in [*modes[shift:], *modes[:shift]]:
                    time.sleep(1.0 + rng.random() * 0.3)
                    edit(mode, timed=rep >= 0)
            preloaded = modes[2].proc.events("preloaded") if modes[2].proc else []
        return report(modes, [line.data for line in preloaded])


def report(modes: list[Mode], preloaded: list[dict[str, object]]) -> int:
    print()
    widths = (-18, 10, 10, 9, 8)
    print(h.row(("mode", "median s", "p90 s", "refused", "missed"), widths))
    medians: dict[str, float | None] = {}
    for mode in modes:
        med = statistics.median(mode.seconds) if mode.seconds else None
        medians[mode.name] = med
        p90 = h.pct(mode.seconds, 90) if mode.seconds else None
        cells = (mode.name, f"{med:.3f}" if med is not None else "never",
                 f"{p90:.3f}" if p90 is not None else "-", mode.refused, mode.missed)  # fmt: skip
        print(h.row(cells, widths))
    reload_, cold, warm = (medians[name] for name in MODES)
    if cold and warm:
        print(f"\n  warm / cold: {warm / cold:.2f}x")
    if preloaded:
        last = preloaded[-1]
        print(f"  preloaders built: {len(preloaded)}; the last: {last.get('modules')} modules, "
              f"{last.get('files')} files fingerprinted")  # fmt: skip
    targets = h.Targets()
    targets.ratio("warm <= 0.35x uvicorn --reload (median)", warm, reload_, 0.35)
    for mode in modes[1:]:
        targets.check(f"{mode.name}: 0 refused connections ({mode.refused})", mode.refused == 0)
        targets.check(f"{mode.name}: no edit missed ({mode.missed})", mode.missed == 0)
    return 0 if targets.report() else 1


if __name__ == "__main__":
    sys.exit(main())
