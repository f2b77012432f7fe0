"""Real processes for the tests: ``herald dev``, and ``herald ingest`` +
``herald gateway`` around a private ``redis-server``, each on free
127.0.0.1 ports in its own temporary directory, killed by PID at teardown.

No mocks (DESIGN.md "Real parts in tests"). Every wait polls with a
deadline; a missing binary fails with a message saying how to get it.

Each process also gets a guardian: a tiny ``sh`` blocked reading a pipe
whose only writer is this test process. If pytest dies by any means
(SIGKILL, a CI timeout) the kernel closes the pipe and the guardian kills
the server by PID, so nothing outlives the test run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import httpx

REPO = Path(__file__).resolve().parents[3]

T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float = 10.0, what: str = "condition",
               interval: float = 0.05) -> T:
    """Polls ``check`` until it returns something other than None/False, or
    fails after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = check()
            if v is not None and v is not False:
                return v
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def herald_bin() -> Path:
    """``$HERALD_BIN``, else ``target/debug/herald`` of the repository (or of
    ``$CARGO_TARGET_DIR``)."""
    env = os.environ.get("HERALD_BIN")
    if env:
        p = Path(env)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
        if not target.is_absolute():
            target = REPO / target
        p = target / "debug" / "herald"
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise RuntimeError(
            f"herald binary not found at {p}: build it with "
            f"`cargo build -p herald --bin herald` in {REPO}, or set HERALD_BIN"
        )
    return p


def redis_bin() -> str:
    p = shutil.which("redis-server")
    if p is None:
        raise RuntimeError("redis-server not found on PATH: install the Debian package "
                           "redis-server (apt-get install redis-server)")
    return p


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # herald refuses unknown HERALD_* variables, and the parent's settings
    # must not leak into a test server.
    return {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}


class Proc:
    """One child process with a log file and a guardian."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=workdir, env=_clean_env())
        # The guardian: `read` returns when our end of the pipe closes,
        # i.e. when this process exits however it exits.
        self.guardian = subprocess.Popen(
            ["sh", "-c", f"read _ ; kill -9 {self.proc.pid} 2>/dev/null"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def fail(self, why: str) -> RuntimeError:
        return RuntimeError(f"{self.name} ({' '.join(self.argv)}): {why}\n--- last log lines ---\n"
                            f"{self.log_tail()}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Kills the process by PID and reaps it (bounded), then retires the
        guardian (first, so it cannot kill a reused PID)."""
        if self.guardian.poll() is None:
            self.guardian.kill()
            self.guardian.wait(timeout=5)
        if self.guardian.stdin is not None:
            self.guardian.stdin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def wait_http(proc: Proc, url: str, timeout: float = 30.0) -> None:
    """Waits until GET ``url`` answers 200, failing early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as c:
        while True:
            if not proc.alive():
                raise proc.fail(f"exited with status {proc.proc.returncode} before {url} answered")
            try:
                if c.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise proc.fail(f"{url} did not answer 200 within {timeout} s")
            time.sleep(0.05)


class Topology:
    """What a test needs to know about a running herald: where the ingest
    API is, where WebSockets connect, and the keys."""

    name: str
    api_url: str
    ws_url: str
    secret: str
    api_key: str
    procs: list[Proc]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


class HeraldDev(Topology):
    """``herald dev``: gateway + ingest in one process, SQLite, local bus."""

    def __init__(self, workdir: Path, *, extra: list[str] | None = None) -> None:
        self.name = "dev"
        self.secret = secrets.token_hex(32)
        self.api_key = secrets.token_hex(16)
        port = free_port()
        argv = [str(herald_bin()), "dev", "--listen", f"127.0.0.1:{port}",
                "--database-url", f"sqlite://{workdir / 'h.db'}",
                "--jwt-secret", self.secret, "--api-key", self.api_key, *(extra or [])]
        self.procs = [Proc("herald-dev", argv, workdir)]
        self.api_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        try:
            wait_http(self.procs[0], f"{self.api_url}/healthz")
        except BaseException:
            self.stop()
            raise


class RedisServer:
    """A private ``redis-server``: free port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.proc = self._start()

    def _start(self) -> Proc:
        p = Proc("redis", [redis_bin(), "--port", str(self.port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                 self.workdir)

        def pong() -> bool:
            if not p.alive():
                raise p.fail("redis-server exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        eventually(pong, timeout=15, what=f"redis-server on port {self.port}")
        return p

    def stop(self) -> None:
        self.proc.stop()


class HeraldCluster(Topology):
    """``herald ingest`` + ``herald gateway`` around a private Redis, with
    SQLite as ingest's store (one ingest node)."""

    def __init__(self, workdir: Path) -> None:
        self.name = "redis"
        self.secret = secrets.token_hex(32)
        self.api_key = secrets.token_hex(16)
        self.procs = []
        try:
            self.redis = RedisServer(workdir)
            self.procs.append(self.redis.proc)
            ing_port, ing_admin = free_port(), free_port()
            ingest = Proc("herald-ingest", [
                str(herald_bin()), "ingest", "--listen", f"127.0.0.1:{ing_port}",
                "--admin-listen", f"127.0.0.1:{ing_admin}", "--redis-url", self.redis.url,
                "--database-url", f"sqlite://{workdir / 'h.db'}", "--api-key", self.api_key,
            ], workdir)
            self.procs.append(ingest)
            self.ingest_admin_url = f"http://127.0.0.1:{ing_admin}"
            wait_http(ingest, f"{self.ingest_admin_url}/healthz")
            self.api_url = f"http://127.0.0.1:{ing_port}"
            gw_port, gw_admin = free_port(), free_port()
            gateway = Proc("herald-gateway", [
                str(herald_bin()), "gateway", "--listen", f"127.0.0.1:{gw_port}",
                "--admin-listen", f"127.0.0.1:{gw_admin}", "--redis-url", self.redis.url,
                "--ingest-url", self.api_url, "--jwt-secret", self.secret,
                "--api-key", self.api_key, "--node-id", "gw-py",
            ], workdir)
            self.procs.append(gateway)
            wait_http(gateway, f"http://127.0.0.1:{gw_admin}/healthz")
            self.ws_url = f"ws://127.0.0.1:{gw_port}"
        except BaseException:
            self.stop()
            raise
