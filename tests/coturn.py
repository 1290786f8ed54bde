"""A real coturn (Debian's ``turnserver``) for tests, on loopback or in a network namespace.

The package is installed on first use through scripts/ensure-system-deps. Debian's coturn ships a
``coturn.service`` that a systemd host would enable and start on install (only its sysvinit
script honours ``TURNSERVER_ENABLED`` in /etc/default/coturn, which is off): on a host booted
with systemd the unit is masked before installing, so installing a test tool never leaves a TURN
server running. Without systemd (containers, CI) the sysvinit script refuses to start it.

Each server runs with no config file (``-n``), its own pid file and user database in a temporary
directory, its own process group, logs to stdout (kept in a file and shown when it fails to
start), and is killed when the context ends. Ports are picked free at start; a start that loses
a port race is retried on new ones.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from petcamd.control import stun

REPO = Path(__file__).resolve().parent.parent
REALM = "petcam.test"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0


def ensure_coturn() -> str:
    """The turnserver binary, installing Debian's coturn (service masked) when it is missing."""
    found = shutil.which("turnserver")
    if found:
        return found
    if Path("/run/systemd/system").is_dir():
        _as_root(["systemctl", "mask", "coturn.service"])
    subprocess.run([str(REPO / "scripts" / "ensure-system-deps"), "coturn"], check=True)
    found = shutil.which("turnserver")
    assert found, "installing coturn did not provide turnserver"
    return found


def _as_root(command: list[str]) -> None:
    subprocess.run(command if os.geteuid() == 0 else ["sudo", *command], check=True)


def rest_credentials(secret: str, user: str = "petcam", ttl_s: int = 3600) -> tuple[str, str]:
    """TURN REST API credentials (coturn's --use-auth-secret): "<expiry>:<user>" and its HMAC."""
    username = f"{int(time.time()) + ttl_s}:{user}"
    digest = hmac.digest(secret.encode(), username.encode(), "sha1")
    return username, base64.b64encode(digest).decode()


@dataclass
class Coturn:
    process: subprocess.Popen[bytes]
    addresses: tuple[str, ...]
    port: int
    """UDP and TCP; with two addresses also port + 1 (RFC 5780's alternate port)."""
    tls_port: int | None
    log_path: Path

    @property
    def address(self) -> str:
        return self.addresses[0]

    def url(self, scheme: str = "turn", *, transport: str | None = None) -> str:
        port = self.tls_port if scheme in ("turns", "stuns") else self.port
        query = f"?transport={transport}" if transport else ""
        return f"{scheme}:{self.address}:{port}{query}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port_block(count: int, addresses: Sequence[str]) -> int:
    """A port P such that P .. P+count-1 are free for TCP and UDP on every address."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            base = int(probe.getsockname()[1])
        if base + count <= 65535 and all(
            _bindable(kind, address, base + i)
            for i in range(count)
            for address in addresses
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        ):
            return base
    raise RuntimeError("no block of free ports")


def _bindable(kind: socket.SocketKind, address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def stun_answers(address: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether a Binding request to address:port over UDP gets a STUN answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        request = stun.encode(stun.Method.BINDING, stun.Kind.REQUEST)
        try:
            sock.sendto(request, (address, port))
            data, _ = sock.recvfrom(2048)
            return stun.decode(data).transaction_id == request[8:20]
        except (OSError, stun.StunError):
            return False


def _tcp_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.2):
            return True
    except OSError:
        return False


def listening(server: Coturn) -> bool:
    """The default readiness check, from this process's network namespace."""
    ports = [server.port] if server.tls_port is None else [server.port, server.tls_port]
    return stun_answers(server.address, server.port) and all(_tcp_open(server.address, p) for p in ports)


@contextlib.contextmanager
def running_coturn(
    directory: Path,
    *,
    addresses: Sequence[str] = ("127.0.0.1",),
    users: Sequence[tuple[str, str]] = (("petcam", "litter-box"),),
    auth_secret: str | None = None,
    certificate: tuple[Path, Path] | None = None,
    relay_address: str | None = None,
    prefix: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    ready: Callable[[Coturn], bool] = listening,
) -> Iterator[Coturn]:
    """A started turnserver: long-term credentials for ``users``, the REST scheme with ``auth_secret``,
    or no authentication at all when both are empty.

    Two ``addresses`` turn on RFC 5780 (an alternate address and port, announced in
    OTHER-ADDRESS). ``certificate`` (cert, key) adds TLS on ``tls_port``. ``prefix`` runs the
    server through another command (``ip netns exec NS``); ``ready`` then has to check from there.
    ``extra_args`` go to turnserver as they are (``--user-quota=1``).
    """
    binary = ensure_coturn()
    directory.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # a port taken between picking and binding: pick again
        base = free_port_block(4, addresses)
        port, tls_port = base, (base + 2 if certificate else None)
        command = [
            *prefix,
            binary,
            "-n",
            "--no-cli",
            "--log-file=stdout",
            f"--pidfile={directory / f'turnserver-{port}.pid'}",
            f"--userdb={directory / f'turndb-{port}'}",
            f"--realm={REALM}",
            "--fingerprint",
            "--no-dtls",
            f"--listening-port={port}",
            f"--relay-ip={relay_address or addresses[0]}",
            *(f"--listening-ip={address}" for address in addresses),
        ]
        if auth_secret is not None:
            command += ["--use-auth-secret", f"--static-auth-secret={auth_secret}"]
        elif users:
            command += ["--lt-cred-mech", *(f"--user={name}:{password}" for name, password in users)]
        else:
            command.append("--no-auth")  # an open relay, as misconfigured servers are
        if certificate is not None:
            command += [
                f"--cert={certificate[0]}",
                f"--pkey={certificate[1]}",
                f"--tls-listening-port={tls_port}",
            ]
        else:
            command.append("--no-tls")
        command += extra_args
        log_path = directory / f"turnserver-{port}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Coturn(process, tuple(addresses), port, tls_port, log_path)
        try:
            if _wait_ready(server, ready):
                yield server
                return
        finally:
            _stop(process)
    raise RuntimeError(f"turnserver did not start (exit {process.returncode}):\n{server.log()[-3000:]}")


def _wait_ready(server: Coturn, ready: Callable[[Coturn], bool]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready(server):
        if server.process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it lingers; always reaped."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
