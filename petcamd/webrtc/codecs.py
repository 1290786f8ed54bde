"""H.264-only codec negotiation.

aiortc must be told to use H.264 before the remote offer is applied: otherwise it may pick VP8
and pack our H.264 bytes as VP8 payloads without any error, and the viewer shows nothing.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCRtpSender

H264 = "video/h264"
RTX = "video/rtx"


class NegotiationError(Exception):
    """The viewer's offer cannot carry our stream (no H.264 video, malformed SDP, ...)."""


def _h264_rank(codec: Any) -> tuple[int, int]:
    params = codec.parameters or {}
    mode = 0 if str(params.get("packetization-mode", "0")) == "1" else 1
    # Constrained baseline first: it is what the Pi's encoders and our libx264 settings produce.
    profile = str(params.get("profile-level-id", "")).lower()
    return mode, 0 if profile.startswith("42e0") else 1


def h264_preferences() -> list[Any]:
    """aiortc's H.264 capabilities, best first, followed by RTX so retransmissions stay available."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    h264 = sorted((c for c in codecs if c.mimeType.lower() == H264), key=_h264_rank)
    if not h264:
        raise NegotiationError("this aiortc build has no H.264 support")
    rtx = [c for c in codecs if c.mimeType.lower() == RTX][:1]
    return h264 + rtx


def video_codecs(sdp: str) -> list[str]:
    """Codec names of the first video m-section, in the order listed (the first one is sent)."""
    names: dict[str, str] = {}
    order: list[str] = []
    in_video = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            if in_video:
                break
            in_video = line.startswith("m=video ")
            if in_video:
                order = line.split()[3:]
        elif in_video and line.startswith("a=rtpmap:"):
            pt, _, rest = line[len("a=rtpmap:") :].partition(" ")
            names[pt] = rest.split("/")[0].upper()
    return [names.get(pt, "?") for pt in order]


def require_h264(answer_sdp: str) -> None:
    """Refuse an answer that would send anything but H.264 in the video section."""
    codecs = video_codecs(answer_sdp)
    if not codecs or codecs[0] != "H264":
        raise NegotiationError(f"negotiated video codecs {codecs or 'none'}, not H.264")
