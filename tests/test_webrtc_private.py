"""The private aiortc/aioice API petcamd relies on, exercised on the installed version.

These run on every supported aiortc (1.4 bookworm, 1.11 trixie, newest PyPI): if an upgrade
moves `_handle_rtcp_packet`, the RTCP routing, the gathering internals or the introspected
attributes, this file fails instead of viewers silently waiting for periodic keyframes.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable
from typing import Any

import aioice
import aiortc
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtcpPsfbPacket

from petcamd.camera.hub import FrameHub
from petcamd.webrtc import aiortc_private
from petcamd.webrtc.codecs import h264_preferences
from petcamd.webrtc.track import PassthroughVideoTrack
from tests.fakes.sources import RecordingSource
from tests.test_webrtc_harness import JOIN_SPACING_S, Viewer, closed_udp_port, running_hub, wait_for

pytestmark = pytest.mark.usefixtures("loopback_ice")


def aiortc_at_least(major: int, minor: int) -> bool:
    parts = aiortc.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


class Sink:
    def __init__(self, track: PassthroughVideoTrack) -> None:
        self.track = track
        self.keyframes = 0
        self.estimates: list[int] = []
        self.feedback = 0

    def keyframe_requested(self) -> None:
        self.keyframes += 1
        self.track.request_keyframe()

    def bitrate_estimated(self, bps: int) -> None:
        self.estimates.append(bps)

    def feedback_received(self) -> None:
        self.feedback += 1


class Pair:
    """A bare device peer (no SessionManager) with the hook installed, and a real viewer."""

    def __init__(self, hub: FrameHub) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = PassthroughVideoTrack(hub.subscribe("private-api-test"))
        transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        transceiver.setCodecPreferences(h264_preferences())
        self.sender = transceiver.sender
        self.sink = Sink(self.track)
        aiortc_private.install_feedback_hook(self.sender, self.sink)
        self.viewer = Viewer()

    async def connect(self) -> None:
        offer = await self.viewer.offer()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.viewer.accept(self.pc.localDescription.sdp)
        await asyncio.wait_for(self.viewer.first_frame.wait(), 5)

    @property
    def viewer_receiver(self) -> Any:
        return self.viewer.pc.getReceivers()[0]

    async def close(self) -> None:
        await self.viewer.close()
        await self.pc.close()


def test_private_api_is_present() -> None:
    print(f"aiortc {aiortc.__version__}, aioice {aioice.__version__}")
    aiortc_private.check_supported()


def test_hook_refuses_what_it_cannot_hook() -> None:
    with pytest.raises(aiortc_private.PrivateApiError, match="aiortc"):
        aiortc_private.install_feedback_hook(object(), Sink.__new__(Sink))  # type: ignore[arg-type]


async def _expect_keyframe(pair: Pair, source: RecordingSource, send: Awaitable[None]) -> None:
    """`send` must reach the sink, the source (through the hub) and bring an IDR at once."""
    sink_before, source_before = pair.sink.keyframes, source.keyframe_requests
    sent_at = time.monotonic()
    await send

    def idr_since_sent() -> bool:
        arrivals = zip(source.frames, source.arrivals, strict=True)
        return any(frame.keyframe and at > sent_at for frame, at in arrivals)

    assert await wait_for(lambda: pair.sink.keyframes > sink_before, 2)
    assert await wait_for(lambda: source.keyframe_requests > source_before, 2)
    # ... long before the 10 s periodic one.
    assert await wait_for(idr_since_sent, 1.0)


@pytest.mark.timeout(30)
async def test_viewer_pli_and_fir_reach_the_source_through_the_hub() -> None:
    async with running_hub(keyframe_interval_s=10.0) as (hub, source):
        pair = Pair(hub)
        try:
            await pair.connect()
            await asyncio.sleep(JOIN_SPACING_S)  # past the hub's keyframe rate limit after the join
            ssrc = pair.sender._ssrc
            receiver = pair.viewer_receiver
            await _expect_keyframe(pair, source, receiver._send_rtcp_pli(ssrc))
            await asyncio.sleep(JOIN_SPACING_S)
            fir = RtcpPsfbPacket(
                fmt=aiortc_private.RTCP_PSFB_FIR,
                ssrc=1,
                media_ssrc=ssrc,
                fci=struct.pack("!IB3x", ssrc, 1),
            )
            await _expect_keyframe(pair, source, receiver._send_rtcp(fir))
        finally:
            await pair.close()


@pytest.mark.timeout(30)
async def test_remb_and_receiver_reports_reach_the_sink() -> None:
    async with running_hub() as (hub, _):
        pair = Pair(hub)
        try:
            await pair.connect()
            assert await wait_for(lambda: pair.sink.estimates and pair.sink.feedback, 6)
            print(f"REMB estimates: {pair.sink.estimates[:5]}")
            assert all(bps > 0 for bps in pair.sink.estimates)
        finally:
            await pair.close()


@pytest.mark.timeout(30)
async def test_selected_pair_and_srtp_profile() -> None:
    async with running_hub() as (hub, _):
        pair = Pair(hub)
        try:
            assert aiortc_private.selected_pair(pair.pc) is None
            await pair.connect()
            selected = aiortc_private.selected_pair(pair.pc)
            profile = aiortc_private.srtp_profile(pair.pc)
        finally:
            await pair.close()
    print(f"selected {selected}, SRTP {profile}")
    assert selected is not None
    assert selected.local_type == "host"
    assert selected.local_address[0] == "127.0.0.1"
    if aiortc_at_least(1, 7):
        assert profile is not None
        assert profile.startswith("SRTP_AEAD_AES_")
    else:
        assert profile == "SRTP_AES128_CM_SHA1_80"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["stun", "turn"])
async def test_gathering_guard_bounds_an_unreachable_server(scheme: str) -> None:
    port = closed_udp_port()
    server = RTCIceServer(urls=f"{scheme}:127.0.0.1:{port}", username="u", credential="p")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[server]))
    pc.addTransceiver("video", direction="sendonly")
    guard = aiortc_private.GatheringGuard(pc, 0.3)
    try:
        start = time.monotonic()
        await pc.setLocalDescription(await pc.createOffer())
        elapsed = time.monotonic() - start
    finally:
        await pc.close()
        guard.close()
    print(f"{scheme} unreachable: gathering took {elapsed * 1000:.0f} ms")
    assert "127.0.0.1" in pc.localDescription.sdp
    assert elapsed < 0.8  # aioice alone: 5 s for STUN, up to ~30 s (or failure) for TURN
    if scheme == "stun":
        assert elapsed >= 0.25  # the server was asked, and waited for up to the bound
