"""Resource limits under pressure: more viewers than `max_viewers`, and floods of pairing and
session handshakes from many addresses, while paired viewers watch.

tests/test_lan_signaling.py already covers one address flooding (refused after its burst) and
max_viewers = 1; here the refusal reaches petcam-view's command line, the flood comes from
hundreds of addresses (so per-address limits do not stop it), and the figures are measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.messages import ErrorCode, Frame, FrameType
from petcamd.protocol.pairing_url import decode_pairing_url
from petcamd.secure.channel import ViewerChannel
from petcamd.viewer.client import pair, watch
from petcamd.viewer.state import ViewerState
from tests.notify_socket import NotifySocket
from tests.processes import DaemonProcess, daemon_config, viewer_process
from tests.reliability import ChannelViewer, report, scaled, time_limit, unhandled
from tests.test_faults import longest_gap
from tests.test_fuzz_live import RawSocket
from tests.test_lan_signaling import lan_port, paired_viewer, running_daemon

pytestmark = pytest.mark.usefixtures("loopback_ice")

FLOOD_S = scaled(6, 60)
WORKERS = 8
PAIRING_WORKERS = 2


@pytest.mark.timeout(90)
async def test_one_viewer_too_many_gets_a_clear_refusal_and_the_others_keep_streaming(
    tmp_path: Path, bus_address: str
) -> None:
    async with running_daemon(tmp_path, bus_address, max_viewers=2) as daemon:
        port = lan_port(daemon)
        watching: list[ChannelViewer] = []
        for name in ("one", "two"):
            state, device = await paired_viewer(daemon, tmp_path / name, name)
            viewer = await ChannelViewer.streaming(
                port, await asyncio.to_thread(state.identity), device.device_key
            )
            watching.append(viewer)
        third_state, third = await paired_viewer(daemon, tmp_path / "three", "three")
        started = time.monotonic()
        proc = viewer_process(third_state.directory, "watch", "--frames", "5", "--via", "lan")
        _out, err = await asyncio.to_thread(proc.communicate, None, 60)
        ended = time.monotonic()
        assert proc.returncode == 6, err  # petcam-view's "camera busy"
        assert "too many viewers" in err.decode().lower() or "as many viewers" in err.decode().lower(), err
        for viewer in watching:
            assert viewer.closed is None
            assert longest_gap([t for t, _, _ in viewer.media.frames], started, ended) < 1.0
        await watching[0].bye()  # a place frees up: the third gets in
        result = await watch(third_state, third, frames=5, via="lan")
        assert result.frames_decoded >= 5
        await watching[1].bye()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(time_limit(120, 600))
async def test_pairing_and_handshake_floods_from_many_addresses_leave_paired_viewers_alone(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = DaemonProcess(tmp_path, bus_address, daemon_config(tmp_path))
    await daemon.start(notify_socket)
    figures: dict[str, Any] = {"flood_s": FLOOD_S, "workers": WORKERS}
    try:
        port = await daemon.lan_port()
        state = ViewerState(tmp_path / "viewer")
        device = await pair(state, await daemon.pairing_url(), "Viewer")
        viewer = await ChannelViewer.streaming(port, state.identity(), device.device_key)
        window = decode_pairing_url(await daemon.pairing_url())
        wrong_secret = dataclasses.replace(window, secret=os.urandom(16))
        replies: dict[str, int] = {}
        numbers = itertools.count()

        async def one(kind: str) -> None:
            n = next(numbers)
            sock = await RawSocket.open(port, f"127.{2 + n // 62500}.{n // 250 % 250 + 1}.{n % 250 + 1}")
            try:
                if not await sock.upgrade("/ws"):
                    replies["no upgrade"] = replies.get("no upgrade", 0) + 1
                    return
                key = X25519PrivateKey.generate()
                if kind == "pairing":
                    hello = ViewerChannel.for_pairing(key, wrong_secret, "Guess").start()
                else:
                    hello = ViewerChannel.for_session(key, device.device_key).start()
                sock.send_binary(hello)
                reply = await sock.message(5)
                if reply:
                    frame = Frame.decode(reply)
                    name = frame.error_code.name if frame.type is FrameType.ERROR else frame.type.name
                    if frame.type is FrameType.HANDSHAKE_REPLY:  # a pairing guess: prove nothing, leave
                        sock.send_binary(Frame.error(ErrorCode.PAIRING_FAILED).encode())
                    replies[f"{kind}: {name}"] = replies.get(f"{kind}: {name}", 0) + 1
                await sock.until_closed(1)
            finally:
                await sock.close()

        async def flood(kind: str, until: float) -> None:
            while time.monotonic() < until:
                with contextlib.suppress(ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                    await one(kind)

        cpu_before, started = cpu_seconds(daemon.pid), time.monotonic()
        until = started + FLOOD_S
        floods = [
            asyncio.create_task(flood("pairing" if i < PAIRING_WORKERS else "session", until))
            for i in range(WORKERS)
        ]
        reconnects: list[float] = []
        while time.monotonic() < until - 1:
            # A paired viewer comes and goes, as often as its own address's limit allows.
            await asyncio.sleep(2.5)
            begun = time.monotonic()
            result = await watch(state, device, frames=5, via="lan")
            assert result.frames_decoded >= 5
            reconnects.append(time.monotonic() - begun)
        await asyncio.gather(*floods)
        ended = time.monotonic()
        cpu = cpu_seconds(daemon.pid) - cpu_before
        status = await daemon.status()
        gap = longest_gap([t for t, _, _ in viewer.media.frames], started, ended)
        assert viewer.closed is None
        await viewer.bye()
        code, _ = await daemon.stop()
    finally:
        daemon.kill()
    log = daemon.log()
    handshakes = sum(v for k, v in replies.items() if k.startswith("session"))
    figures.update(
        replies=dict(sorted(replies.items())),
        handshakes_per_s=round(handshakes / (ended - started)),
        daemon_cpu_percent=round(100 * cpu / (ended - started)),
        pairing_window_open_after=status["pairing_active"],
        streaming_viewer_longest_gap_s=round(gap, 3),
        paired_reconnects=len(reconnects),
        paired_reconnect_max_s=round(max(reconnects), 2),
    )
    report(capsys, "limits_floods", figures)
    assert code == 0
    assert not unhandled(log), unhandled(log)[:5]
    # The window locks after 5 failed attempts; a failure counts when its attempt ends, so each of
    # the guessers running at once may have one more reply in flight.
    assert replies.get("pairing: HANDSHAKE_REPLY", 0) <= 5 + PAIRING_WORKERS - 1
    assert replies.get("pairing: PAIRING_CLOSED", 0) > 0
    assert not status["pairing_active"]
    assert replies.get("session: NOT_PAIRED", 0) > 0
    assert gap < 1.0, figures
    assert reconnects
