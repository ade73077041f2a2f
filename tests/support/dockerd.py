"""A real dockerd for the tests: one per session, private, stopped by its pid at the end.

The ``dockerd`` fixture (tests/conftest.py) yields a :class:`Dockerd`, or skips the test with one
clear reason when dockerd cannot run here (not Linux, not root, not installed — ``apt-get install
docker.io`` —, or it does not start). The daemon runs with its own data root, exec root, socket,
pidfile and config in a short per-session directory, with no bridge and no iptables; every
container is run with ``--network none``. After each test the fixture removes every container.

Its image (:attr:`Dockerd.image`) is built once per session with ``docker import`` from this
machine's files (tests/support/docker_image.py): the running CPython at its own path, also as
``python`` on the PATH, with cachewatchd and its run-time dependencies installed, and ``/bin/sh``.
Its working directory is ``/app``.

The API::

    dockerd.sock                          # Path of the daemon's unix socket
    dockerd.host                          # "unix:///…/d.sock"
    dockerd.env(**extra)                  # os.environ + DOCKER_HOST (+ DOCKER_CONFIG), no
                                          #   PYTHONDONTWRITEBYTECODE: for cachewatchd subprocesses
    dockerd.image, dockerd.python         # the image's tag; its Python's path ("/usr/local/bin/python")
                                          #   (``cachewatchd`` is on its PATH too)
    dockerd.docker("ps", "-a")            # the docker CLI against this daemon -> CompletedProcess[str]
                                          #   (check=True: a failure raises DockerError, with stderr)
    dockerd.api("GET", "/containers/json")  # the Engine API -> (status, decoded JSON or None)
    cid = dockerd.run_container("backend", src, ["python", "/app/serve.py"],
                                labels={"com.docker.compose.project": "shop"},
                                env={"K": "V"}, extra=["--stop-timeout", "5"])
                                          # docker run -d --network none -v src:/app; the id
    dockerd.exec(cid, "python", "-c", "print(1)")  # docker exec -> CompletedProcess[str]
    dockerd.inspect(cid)                  # GET /containers/{id}/json, as a dict
    dockerd.logs(cid)                     # stdout + stderr of the container, as text
    dockerd.restart(cid)                  # docker restart -t 5

and, for the app in the container (it has no network), tests/support/docker_app.py:
:func:`write_unix_app` writes a server that answers ``answer.VALUE`` on a unix socket in the
bind-mounted directory; :func:`ask` connects to it from this side (any path length),
:func:`wait_answer` waits until it answers a value.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from tests.support.docker_image import PYTHON, write_rootfs
from tests.support.wait import wait_until

__all__ = ["DockerError", "Dockerd", "DockerdUnavailable", "session_dockerd"]

START_TIMEOUT = 30.0
"""Seconds dockerd has to answer ``/_ping`` (it takes about one here)."""


class DockerdUnavailable(Exception):
    """dockerd cannot run here; the message says why (the tests skip with it)."""


class DockerError(subprocess.CalledProcessError):
    """A docker command failed; its message ends with the command's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or '').strip()}"


