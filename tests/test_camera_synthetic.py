"""SyntheticSource and the shared PyAV encoder: real libx264, real time."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

from petcamd.camera.encoder import H264Encoder
from petcamd.camera.pattern import TestPattern
from petcamd.camera.source import EncodedFrame, EncoderKind, StreamSettings
from petcamd.camera.synthetic import SyntheticSource
from tests.fakes.h264util import assert_parameter_sets_before_idr, decode, sps_profile

SETTINGS = StreamSettings(width=320, height=240, fps=30, bitrate=300_000, keyframe_interval_s=1.0)


async def wait_for_frames(frames: list[EncodedFrame], count: int) -> None:
    end = time.monotonic() + 5
    while len(frames) < count:
        assert time.monotonic() < end
        await asyncio.sleep(0.01)


async def test_paced_in_real_time_without_drift() -> None:
    source = SyntheticSource(SETTINGS)
    frames: list[EncodedFrame] = []
    threads: set[int] = set()

    def sink(frame: EncodedFrame) -> None:
        threads.add(threading.get_ident())
        frames.append(frame)

    await source.start(sink)
    started = time.monotonic()
    await asyncio.sleep(2.0)
    await source.stop()
    elapsed = time.monotonic() - started
    count = len(frames)
    await asyncio.sleep(0.1)
    assert len(frames) == count  # nothing after stop()

    assert threads == {threading.get_ident()}  # delivered on the loop thread
    assert abs(count - elapsed * 30) <= 4, (count, elapsed)
    stamps = [f.timestamp_us for f in frames]
    assert stamps == sorted(stamps)
    span = (stamps[-1] - stamps[0]) / 1e6
    assert abs(span - (count - 1) / 30) < 0.1, span  # a fixed grid, not sleep() after each frame
    assert abs(stamps[-1] - time.monotonic_ns() // 1000) < 1_000_000  # monotonic µs
    keyframes = [i for i, f in enumerate(frames) if f.keyframe]
    assert keyframes[0] == 0
    assert [b - a for a, b in itertools.pairwise(keyframes)] == [30] * (len(keyframes) - 1)
    for frame in frames:
        assert_parameter_sets_before_idr(frame)
    assert sps_profile(frames[0].data)[0] == 66
    assert len(decode(frames)) == count
    assert source.encoder_kind is EncoderKind.SOFTWARE
    assert "320x240@30" in source.description


async def test_restartable_and_keyframe_on_request() -> None:
    source = SyntheticSource(SETTINGS)
    for _ in range(2):
        frames: list[EncodedFrame] = []
        await source.start(frames.append)
        await source.start(frames.append)  # already running: no second thread
        await wait_for_frames(frames, 5)
        source.request_keyframe()
        requested_at = len(frames)
        await wait_for_frames(frames, requested_at + 3)
        await source.stop()
        await source.stop()
        assert frames[0].keyframe
        assert any(f.keyframe for f in frames[requested_at : requested_at + 3])
    source.request_keyframe()  # stopped: harmless


def test_encoder_forces_idr_and_keeps_timestamps() -> None:
    settings = StreamSettings(width=160, height=120, fps=30, bitrate=200_000, keyframe_interval_s=10.0)
    encoder = H264Encoder(settings)
    pattern = TestPattern(160, 120)
    out: list[EncodedFrame] = []
    for index in range(12):
        if index == 7:
            encoder.request_keyframe()
        out.extend(encoder.encode(pattern.render(index), 1_000 + index))
    assert [f.keyframe for f in out] == [i in (0, 7) for i in range(12)]
    assert [f.timestamp_us for f in out] == [1_000 + i for i in range(12)]
    # A decoder-typed picture (MJPEG gives I) of another size is rescaled and not forced.
    big = TestPattern(320, 240).render(0).reformat(format="yuvj422p")
    big_frames = encoder.encode(big, 5_000)
    assert [f.keyframe for f in big_frames] == [False]
    assert encoder.flush() == []
    pictures = decode([*out, *big_frames])
    assert [(p.width, p.height) for p in pictures] == [(160, 120)] * 13


def test_pattern_moves_and_shows_a_clock() -> None:
    pattern = TestPattern(320, 240)
    a = bytes(pattern.render(0, wall_time=0.0).planes[0])
    b = bytes(pattern.render(5, wall_time=0.0).planes[0])
    c = bytes(pattern.render(0, wall_time=3723.5).planes[0])
    assert a != b  # moving
    assert a != c  # the clock changed
    # The clock only touches the box at the top-left.
    assert a[20 * 320 :] == c[20 * 320 :]
