"""A real NOTIFY_SOCKET for tests: an AF_UNIX datagram socket that records what systemd would get."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def poll(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.poll()
            for _, fields in self.messages[seen:]:
                if key in fields:
                    return fields
            seen = len(self.messages)
        raise AssertionError(f"no {key} within {timeout} s; got {[m for _, m in self.messages]}")

    def times_of(self, key: str) -> list[float]:
        self.poll()
        return [t for t, fields in self.messages if key in fields]

    def close(self) -> None:
        self.sock.close()
