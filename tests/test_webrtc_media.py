"""Media over two real aiortc peers on loopback: passthrough bytes, decode ratio, join latency."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from petcamd.webrtc.sessions import SessionManager, WebRtcSettings
from tests.test_webrtc_harness import (
    JOIN_SPACING_S,
    DecoderTap,
    TappedFeed,
    Viewer,
    join,
    nal_units,
    running_hub,
)

pytestmark = pytest.mark.usefixtures("loopback_ice")


async def drained(viewer: Viewer, quiet_s: float = 0.5, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    count = -1
    while count != len(viewer.frames) and time.monotonic() < deadline:
        count = len(viewer.frames)
        await asyncio.sleep(quiet_s)


@pytest.mark.timeout(60)
async def test_720p30_passthrough_is_decoded_and_byte_identical() -> None:
    tap = DecoderTap()
    async with running_hub(width=1280, height=720, fps=30, bitrate=2_500_000) as (hub, _):
        feed = TappedFeed(hub)
        manager = SessionManager(feed, WebRtcSettings())
        viewer = Viewer()
        with tap.installed():
            await join(manager, viewer)
            assert await asyncio.wait_for(viewer.first_frame.wait(), 5) is True
            await asyncio.sleep(4.0)
            await manager.close_all()
            # Let the viewer's decoder drain (it may lag on a loaded machine).
            await drained(viewer)
        await viewer.close()

    (sent,) = feed.delivered.values()
    decoded = len(viewer.frames)
    ratio = decoded / len(sent)
    print(f"720p30: {len(sent)} frames sent, {decoded} decoded ({ratio:.1%})")
    assert len(sent) >= 100
    assert ratio >= 0.95
    assert {(w, h) for _, w, h in viewer.frames} == {(1280, 720)}

    # The viewer's decoder input is the encoder's output, NAL unit for NAL unit.
    sent_units = [nal_units(frame.data) for frame in sent]
    received_units = [nal_units(unit) for unit in tap.units]
    assert received_units, "decoder tap saw nothing"
    matched = sum(1 for units in received_units if units in set(sent_units))
    print(f"byte-identical access units: {matched}/{len(received_units)} received")
    assert matched == len(received_units)
    assert received_units == sent_units[: len(received_units)]
    assert len(received_units) >= 0.95 * len(sent_units)


async def _join_once(manager: SessionManager, peer_id: str) -> tuple[float, float]:
    """(offer -> first decoded frame, connected -> first decoded frame) in seconds."""
    viewer = Viewer()
    start = time.monotonic()
    try:
        await join(manager, viewer, peer_id)
        await asyncio.wait_for(viewer.first_frame.wait(), 5)
        first = viewer.first_frame_at
        assert first is not None
        assert viewer.connected_at is not None
        return first - start, first - viewer.connected_at
    finally:
        await viewer.close()
        await manager.close_all()


@pytest.mark.timeout(90)
async def test_mid_stream_join_and_local_mode_setup_latency() -> None:
    """20 joins into a running 720p30 stream with an IDR every 2 s (stock aiortc: ~0.84 s median)."""
    async with running_hub(width=1280, height=720, fps=30, bitrate=2_500_000, keyframe_interval_s=2.0) as (
        hub,
        source,
    ):
        manager = SessionManager(hub, WebRtcSettings(local_network_mode=True))
        setups: list[float] = []
        joins: list[float] = []
        for i in range(20):
            # Spread joins over the GOP so they do not all land right after a periodic IDR.
            await asyncio.sleep(JOIN_SPACING_S + (i % 7) * 0.07)
            setup, joined = await _join_once(manager, f"viewer-{i}")
            setups.append(setup)
            joins.append(joined)
        await manager.stop()
    setup_median = statistics.median(setups)
    join_median = statistics.median(joins)
    print(
        f"offer->first frame median {setup_median * 1000:.0f} ms (max {max(setups) * 1000:.0f}); "
        f"connected->first frame median {join_median * 1000:.0f} ms (max {max(joins) * 1000:.0f}); "
        f"keyframes requested {source.keyframe_requests}"
    )
    assert join_median <= 0.150
    assert setup_median <= 0.300
