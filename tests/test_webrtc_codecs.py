"""H.264-only negotiation: a browser-like offer listing VP8 first still gets H.264 (+ RTX)."""

from __future__ import annotations

import re

import pytest

from petcamd.webrtc.codecs import NegotiationError, h264_preferences, require_h264, video_codecs
from petcamd.webrtc.sessions import SessionManager, WebRtcSettings
from tests.test_webrtc_harness import Viewer, running_hub


def test_preferences_are_h264_best_first_then_rtx() -> None:
    prefs = h264_preferences()
    kinds = [c.mimeType.lower() for c in prefs]
    assert kinds[-1] == "video/rtx"
    assert set(kinds[:-1]) == {"video/h264"}
    first = prefs[0].parameters
    assert str(first["packetization-mode"]) == "1"
    assert str(first["profile-level-id"]).lower().startswith("42e0")


def test_answer_codec_check() -> None:
    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\na=rtpmap:97 VP8/90000\r\na=rtpmap:98 H264/90000\r\n"
    )
    assert video_codecs(sdp) == ["VP8", "H264"]
    with pytest.raises(NegotiationError, match="VP8"):
        require_h264(sdp)
    require_h264(sdp.replace("97 98", "98 97"))


@pytest.mark.usefixtures("loopback_ice")
async def test_browser_like_offer_is_answered_with_h264_and_rtx() -> None:
    viewer = Viewer()
    offer = await viewer.offer()
    assert video_codecs(offer)[0] == "VP8"  # aiortc, like browsers, lists VP8 first
    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings())
        answer = await manager.answer("alice", offer)
        await manager.stop()
    await viewer.close()
    codecs = video_codecs(answer)
    assert codecs[0] == "H264"
    assert set(codecs) == {"H264", "RTX"}
    h264_pt = re.search(r"a=rtpmap:(\d+) H264/90000", answer)
    assert h264_pt is not None
    assert re.search(rf"a=fmtp:\d+ apt={h264_pt.group(1)}\b", answer), "RTX for H.264 kept"
