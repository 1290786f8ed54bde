"""systemd's notify protocol: READY, STATUS, WATCHDOG and STOPPING.

The watchdog ping is a promise that video is flowing (or deliberately idle). It is withheld, not
faked, when the frame pipeline is stuck, so systemd's WatchdogSec restarts a daemon that cannot
recover by itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

STATUS_REFRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str = ""


class SystemdNotifier:
    """sd_notify(3) in a few lines: one datagram per message to $NOTIFY_SOCKET.

    Written here rather than taken from the sdnotify package because that one reads only
    os.environ and swallows every error; this one takes its environment as an argument (tests
    give it a real socket) and logs a failed send once.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval_s = _watchdog_interval(env)
        self._last_status: str | None = None
        self._send_failed = False
        # Non-blocking: a datagram socket whose reader lags blocks the sender once its queue is
        # full, and the event loop must never wait on systemd.
        flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        self._sock = socket.socket(socket.AF_UNIX, flags) if address else None

    def _send(self, message: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._send_failed:
                log.warning("cannot notify systemd at %s: %s", self._address, exc)
            self._send_failed = True
        else:
            self._send_failed = False

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """Sends STATUS= only when it changed, so a steady daemon sends nothing but pings."""
        if status != self._last_status:
            self._last_status = status
            self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends; None when not for this process."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return None
    return value / 2_000_000 if value > 0 else None


async def notify_loop(
    notifier: SystemdNotifier, health: Callable[[], Health], status: Callable[[], str]
) -> None:
    """Pings the watchdog while healthy and keeps STATUS= current; runs for the daemon's life."""
    interval = notifier.watchdog_interval_s
    tick = min(interval, STATUS_REFRESH_S) if interval else STATUS_REFRESH_S
    loop = asyncio.get_running_loop()
    next_ping = loop.time()
    withholding = False
    while True:
        notifier.status(status())
        if interval is not None and loop.time() >= next_ping:
            state = health()
            if state.ok:
                notifier.watchdog()
                if withholding:
                    log.info("frame pipeline healthy again; watchdog pings resumed")
                withholding = False
            elif not withholding:
                log.error("withholding watchdog pings: %s", state.reason)
                withholding = True
            next_ping = loop.time() + interval
        await asyncio.sleep(tick)