class Dockerd:
    """One private dockerd (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "d.sock"
        self.host = f"unix://{self.sock}"
        self.image = ""
        self.python = PYTHON
        self._proc: subprocess.Popen[bytes] | None = None
        self._config = root / "cli"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment for a child talking to this daemon (no
        ``PYTHONDONTWRITEBYTECODE``: cachewatchd runs as users run it)."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self._config), DOCKER_CLI_HINTS="false")
        env.update(extra)
        return env

    # -- the daemon ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start dockerd and wait (bounded) until it answers; raise :exc:`DockerdUnavailable`."""
        reason = _cannot_run()
        if reason:
            raise DockerdUnavailable(reason)
        self._config.mkdir(parents=True, exist_ok=True)
        (self.root / "daemon.json").write_text("{}\n", encoding="utf-8")
        log = (self.root / "dockerd.log").open("wb")
        argv = [
            "dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "x"),
            "-H", self.host, "--pidfile", str(self.root / "dockerd.pid"),
            "--config-file", str(self.root / "daemon.json"), "--bridge=none", "--iptables=false",
            "--ip6tables=false", "--ip-masq=false", "--userland-proxy=false",
        ]  # fmt: skip
        env = {**os.environ, "PATH": _path_with_sbin()}
        with log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        up = wait_until(
            lambda: self._proc is not None and (self._proc.poll() is not None or self._pings()),
            START_TIMEOUT,
            raise_on_timeout=False,
        )
        if not up or self._proc.poll() is not None:
            last = _last_error(self.root / "dockerd.log")
            self.stop()
            what = "exited" if up else f"did not answer within {START_TIMEOUT:g}s"
            raise DockerdUnavailable(f"dockerd {what} here: {last}")

    def build_image(self) -> None:
        """Import the tests' image (tests/support/docker_image.py) once; raise if it fails."""
        rootfs = write_rootfs(self.root / "rootfs.tar")
        tag = f"cachewatchd-test:py{rootfs.version}"
        try:
            self.docker(
                "import", "--change", "ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change", "WORKDIR /app", str(rootfs.tar), tag, timeout=60,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise DockerdUnavailable(f"docker import failed: {exc.stderr.strip()}") from exc
        finally:
            rootfs.tar.unlink()
        self.image = tag

    def stop(self) -> None:
        """Remove every container, stop dockerd by its pid (and its containerd), undo its mounts."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remove_all()
            family = _descendants(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            _, alive = psutil.wait_procs(family, timeout=10)
            for left in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    left.kill()
        else:
            proc.wait()
        self._kill_shims()
        _unmount_below(self.root)

    def _pings(self) -> bool:
        try:
            return self.api("GET", "/_ping", timeout=2)[0] == 200
        except OSError:
            return False

    def _kill_shims(self) -> None:
        """containerd's shims outlive it when a container was left running: ours, by their pid."""
        address = str(self.root / "x")
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if any(address in part for part in cmdline) and "shim" in " ".join(cmdline[:1]):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()

    # -- talking to it ---------------------------------------------------------------------------

    def docker(
        self, *args: str, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this daemon; a failure raises :exc:`DockerError` (its stderr)."""
        result = subprocess.run(
            ["docker", *args], env=self.env(), capture_output=True, text=True, timeout=timeout,
            input=input, stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise DockerError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def api(
        self, method: str, path: str, body: object = None, timeout: float = 30.0
    ) -> tuple[int, Any]:
        """One Engine API request over the unix socket: (status, decoded JSON body or None)."""
        conn = _UnixHTTPConnection(str(self.sock), timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data.decode(errors="replace")

    def run_container(
        self,
        name: str,
        src: Path,
        command: Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
        mount: str = "/app",
    ) -> str:
        """``docker run -d --network none -v src:mount`` *command* in the tests' image; its id."""
        argv = ["run", "-d", "--name", name, "--network", "none", "-v", f"{src}:{mount}"]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        argv += [*extra, self.image, *command]
        return self.docker(*argv).stdout.strip()

    def exec(
        self, container: str, *argv: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``docker exec container argv...``."""
        return self.docker("exec", container, *argv, check=check, timeout=timeout)

    def inspect(self, container: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/containers/{container}/json")
        assert status == 200, f"inspect {container}: {status} {body!r}"
        assert isinstance(body, dict)
        return body

    def logs(self, container: str) -> str:
        result = self.docker("logs", container, check=False)
        return result.stdout + result.stderr

    def restart(self, container: str, grace: int = 5) -> None:
        self.docker("restart", "-t", str(grace), container)

    def remove_all(self) -> None:
        """Remove every container of this daemon (after each test)."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, timeout=60)


@contextlib.contextmanager
def session_dockerd(base: Path) -> Iterator[Dockerd | str]:
    """The session's dockerd with its image, or the reason it cannot run; stopped at the end."""
    parent = base if len(str(base)) < 60 else Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="dockerd-", dir=parent))
    daemon = Dockerd(root)
    try:
        try:
            daemon.start()
            daemon.build_image()
        except DockerdUnavailable as exc:
            daemon.stop()
            yield str(exc)
            return
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- helpers ----------------------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _cannot_run() -> str | None:
    if sys.platform != "linux":
        return "dockerd runs on Linux only"
    if os.geteuid() != 0:
        return "dockerd needs root here (the tests do not set up rootless Docker)"
    path = _path_with_sbin()
    for tool, package in (("dockerd", "docker.io"), ("containerd", "containerd"), ("docker", "docker.io")):  # fmt: skip
        if shutil.which(tool, path=path) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if shutil.which("ldd") is None:
        return "ldd is missing: the tests' image cannot be assembled"
    return None


def _path_with_sbin() -> str:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    extra = [p for p in ("/usr/local/sbin", "/usr/sbin", "/sbin") if p not in parts]
    return os.pathsep.join([*parts, *extra])


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "level=error" in line or "level=fatal" in line or "failed" in line:
            return line.strip()[-300:]
    return lines[-1].strip()[-300:] if lines else "no output"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _unmount_below(root: Path) -> None:
    """Lazily detach whatever dockerd left mounted below *root* (deepest first)."""
    prefix = f"{root}/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [f.split()[1] for f in mounts if len(f.split()) > 1]
    for point in sorted({p for p in points if p.startswith(prefix)}, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)
