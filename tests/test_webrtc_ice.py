"""ICE policy: no hidden STUN server, bounded waits on unreachable servers, no mDNS stalls."""

from __future__ import annotations

import asyncio
import re
import statistics
import time

import pytest

from petcamd.webrtc.ice import IceServer, rtc_configuration, strip_mdns_candidates
from petcamd.webrtc.sessions import SessionManager, WebRtcSettings
from tests.test_webrtc_harness import JOIN_SPACING_S, Viewer, closed_udp_port, running_hub

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=candidate:1 1 udp 2122260223 3f1f8a47-5b6c-4a8e-9d1e-2b1c0a9f7e31.local 54321 typ host\r\n"
    "a=candidate:2 1 udp 2122194687 127.0.0.1 50000 typ host\r\n"
    "a=end-of-candidates\r\n"
)


def test_configuration_always_names_its_ice_servers() -> None:
    """`RTCConfiguration()` alone would use a public STUN server: the list is always explicit."""
    stun = IceServer("stun:stun.example.org:3478")
    turn = IceServer("turn:turn.example.org:3478?transport=udp", username="u", credential="p")
    local = rtc_configuration((stun, turn), local_network_mode=True)
    assert local.iceServers == []
    internet = rtc_configuration((stun, turn), local_network_mode=False)
    assert internet.iceServers is not None
    assert [s.urls for s in internet.iceServers] == [stun.url, turn.url]
    assert internet.iceServers[1].username == "u"
    assert rtc_configuration((), local_network_mode=False).iceServers == []


def test_ice_server_validation() -> None:
    with pytest.raises(ValueError, match="STUN/TURN URL"):
        IceServer("http://example.org")
    with pytest.raises(ValueError, match="username"):
        IceServer("turn:turn.example.org")


def test_mdns_candidates_and_end_of_candidates_are_dropped_together() -> None:
    clean = strip_mdns_candidates(OFFER)
    assert clean.mdns_candidates == ("3f1f8a47-5b6c-4a8e-9d1e-2b1c0a9f7e31.local",)
    assert ".local" not in clean.sdp
    assert "a=end-of-candidates" not in clean.sdp
    assert "127.0.0.1 50000 typ host" in clean.sdp
    no_mdns = OFFER.replace("3f1f8a47-5b6c-4a8e-9d1e-2b1c0a9f7e31.local 54321", "127.0.0.2 54321")
    assert strip_mdns_candidates(no_mdns).sdp == no_mdns


async def _setup_times(manager: SessionManager, runs: int, rewrite=lambda sdp: sdp) -> list[float]:
    """Offer -> first decoded frame, `runs` times."""
    times = []
    for i in range(runs):
        await asyncio.sleep(JOIN_SPACING_S)
        viewer = Viewer()
        try:
            start = time.monotonic()
            offer = rewrite(await viewer.offer())
            await viewer.accept(await manager.answer(f"viewer-{i}", offer))
            await asyncio.wait_for(viewer.first_frame.wait(), 5)
            assert viewer.first_frame_at is not None
            times.append(viewer.first_frame_at - start)
        finally:
            await viewer.close()
            await manager.close_all()
    return times


@pytest.mark.usefixtures("loopback_ice")
@pytest.mark.timeout(60)
async def test_unreachable_servers_cost_at_most_the_gather_timeout() -> None:
    closed = closed_udp_port()
    stun = IceServer(f"stun:127.0.0.1:{closed}")
    turn = IceServer(f"turn:127.0.0.1:{closed}", username="u", credential="p")
    async with running_hub() as (hub, _):
        internet = SessionManager(
            hub, WebRtcSettings(local_network_mode=False, ice_servers=(stun,), gather_timeout_s=0.5)
        )
        stun_times = await _setup_times(internet, 3)
        both = SessionManager(
            hub,
            WebRtcSettings(local_network_mode=False, ice_servers=(stun, turn), gather_timeout_s=0.3),
        )
        both_times = await _setup_times(both, 3)
        # Local Network Mode never asks the configured servers at all.
        local = SessionManager(
            hub, WebRtcSettings(local_network_mode=True, ice_servers=(stun, turn), gather_timeout_s=5)
        )
        local_times = await _setup_times(local, 3)
    print(
        f"unreachable STUN: setup median {statistics.median(stun_times) * 1000:.0f} ms; "
        f"STUN+TURN: {statistics.median(both_times) * 1000:.0f} ms; "
        f"local mode with the same servers configured: {statistics.median(local_times) * 1000:.0f} ms"
    )
    assert statistics.median(stun_times) < 1.5
    assert statistics.median(both_times) < 1.5
    assert statistics.median(local_times) < 0.3


@pytest.mark.usefixtures("loopback_ice")
@pytest.mark.timeout(60)
async def test_browser_mdns_candidates_do_not_delay_setup() -> None:
    mdns_line = "a=candidate:9 1 udp 2122260223 6c1b0f5e-2d1a-4c7e-8f3b-1a2b3c4d5e6f.local 50123 typ host"

    def add_mdns(sdp: str) -> str:
        return sdp.replace("a=end-of-candidates", mdns_line + "\r\na=end-of-candidates", 1)

    def only_mdns(sdp: str) -> str:
        # Like a browser hiding its addresses: the device must learn the viewer's address from
        # the viewer's connectivity checks (peer-reflexive candidate).
        sdp = re.sub(r"a=candidate:[^\r\n]*\r\n", "", sdp)
        return add_mdns(sdp)

    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings())
        mixed = await _setup_times(manager, 3, add_mdns)
        hidden = await _setup_times(manager, 3, only_mdns)
    print(
        f"setup with an extra .local candidate: median {statistics.median(mixed) * 1000:.0f} ms; "
        f"with only .local candidates: {statistics.median(hidden) * 1000:.0f} ms"
    )
    assert statistics.median(mixed) < 0.3
    assert statistics.median(hidden) < 0.5
