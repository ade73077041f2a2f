"""The preloader process: imports third-party modules once, then forks each generation.

Run by :class:`cachewatchd.processes.preloader.Preloader` as ``PYTHON [OPTIONS] -c STUB <this
file> FD`` (the stub executes this file in a namespace of its own) with the own child's interpreter, interpreter options, cwd and environment: *fd* is
its end of a unix socket pair with the daemon. It imports nothing from ``cachewatchd`` nor any
third-party module of its own (it runs in the app's interpreter, which need not have cachewatchd
installed), only the standard library, and its syntax is that of Python 3.7+.

Messages are JSON objects, one per line, both ways. The daemon sends ``preload`` (the module names
to import, the watched roots, the ``sys.path[0]`` of the generations), then ``fork`` requests with
the generation's descriptors attached (``SCM_RIGHTS``). It answers ``ready`` (the stat fingerprint
of every file it imported, and the directories of ``sys.path``) or ``failed`` (why, and the module
to blame), ``forked`` (the pid) or ``refused`` (why), and ``exit`` (a generation's pid and its
exit status, as :class:`subprocess.Popen` reports it) whenever one of its forks ends. It exits when
the daemon's end closes.

The rules it keeps: a meta path guard refuses any module under a watched root (the project's code
is never preloaded); it forks only while the process has exactly one thread; a failure of any kind
is reported, never hidden. A fork becomes the generation exactly as a cold start would: its own
process group (or session), the descriptors at the numbers the daemon asked for, its environment,
``sys.argv`` and ``sys.path[0]``; default ``SIGCHLD``; then the command's entry point runs at the
top of this process, so its exit, exception or signal is the interpreter's own, as with ``python
-m`` or a script.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import importlib
import importlib.machinery
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

_MAX_FDS = 16
_RECV = 1 << 16


def _threads() -> int:
    """Threads of this process: the kernel's count (C extensions start threads too)."""
    try:
        return max(len(os.listdir("/proc/self/task")), threading.active_count())
    except OSError:
        return threading.active_count()


def _under(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _spec_paths(spec: object) -> list[str]:
    found = []
    origin = getattr(spec, "origin", None)
    if isinstance(origin, str) and os.path.isabs(origin):
        found.append(origin)
    found.extend(p for p in getattr(spec, "submodule_search_locations", None) or () if p)
    return found


class _Guard:
    """First on ``sys.meta_path`` in the preloader: a module found under a watched root is an
    ``ImportError``, before any of its code runs."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = roots

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if isinstance(finder, _Guard) or find is None:
                continue
            spec: ModuleSpec | None = find(name, path, target)
            if spec is not None:
                if any(_under(p, self.roots) for p in _spec_paths(spec)):
                    raise ImportError("cachewatchd: " + name + " is under a watched root")
                return spec
        return None


class _Recorder:
    """First on ``sys.meta_path`` in a generation: writes the name of every module imported
    from now on to the daemon's report pipe (the preloader's next list), then lets the real
    finders find it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if self.fd >= 0 and "__main__" not in name.split("."):
            try:
                os.write(self.fd, (name + "\n").encode("utf-8", "replace"))
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    self.fd = -1
        return None


