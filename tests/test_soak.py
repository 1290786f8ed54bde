"""Viewer churn against one daemon process: connect, stream, disconnect, over and over, ending
every way a viewer ends, and the daemon's memory, descriptors and tasks come back to baseline.

`make test` runs 30 cycles, `make soak` (PETCAMD_SOAK=1) the issue's 500. Each cycle of ten is:

- 5 clean ends: petcam-view's `watch` (in this process) decodes its frames and says `bye`;
- 2 abrupt drops: a session's TCP connection is shut down with no `bye` and no WebSocket close,
  its peer connection left up until the device has noticed (tests/reliability.ChannelViewer);
- 1 killed viewer: a `petcam-view watch` process gets SIGKILL while it streams;
- 2 ICE failures: an offer with no candidates, and an offer whose peer connection is closed right
  after the answer. Nothing can connect, so the device must end each session (after its 10 s
  connect timeout) and say `bye`; these run alongside the next cycles.

The daemon is a process of its own (tests/processes.py) with `camera.linger_s = 0`, so every
cycle also starts and stops the camera's encoder, and a per-address connection rate fit for one
address reconnecting every second; its memory and descriptors are read from /proc,
its asyncio tasks from a SIGUSR1 snapshot taken after a garbage collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from petcamd.viewer.client import pair, watch
from petcamd.viewer.state import PairedDevice, ViewerState
from tests.notify_socket import NotifySocket
from tests.processes import DaemonProcess, daemon_config, viewer_process
from tests.reliability import (
    ChannelViewer,
    measured,
    open_fds,
    percentile,
    report,
    rss_kib,
    scaled,
    time_limit,
    unhandled,
)

pytestmark = pytest.mark.usefixtures("loopback_ice")

CYCLES = scaled(30, 500)
WARM_UP = scaled(10, 50)
FRAMES = 5
RSS_GROWTH_LIMIT_KIB = 10 * 1024
ICE_FAILURE_LIMIT_S = 10.0 + 5.0  # the device's connect timeout, plus room on a loaded machine
ONE_ADDRESS = {"handshake_burst": 100, "handshakes_per_s": 50.0}
"""Every cycle comes from 127.0.0.1, faster than one owner's phone would reconnect: the per-address
new-connection limit (burst 10, then 1 every 2 s) is raised; test_resource_limits covers it."""
KINDS = (
    "clean",
    "clean",
    "drop",
    "clean",
    "ice-no-candidates",
    "clean",
    "drop",
    "killed",
    "clean",
    "ice-closed",
)


class Churn:
    """The cycles, their per-kind figures, and the ICE failures still waiting for the device's bye."""

    def __init__(self, daemon: DaemonProcess, state: ViewerState, device: PairedDevice, port: int) -> None:
        self.daemon = daemon
        self.state = state
        self.device = device
        self.port = port
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.first_frame_s: list[float] = []
        self.cleanup_s: list[float] = []
        self.ice_bye_s: list[float] = []
        self.pending: list[asyncio.Task[None]] = []

    async def connected_sessions(self) -> int:
        sessions: list[dict[str, Any]] = (await self.daemon.status())["sessions"]
        return sum(1 for s in sessions if s["state"] == "connected")

    async def gone(self, started: float) -> None:
        """The device released the cycle's session: none is left in the connected state."""
        assert await polled(self.connected_sessions, lambda n: n == 0, 10), "session left behind"
        self.cleanup_s.append(time.monotonic() - started)

    async def cycle(self, number: int) -> None:
        kind = KINDS[number % len(KINDS)]
        self.counts[kind] += 1
        if kind == "clean":
            result = await watch(self.state, self.device, frames=FRAMES, via="lan")
            assert result.frames_decoded >= FRAMES, f"cycle {number}: {result}"
            assert not result.ended_by_device
            assert result.first_frame_s is not None
            self.first_frame_s.append(result.first_frame_s)
            await self.gone(time.monotonic())
        elif kind == "drop":
            identity = await asyncio.to_thread(self.state.identity)
            viewer = await ChannelViewer.open(self.port, identity, self.device.device_key)
            started = time.monotonic()
            await viewer.start_video()
            assert await viewer.wait_frames(FRAMES, 10), f"cycle {number}: no video"
            self.first_frame_s.append(viewer.media.frames[0][0] - started)
            dropped = time.monotonic()
            await viewer.drop()
            await self.gone(dropped)
            await viewer.release()
        elif kind == "killed":
            await self.killed_viewer(number)
        else:
            while len(self.pending) >= 3:  # stay well below max_viewers
                await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
                self.pending = [t for t in self.pending if not t.done()]
            task = asyncio.create_task(self.ice_failure(number, kind))
            self.pending.append(task)

    async def killed_viewer(self, number: int) -> None:
        proc = viewer_process(self.state.directory, "watch", "--via", "lan")
        try:
            started = time.monotonic()
            streaming = await polled(self.streaming_sessions, lambda n: n >= 1, 30)
            assert streaming, f"cycle {number}: the viewer process got no video"
            self.first_frame_s.append(time.monotonic() - started)
            killed = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            await self.gone(killed)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()

    async def streaming_sessions(self) -> int:
        sessions: list[dict[str, Any]] = (await self.daemon.status())["sessions"]
        return sum(1 for s in sessions if s["state"] == "connected" and s["fps"] > 0)

    async def ice_failure(self, number: int, kind: str) -> None:
        identity = await asyncio.to_thread(self.state.identity)
        viewer = await ChannelViewer.open(self.port, identity, self.device.device_key)
        try:
            await viewer.start_video(usable=False, keep_candidates=kind == "ice-closed")
            answered = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(viewer.ended.wait(), ICE_FAILURE_LIMIT_S)
            assert viewer.closed is not None, f"cycle {number}: the device kept a session that cannot connect"
            assert viewer.closed.by_peer, viewer.closed  # its bye
            assert viewer.closed.code is None, viewer.closed
            self.ice_bye_s.append(time.monotonic() - answered)
        finally:
            await viewer.release()

    async def drain(self) -> None:
        """Every ICE failure answered, no session or connection left on the device."""
        if self.pending:
            await asyncio.gather(*self.pending)
        self.pending = []
        assert await polled(self.sessions_left, lambda n: n == 0, 10), "sessions left behind"

    async def sessions_left(self) -> int:
        snapshot = await self.daemon.probe()
        return (
            int(snapshot["sessions"])
            + int(snapshot["signaling_connections"])
            + int(snapshot["hub_subscribers"])
        )


