"""A private, real redis-server for tests and benchmarks (Debian's redis-server package).

Each one listens on 127.0.0.1 on a free port, keeps nothing on disk (`--save ''`, `--appendonly
no`, its directory a private temporary one) and dies with the process that started it (the
kernel sends it SIGKILL when its parent goes, even if the parent is killed). Installing the
package on a machine that runs systemd would also start and enable the system's own redis on
port 6379: `ensure_redis_server` stops and disables that, so the tests leave no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PIDFILE = Path("/run/redis/redis-server.pid")
SYSTEM_PORT = 6379
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def ensure_redis_server() -> str:
    """The redis-server binary, installed first (through scripts/ensure-system-deps) if missing."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    subprocess.run([str(ROOT / "scripts" / "ensure-system-deps"), "redis-server"], check=True)
    stop_system_redis()
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed")
    return found


def stop_system_redis() -> None:
    """Stop and disable the service the package installs: the tests run their own servers."""
    as_root = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if Path("/run/systemd/system").is_dir():
        subprocess.run(
            [*as_root, "systemctl", "disable", "--now", "redis-server.service"],
            check=False,
            capture_output=True,
        )
    elif system_redis_running():
        subprocess.run([*as_root, "invoke-rc.d", "redis-server", "stop"], check=False, capture_output=True)


def system_redis_running() -> bool:
    """Whether the package's own server runs (its pid file names a live process, or 6379 answers)."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(SYSTEM_PIDFILE.read_text().strip()), 0)
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", SYSTEM_PORT)) == 0


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent exits, however it exits.

    The kernel sends it when the *thread* that started the server ends: start servers from the
    main thread.
    """
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RedisServer:
    """One redis-server process; `restart()` brings it back on the same port, empty."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.binary = ensure_redis_server()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("redis-server is not running")
        return self.proc.pid

    def start(self, within: float = 10.0) -> None:
        log = (self.directory / "redis.log").open("ab")
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(
            [self.binary, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks involved
        )
        log.close()
        deadline = time.monotonic() + within
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer within {within} s: {self.log_tail()}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL and wait: what a crash looks like to its clients."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        return ""


@contextlib.contextmanager
def redis_server(directory: Path | None = None) -> Iterator[RedisServer]:
    """A started server, always killed afterwards; its directory is removed if this made it."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="petcam-redis-")))
        server = RedisServer(directory)
        server.start()
        try:
            yield server
        finally:
            server.kill()