class _Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []

    def send(self, message: dict[str, object]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict[str, object] | None:
        """The next message (``None`` at EOF); descriptors that came with it in :attr:`fds`."""
        while b"\n" not in self.buffer:
            data, ancillary, _flags, _addr = self.sock.recvmsg(
                _RECV, socket.CMSG_SPACE(_MAX_FDS * 4)
            )
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    self.fds.extend(
                        int.from_bytes(payload[i : i + 4], sys.byteorder)
                        for i in range(0, usable, 4)
                    )
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        return message if isinstance(message, dict) else {}

    def pending(self) -> bool:
        return b"\n" in self.buffer


def _preload(channel: _Channel, request: dict[str, object]) -> bool:
    """Import the requested modules under the guard; answer ``ready`` or ``failed``."""
    roots = [str(r) for r in request.get("roots") or []]  # type: ignore[attr-defined]
    path0 = request.get("path0")
    if sys.path and sys.path[0] == "":  # -c's entry: the command's own instead
        del sys.path[0]
    if isinstance(path0, str):
        sys.path.insert(0, path0)
    tainted = [n for n, m in list(sys.modules.items()) if _module_under(m, roots)]
    if tainted:
        channel.send({"failed": "the interpreter's start-up imported " + tainted[0]})
        return False
    sys.meta_path.insert(0, _Guard(roots))
    skipped: dict[str, str] = {}
    tops: dict[str, bool] = {}
    for name in request.get("names") or []:  # type: ignore[attr-defined]
        top = str(name).split(".")[0]
        if top not in tops:
            tops[top] = _importable(top, skipped)
        if not tops[top] or name in sys.modules:
            continue
        before = set(sys.modules)
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - any failure is the daemon's to judge
            channel.send(
                {"failed": f"importing {name}: {type(exc).__name__}: {exc}", "culprit": top}
            )
            return False
        bad = [n for n in set(sys.modules) - before if _module_under(sys.modules[n], roots)]
        if bad:
            channel.send(
                {
                    "failed": f"importing {name} imported {bad[0]} from a watched root",
                    "culprit": top,
                }
            )
            return False
        if _threads() != 1:
            channel.send({"failed": f"importing {name} started a thread", "culprit": top})
            return False
    files = _fingerprint(roots, path0 if isinstance(path0, str) else None)
    if hasattr(gc, "freeze"):  # 3.7+: what the forks share is never traversed by their collector
        gc.collect()
        gc.freeze()
    channel.send({"ready": True, "files": files, "skipped": skipped, "pid": os.getpid()})
    return True


def _importable(top: str, skipped: dict[str, str]) -> bool:
    try:
        spec = importlib.util.find_spec(top)
    except BaseException as exc:  # noqa: BLE001 - the guard's ImportError, a broken finder
        skipped[top] = str(exc) or type(exc).__name__
        return False
    if spec is None:
        skipped[top] = "not found"
        return False
    return True


def _module_under(module: object, roots: list[str]) -> bool:
    path = getattr(module, "__file__", None)
    return isinstance(path, str) and _under(path, roots)


def _fingerprint(roots: list[str], path0: str | None) -> list[list[object]]:
    """``[path, mtime_ns, size, inode]`` of every imported file and ``sys.path`` directory (a
    package installed there changes it) but the command's own first one (its cwd or script
    directory: an editor's swap file there is no reason to rebuild)."""
    paths = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    paths.update(
        p for p in sys.path if p and p != path0 and os.path.isdir(p) and not _under(p, roots)
    )
    rows: list[list[object]] = []
    for path in sorted(p for p in paths if isinstance(p, str)):
        try:
            st = os.stat(path)
        except OSError:
            continue
        rows.append([path, st.st_mtime_ns, st.st_size, st.st_ino])
    return rows


def _status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _serve(channel: _Channel) -> dict[str, object] | None:
    """Answer the daemon until its end closes (``None``); in a fork, the fork request."""
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        if not channel.pending():
            readable, _, _ = select.select([channel.sock.fileno(), wake_r], [], [])
            if wake_r in readable:
                _drain(wake_r)
                _reap(channel)
                if channel.sock.fileno() not in readable:
                    continue
        request = channel.receive()
        if request is None:
            return None
        fds, channel.fds = channel.fds, []
        if request.get("op") == "fork" and _fork(channel, fds) == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            _close([wake_r, wake_w])
            channel.sock.close()
            request["received"] = fds
            return request
        _close(fds)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def _fork(channel: _Channel, fds: list[int]) -> int | None:
    """Fork while this process has one thread: 0 in the fork, else ``None`` (the daemon told)."""
    threads = _threads()
    if threads != 1:
        channel.send({"refused": f"the preloader has {threads} threads"})
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        return 0
    channel.send({"forked": pid})
    return None


def _reap(channel: _Channel) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        channel.send({"exit": pid, "code": _status(status)})


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _become(request: dict[str, object]) -> dict[str, object]:
    """In the fork: the process a cold start would have made, up to running the entry point."""
    if request.get("session") == "session":
        os.setsid()
    else:
        os.setpgid(0, 0)
    received = [int(fd) for fd in request["received"]]  # type: ignore[attr-defined]
    targets = [int(fd) for fd in request.get("fds") or []]  # type: ignore[attr-defined]
    floor = max([*targets, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in received]
    _close(received)
    for i, target in enumerate(targets):
        os.dup2(moved[i], target, inheritable=True)
        os.close(moved[i])
    extra = moved[len(targets) :]
    report = extra[0] if extra else -1  # the report pipe, after the targets: close-on-exec
    env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}  # type: ignore[attr-defined]
    if request.get("listen_pid"):
        env["LISTEN_PID"] = str(os.getpid())
    os.environ.clear()
    os.environ.update(env)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Guard)]
    if report >= 0:
        os.set_blocking(report, False)
        sys.meta_path.insert(0, _Recorder(report))
    sys.argv[:] = [str(a) for a in request.get("argv") or []]  # type: ignore[attr-defined]
    _retitle([str(a) for a in request.get("title") or []])  # type: ignore[attr-defined]
    return request


def _retitle(args: list[str]) -> None:
    """Show *args* as this process's command line (``ps``, ``/proc/PID/cmdline``) instead of the
    preloader's, in the memory the kernel reads it from (Linux; the rest of it filled with NULs)."""
    if not args:
        return
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5))
        data = b"\0".join(os.fsencode(a) for a in args) + b"\0"
        size = end - start
        data = data[: size - 1] + b"\0" if len(data) > size else data.ljust(size, b"\0")
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data)


def _run(request: dict[str, object]) -> None:
    """The command's entry point, as ``python -m`` or ``python SCRIPT`` runs it."""
    target = str(request["target"])
    if request.get("mode") != "module" and sys.version_info >= (3, 9):
        target = os.path.abspath(target)  # 3.9+: a script's __file__ and code are absolute
    namespace = sys.modules["__main__"].__dict__
    builtins = namespace.get("__builtins__")
    namespace.clear()  # the stub's names gone: a pristine __main__, as at start-up
    namespace.update(__name__="__main__", __doc__=None, __builtins__=builtins)
    if request.get("mode") == "module":
        import runpy

        runpy._run_module_as_main(target, alter_argv=True)  # type: ignore[attr-defined]
        return
    namespace.update(
        __package__=None,
        __spec__=None,
        __file__=target,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", target),
    )
    with open(target, "rb") as source:
        code = compile(source.read(), target, "exec")
    exec(code, namespace)  # noqa: S102 - the user's own command, as the interpreter runs it


def main(fd: int) -> None:
    """The preloader's life: preload, then serve forks; a fork runs the command and returns."""
    sock = socket.socket(fileno=fd)
    channel = _Channel(sock)
    try:
        request = channel.receive()
        if request is None or not _preload(channel, request):
            return
        child = _serve(channel)
    except OSError:
        return  # the daemon went away
    if child is not None:
        _run(_become(child))


if __name__ == "__cachewatchd_preloader__":
    main(int(sys.argv[2]))
