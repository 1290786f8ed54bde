"""The notify protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from petcamd.notify import Health, SystemdNotifier, notify_loop
from tests.notify_socket import NotifySocket


def test_messages_reach_the_socket(notify_socket: NotifySocket) -> None:
    notifier = SystemdNotifier(notify_socket.env(watchdog_usec=4_000_000))
    assert notifier.watchdog_interval_s == 2.0
    notifier.ready("local mode")
    notifier.status("local mode")  # unchanged: not sent again
    notifier.status("camera stalled")
    notifier.stopping()
    notify_socket.wait_for("STOPPING", 2)
    sent = [m for _, m in notify_socket.snapshot()]
    assert sent == [
        {"READY": "1", "STATUS": "local mode"},
        {"STATUS": "camera stalled"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


def test_watchdog_disabled_for_another_pid_or_without_env() -> None:
    assert (
        SystemdNotifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval_s
        is None
    )
    assert SystemdNotifier({}).watchdog_interval_s is None
    assert not SystemdNotifier({}).enabled
    assert SystemdNotifier({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None


async def test_pings_only_while_healthy(notify_socket: NotifySocket) -> None:
    notifier = SystemdNotifier(notify_socket.env(watchdog_usec=100_000))  # ping every 50 ms
    healthy = [True]
    task = asyncio.create_task(
        notify_loop(notifier, lambda: Health(healthy[0], "camera stalled"), lambda: "s")
    )
    await asyncio.sleep(0.5)
    pings_healthy = len(notify_socket.times_of("WATCHDOG"))
    healthy[0] = False
    await asyncio.sleep(0.1)  # let a ping already under way land
    withheld_from = len(notify_socket.times_of("WATCHDOG"))
    await asyncio.sleep(0.5)
    pings_after = len(notify_socket.times_of("WATCHDOG"))
    healthy[0] = True
    await asyncio.sleep(0.3)
    resumed = len(notify_socket.times_of("WATCHDOG"))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert pings_healthy >= 4
    assert pings_after == withheld_from
    assert resumed > pings_after


def test_a_stalled_reader_never_blocks_the_daemon(tmp_path: Path) -> None:
    """systemd not reading must cost dropped pings, never a frozen event loop."""
    import socket
    import time

    path = tmp_path / "deaf.sock"
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(path))
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
        started = time.monotonic()
        for _ in range(1000):  # far beyond the socket's queue (net.unix.max_dgram_qlen, 10 by default)
            notifier.watchdog()
        assert time.monotonic() - started < 2.0
    finally:
        deaf.close()
