"""PassthroughVideoTrack: packets, clock and lifecycle (a scripted subscription, no network)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import pytest
from aiortc.mediastreams import MediaStreamError

from petcamd.camera.source import EncodedFrame, SubscriptionClosedError
from petcamd.webrtc.track import PassthroughVideoTrack, to_pts


class ScriptedSubscription:
    """Yields the given frames, then behaves like a subscription the hub has closed."""

    def __init__(self, frames: list[EncodedFrame]) -> None:
        self.frames = list(frames)
        self.keyframe_requests = 0
        self.closed = False

    async def get(self) -> EncodedFrame:
        await asyncio.sleep(0)
        if self.closed or not self.frames:
            raise SubscriptionClosedError("scripted")
        return self.frames.pop(0)

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1

    def close(self) -> None:
        self.closed = True


def frame(timestamp_us: int, keyframe: bool = False) -> EncodedFrame:
    return EncodedFrame(b"\x00\x00\x00\x01\x65" + timestamp_us.to_bytes(8, "big"), timestamp_us, keyframe)


def test_pts_is_90khz_on_the_camera_clock() -> None:
    assert to_pts(1_000_000, 1_000_000) == 0
    assert to_pts(1_033_333, 1_000_000) == 2999
    assert to_pts(3_000_000, 1_000_000) == 180_000


async def test_packets_start_at_a_keyframe_and_follow_the_capture_clock() -> None:
    frames = [
        frame(900_000),
        frame(1_000_000, keyframe=True),
        frame(1_033_333),
        frame(1_100_000),
        frame(1_090_000),  # a camera clock that steps back must not make RTP time run backwards
    ]
    subscription = ScriptedSubscription(frames)
    track = PassthroughVideoTrack(subscription)
    assert track.kind == "video"

    packets = [await track.recv() for _ in range(4)]
    assert all(isinstance(p, av.Packet) for p in packets)
    assert [bytes(p) for p in packets] == [f.data for f in frames[1:]]
    assert [p.pts for p in packets] == [0, 2999, 9000, 9001]
    assert all(p.time_base == Fraction(1, 90_000) for p in packets)
    assert subscription.keyframe_requests == 1  # asked once, on finding itself mid-GOP

    counters = track.counters()
    assert counters.frames_sent == 4
    assert counters.keyframes_sent == 1
    assert counters.frames_skipped == 1
    assert counters.bytes_sent == sum(len(f.data) for f in frames[1:])

    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.readyState == "ended"
    assert track.feed_closed
    assert subscription.closed


async def test_stopping_the_track_leaves_the_hub() -> None:
    subscription = ScriptedSubscription([frame(0, keyframe=True)])
    track = PassthroughVideoTrack(subscription)
    await track.recv()
    assert subscription.keyframe_requests == 0  # started at a keyframe: nothing to ask for
    track.stop()
    track.stop()
    assert subscription.closed
    assert not track.feed_closed
    with pytest.raises(MediaStreamError):
        await track.recv()
