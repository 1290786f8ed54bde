"""A video track that hands the hub's H.264 access units to aiortc without re-encoding them.

aiortc packetizes an `av.Packet` returned by `recv()` as-is (since 1.4) instead of encoding a
frame: at 1280x720@30 that is ~3 % of a core per viewer instead of ~70 %.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from petcamd.camera.source import EncodedFrame, FrameSubscription, SubscriptionClosedError

log = logging.getLogger(__name__)

RTP_VIDEO_CLOCK = 90_000
TIME_BASE = Fraction(1, RTP_VIDEO_CLOCK)
RATE_WINDOW_S = 2.0


@dataclass(frozen=True, slots=True)
class TrackCounters:
    frames_sent: int
    bytes_sent: int
    keyframes_sent: int
    frames_skipped: int
    fps: float
    bitrate_bps: float
    first_frame_monotonic: float | None


def to_pts(timestamp_us: int, origin_us: int) -> int:
    """90 kHz RTP ticks since the first frame, on the camera's clock (not the arrival time)."""
    return (timestamp_us - origin_us) * RTP_VIDEO_CLOCK // 1_000_000


class PassthroughVideoTrack(MediaStreamTrack):
    """One viewer's track, fed by one hub subscription which it owns and closes.

    Frames before the first keyframe are skipped (a decoder cannot use them); the hub starts every
    subscription at a keyframe it forces on subscribe, so normally there are none.
    """

    kind = "video"

    def __init__(self, subscription: FrameSubscription) -> None:
        super().__init__()
        self._subscription = subscription
        self._origin_us: int | None = None
        self._last_pts = -1
        self.feed_closed = False
        """The hub ended the subscription (as opposed to aiortc or the session stopping the track)."""
        self._frames = 0
        self._bytes = 0
        self._keyframes = 0
        self._skipped = 0
        self._first_frame_at: float | None = None
        self._recent: deque[tuple[float, int]] = deque()

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            try:
                frame = await self._subscription.get()
            except SubscriptionClosedError:
                self.feed_closed = True
                self.stop()
                raise MediaStreamError from None
            if self._origin_us is None and not frame.keyframe:
                if not self._skipped:
                    # Only when the feed did not start us at a keyframe (the hub does): a request
                    # per join would waste bits and eat into the hub's keyframe rate limit.
                    self._subscription.request_keyframe()
                self._skipped += 1
                continue
            return self._packet(frame)

    def _packet(self, frame: EncodedFrame) -> av.Packet[Any]:
        if self._origin_us is None:
            self._origin_us = frame.timestamp_us
        # RTP timestamps must not run backwards even if a restarted camera's clock does.
        pts = max(to_pts(frame.timestamp_us, self._origin_us), self._last_pts + 1)
        self._last_pts = pts
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.dts = pts
        packet.time_base = TIME_BASE
        self._count(frame)
        return packet

    def _count(self, frame: EncodedFrame) -> None:
        now = time.monotonic()
        if self._first_frame_at is None:
            self._first_frame_at = now
        self._frames += 1
        self._bytes += len(frame.data)
        self._keyframes += frame.keyframe
        self._recent.append((now, len(frame.data)))
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()

    def counters(self) -> TrackCounters:
        now = time.monotonic()
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        span = min(RATE_WINDOW_S, now - self._first_frame_at) if self._first_frame_at is not None else 0.0
        fps = len(self._recent) / span if span > 0 else 0.0
        bitrate = 8 * sum(size for _, size in self._recent) / span if span > 0 else 0.0
        return TrackCounters(
            frames_sent=self._frames,
            bytes_sent=self._bytes,
            keyframes_sent=self._keyframes,
            frames_skipped=self._skipped,
            fps=fps,
            bitrate_bps=bitrate,
            first_frame_monotonic=self._first_frame_at,
        )

    def request_keyframe(self) -> None:
        self._subscription.request_keyframe()

    def stop(self) -> None:
        self._subscription.close()
        super().stop()
