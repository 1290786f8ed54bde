"""SessionManager lifecycle with real aiortc viewers on loopback."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiortc
import pytest
from aiortc import RTCRtpSender

from petcamd.webrtc.codecs import NegotiationError
from petcamd.webrtc.session import CandidateType, SessionState
from petcamd.webrtc.sessions import (
    BitrateBounds,
    SessionEvent,
    SessionEventKind,
    SessionManager,
    SessionManagerClosedError,
    TooManyViewersError,
    WebRtcSettings,
)
from tests.test_webrtc_harness import Viewer, join, running_hub, wait_for

pytestmark = pytest.mark.usefixtures("loopback_ice")


async def connected_viewer(manager: SessionManager, peer_id: str) -> Viewer:
    viewer = Viewer()
    await join(manager, viewer, peer_id)
    await asyncio.wait_for(viewer.first_frame.wait(), 5)
    return viewer


async def close_all(*viewers: Viewer) -> None:
    for viewer in viewers:
        await viewer.close()


@pytest.mark.timeout(40)
async def test_max_viewers_and_a_reconnecting_viewer_replaces_its_own_session() -> None:
    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings(max_viewers=2))
        a = await connected_viewer(manager, "alice")
        b = await connected_viewer(manager, "bob")
        c = Viewer()
        with pytest.raises(TooManyViewersError, match="maximum of 2"):
            await manager.answer("carol", await c.offer())
        assert len(hub.subscribers) == 2  # the refused attempt allocated nothing

        # Alice reloads her page: her new session displaces her old one instead of being refused.
        a2 = await connected_viewer(manager, "alice")
        assert sorted(s.peer_id for s in manager.sessions) == ["alice", "bob"]
        assert await wait_for(lambda: a.dtls_state == "closed", 5)
        await manager.stop()
        await close_all(a, a2, b, c)


@pytest.mark.timeout(40)
async def test_close_peer_closes_only_that_peer_and_listeners_see_it() -> None:
    events: list[SessionEvent] = []
    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings(max_viewers=4))
        manager.add_listener(events.append)
        a1 = await connected_viewer(manager, "alice")
        a2 = await connected_viewer(manager, "alice")
        b = await connected_viewer(manager, "bob")
        assert await wait_for(lambda: len(events) == 3, 2)
        assert {e.kind for e in events} == {SessionEventKind.CONNECTED}

        assert await manager.close_peer("alice") == 2
        assert [s.peer_id for s in manager.sessions] == ["bob"]
        assert len(hub.subscribers) == 1
        closed = [e for e in events if e.kind is SessionEventKind.CLOSED]
        assert sorted(e.peer_id for e in closed) == ["alice", "alice"]
        assert all(e.reason == "peer revoked" for e in closed)
        # The revoked viewer's connection really ends (DTLS close reaches it).
        assert await wait_for(lambda: a1.dtls_state == "closed", 5)
        assert b.dtls_state == "connected"
        assert await manager.close_peer("nobody") == 0

        await manager.stop()
        await manager.stop()  # idempotent
        assert manager.sessions == ()
        assert hub.subscribers == []
        with pytest.raises(SessionManagerClosedError):
            await manager.answer("bob", await Viewer().offer())
        await close_all(a1, a2, b)


@pytest.mark.timeout(40)
async def test_a_viewer_that_stops_answering_is_closed_within_the_feedback_timeout() -> None:
    async with running_hub() as (hub, _):
        settings = WebRtcSettings(feedback_timeout_s=1.5, stats_interval_s=0.25)
        manager = SessionManager(hub, settings)
        viewer = await connected_viewer(manager, "alice")

        async def silence(data: bytes) -> None:
            return None

        # The viewer's ICE agent still answers consent checks, but no RTCP comes back any more.
        setattr(viewer.pc.getReceivers()[0].transport, "_send_rtp", silence)  # noqa: B010
        gone_at = time.monotonic()
        assert await wait_for(lambda: not manager.sessions, 5)
        elapsed = time.monotonic() - gone_at
        print(f"silent viewer released after {elapsed:.2f} s")
        assert elapsed < settings.feedback_timeout_s + 1.5
        assert hub.subscribers == []
        await viewer.close()


@pytest.mark.timeout(40)
async def test_hangup_and_never_connecting_both_release_the_session() -> None:
    reasons: list[str | None] = []
    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings(connect_timeout_s=1.0, stats_interval_s=0.25))
        manager.add_listener(
            lambda e: reasons.append(e.reason) if e.kind is SessionEventKind.CLOSED else None
        )

        viewer = await connected_viewer(manager, "alice")
        await viewer.close()  # a hang-up: DTLS close_notify
        assert await wait_for(lambda: not manager.sessions, 3)

        # An answer that never reaches the viewer: no connection, released after connect_timeout_s.
        ghost = Viewer()
        await manager.answer("bob", await ghost.offer())
        assert len(manager.sessions) == 1
        assert await wait_for(lambda: not manager.sessions, 3)
        assert hub.subscribers == []
        await ghost.close()
    print(reasons)
    assert "closed" in str(reasons[0])
    assert "not connected" in str(reasons[1])


@pytest.mark.timeout(30)
async def test_offers_that_cannot_carry_h264_are_refused_and_leave_nothing_behind() -> None:
    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings())
        vp8_only = Viewer()
        vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP8"]
        vp8_only.pc.getTransceivers()[0].setCodecPreferences(vp8)
        with pytest.raises(NegotiationError, match=r"H\.264"):
            await manager.answer("alice", await vp8_only.offer())

        audio_only = Viewer()
        await audio_only.pc.getTransceivers()[0].stop()
        audio_only.pc.addTransceiver("audio", direction="recvonly")
        with pytest.raises(NegotiationError):
            await manager.answer("alice", await audio_only.offer())

        with pytest.raises(NegotiationError):
            await manager.answer("alice", "v=0\r\nthis is not sdp\r\n")

        assert manager.sessions == ()
        assert hub.subscribers == []
        await close_all(vp8_only, audio_only)


@pytest.mark.timeout(30)
async def test_stats_report_rate_rtt_path_and_srtp_profile() -> None:
    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings(stats_interval_s=0.25))
        viewer = await connected_viewer(manager, "alice")
        assert await wait_for(lambda: manager.stats()[0].rtt_s is not None, 6)
        # A viewer's PLI is counted (and passed on to the hub as a keyframe request).
        ssrc = int(re.findall(r"a=ssrc:(\d+) ", viewer.pc.remoteDescription.sdp)[0])
        await viewer.pc.getReceivers()[0]._send_rtcp_pli(ssrc)
        assert await wait_for(lambda: manager.stats()[0].keyframe_requests == 1, 2)
        (stats,) = manager.stats()
        await manager.stop()
        await viewer.close()
    print(stats)
    assert stats.peer_id == "alice"
    assert stats.state is SessionState.CONNECTED
    assert 20 <= stats.fps <= 40
    assert stats.bitrate_bps > 0
    assert stats.bytes_sent > 0
    assert stats.rtt_s is not None
    assert 0 <= stats.rtt_s < 0.5
    assert stats.candidate_type is CandidateType.HOST
    assert stats.srtp_profile is not None
    version = tuple(int(p) for p in aiortc.__version__.split(".")[:2])
    assert stats.srtp_profile.startswith("SRTP_AEAD_AES_" if version >= (1, 7) else "SRTP_AES128_CM")


class Encoder:
    def __init__(self) -> None:
        self.bitrates: list[int] = []

    def set_bitrate(self, bps: int) -> None:
        self.bitrates.append(bps)


@pytest.mark.timeout(30)
async def test_remb_moves_the_encoder_bitrate_only_within_bounds() -> None:
    encoder = Encoder()
    bounds = BitrateBounds(min_bps=400_000, max_bps=1_000_000)
    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings(), bitrate_control=encoder, bitrate_bounds=bounds)
        viewer = await connected_viewer(manager, "alice")
        assert await wait_for(lambda: bool(encoder.bitrates), 6)
        remb: Any = manager.stats()[0].remb_bps
        await manager.stop()
        await viewer.close()
    print(f"REMB {remb} -> encoder {encoder.bitrates}")
    assert all(bounds.min_bps <= bps <= bounds.max_bps for bps in encoder.bitrates)
    assert encoder.bitrates[-1] == bounds.max_bps  # back to the cap once nobody is watching