async def polled(read: Callable[[], Awaitable[int]], done: Callable[[int], bool], within: float) -> bool:
    """Polls another process (through `read`) until `done(value)`; False if it never is."""
    deadline = time.monotonic() + within
    while not done(await read()):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.timeout(time_limit(170, 5400))
async def test_viewer_churn_returns_memory_descriptors_and_tasks_to_baseline(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    figures: dict[str, Any] = {"cycles": CYCLES, "warm_up_cycles": WARM_UP}
    config = daemon_config(tmp_path, max_viewers=8, camera="linger_s = 0")
    daemon = DaemonProcess(tmp_path, bus_address, config, lan_limits=ONE_ADDRESS)
    await daemon.start(notify_socket)
    try:
        state = ViewerState(tmp_path / "viewer")
        device = await pair(state, await daemon.pairing_url(), "Soak viewer")
        churn = Churn(daemon, state, device, await daemon.lan_port())
        rss: list[tuple[int, int]] = []
        with measured(figures, "duration_s"):
            for number in range(WARM_UP):
                await churn.cycle(number)
            await churn.drain()
            baseline = await daemon.probe()
            base_rss, base_fds = rss_kib(daemon.pid), open_fds(daemon.pid)
            for number in range(WARM_UP, CYCLES):
                await churn.cycle(number)
                rss.append((number, rss_kib(daemon.pid)))
            await churn.drain()
            # aiortc's fire-and-forget tasks (ICE consent checks and the like) wind down on their own.
            final = await daemon.probe()
            deadline = time.monotonic() + 15
            while final["tasks"] > baseline["tasks"] and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                final = await daemon.probe()
            end_rss, end_fds = rss_kib(daemon.pid), open_fds(daemon.pid)
        code, stop_s = await daemon.stop()
    finally:
        daemon.kill()
    log = daemon.log()

    figures.update(
        kinds=churn.counts,
        first_frame_median_s=round(statistics.median(churn.first_frame_s), 3),
        first_frame_p95_s=round(percentile(churn.first_frame_s, 0.95), 3),
        cleanup_median_s=round(statistics.median(churn.cleanup_s), 3),
        cleanup_max_s=round(max(churn.cleanup_s), 3),
        ice_failure_bye_max_s=round(max(churn.ice_bye_s), 2),
        rss_baseline_mib=round(base_rss / 1024, 1),
        rss_final_mib=round(end_rss / 1024, 1),
        rss_peak_mib=round(max([end_rss, *(r for _, r in rss)]) / 1024, 1),
        rss_growth_mib=round((end_rss - base_rss) / 1024, 2),
        fds_baseline=base_fds,
        fds_final=end_fds,
        tasks_baseline=baseline["tasks"],
        tasks_final=final["tasks"],
        threads_baseline=baseline["threads"],
        threads_final=final["threads"],
        executor_threads_final=final["executor_threads"],
        stop_s=round(stop_s, 2),
    )
    report(capsys, "soak_viewer_churn", figures)
    assert code == 0
    assert not unhandled(log), unhandled(log)[:5]
    assert len(churn.ice_bye_s) == churn.counts["ice-no-candidates"] + churn.counts["ice-closed"]
    assert end_rss - base_rss <= RSS_GROWTH_LIMIT_KIB, figures
    assert end_fds <= base_fds, figures
    assert final["tasks"] <= baseline["tasks"], (baseline["task_names"], final["task_names"])
    assert final["threads"] <= baseline["threads"], figures
