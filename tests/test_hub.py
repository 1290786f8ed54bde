"""Frame hub with the real synthetic source (PyAV libx264 at 320x240@30)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable

from petcamd.camera.health import HealthSettings
from petcamd.camera.hub import CameraState, FrameHub, HubSettings, HubSubscription
from petcamd.camera.source import EncodedFrame, StreamSettings, SubscriptionClosedError
from petcamd.camera.synthetic import SyntheticSource
from tests.fakes.h264util import assert_parameter_sets_before_idr, decode, sps_profile
from tests.fakes.sources import RecordingSource

FPS = 30
INTERVAL = 1 / FPS


def make_hub(
    *,
    keyframe_interval_s: float = 2.0,
    queue_frames: int = 10,
    linger_s: float = 0.0,
    always_on: bool = False,
    keyframe_min_interval_s: float = 0.5,
) -> tuple[FrameHub, RecordingSource]:
    settings = StreamSettings(
        width=320, height=240, fps=FPS, bitrate=300_000, keyframe_interval_s=keyframe_interval_s
    )
    source = RecordingSource(SyntheticSource(settings))
    hub = FrameHub(
        source,
        HubSettings(
            queue_frames=queue_frames,
            keyframe_min_interval_s=keyframe_min_interval_s,
            linger_s=linger_s,
            always_on=always_on,
        ),
        HealthSettings(stall_timeout_s=2.0, first_frame_timeout_s=5.0),
    )
    return hub, source


async def read_for(sub: HubSubscription, seconds: float) -> list[tuple[float, EncodedFrame]]:
    out: list[tuple[float, EncodedFrame]] = []
    end = time.monotonic() + seconds
    while (remaining := end - time.monotonic()) > 0:
        try:
            frame = await asyncio.wait_for(sub.get(), remaining)
        except TimeoutError:
            break
        out.append((time.monotonic(), frame))
    return out


def state(hub: FrameHub) -> CameraState:
    """Read afresh (a bare `hub.state` after an await would stay narrowed for mypy)."""
    return hub.state


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_frames_reach_several_subscribers_unchanged() -> None:
    hub, source = make_hub(queue_frames=60)
    await hub.start()
    subs = [hub.subscribe(f"viewer{i}") for i in range(3)]
    received = await asyncio.gather(*(read_for(sub, 1.5) for sub in subs))
    await hub.stop()

    produced = {id(frame): frame for frame in source.frames}
    for frames in received:
        assert len(frames) >= 25
        first = frames[0][1]
        assert first.keyframe
        for _, frame in frames:
            # The very objects the encoder produced: no copy, no transcoding in between.
            assert id(frame) in produced
            assert frame.data == produced[id(frame)].data
            assert_parameter_sets_before_idr(frame)
        timestamps = [frame.timestamp_us for _, frame in frames]
        assert timestamps == sorted(timestamps)
        pictures = decode(frame for _, frame in frames)
        assert len(pictures) == len(frames)
        assert (pictures[0].width, pictures[0].height) == (320, 240)
    # Constrained baseline: profile_idc 66 with constraint_set1_flag.
    profile, constraints = sps_profile(received[0][0][1].data)
    assert profile == 66
    assert constraints & 0x40
    assert hub.state is CameraState.IDLE


async def test_stalled_subscriber_does_not_delay_the_others() -> None:
    hub, source = make_hub(queue_frames=5)
    await hub.start()
    stuck = hub.subscribe("stuck")  # never reads
    fast = [hub.subscribe("fast1"), hub.subscribe("fast2")]
    results = await asyncio.gather(*(read_for(sub, 2.5) for sub in fast))

    assert stuck.overflows >= 1
    assert stuck.frames_dropped > 0
    arrival = dict(zip((id(f) for f in source.frames), source.arrivals, strict=True))
    for sub, frames in zip(fast, results, strict=True):
        assert sub.frames_dropped == 0
        assert len(frames) >= 2 * FPS
        # Time from the frame reaching the hub to this subscriber holding it.
        delays = [t - arrival[id(frame)] for t, frame in frames]
        assert max(delays) < 2 * INTERVAL, max(delays)
        # Gaps between frames at the subscriber track the gaps at the source.
        extra = [
            (t1 - t0) - (arrival[id(f1)] - arrival[id(f0)])
            for (t0, f0), (t1, f1) in itertools.pairwise(frames)
        ]
        assert max(extra) < 2 * INTERVAL, max(extra)
        sub_gaps = [t1 - t0 for (t0, _), (t1, _) in itertools.pairwise(frames)]
        assert statistics.median(sub_gaps) < 1.5 * INTERVAL

    # The stuck viewer resumes at a keyframe once it reads again.
    frame = await asyncio.wait_for(stuck.get(), 2.0)
    assert frame.keyframe
    await hub.stop()


async def test_new_subscriber_gets_a_keyframe_within_100ms() -> None:
    hub, _ = make_hub(keyframe_interval_s=10.0, always_on=True)
    await hub.start()
    first = hub.subscribe("first")
    await asyncio.wait_for(first.get(), 5.0)
    latencies = []
    for i in range(4):
        await asyncio.sleep(0.6)  # mid-GOP, and clear of the keyframe rate limit
        joined = time.monotonic()
        sub = hub.subscribe(f"late{i}")
        frame = await asyncio.wait_for(sub.get(), 2.0)
        latencies.append(time.monotonic() - joined)
        assert frame.keyframe
        assert_parameter_sets_before_idr(frame)
        sub.close()
    await hub.stop()
    assert max(latencies) < 0.100, latencies


async def test_keyframe_storm_is_rate_limited() -> None:
    hub, source = make_hub(keyframe_interval_s=30.0, queue_frames=120)
    await hub.start()
    sub = hub.subscribe("viewer")
    await asyncio.wait_for(sub.get(), 5.0)
    requests_before = source.keyframe_requests
    storm_s = 2.0

    async def storm() -> int:
        sent = 0
        end = time.monotonic() + storm_s
        while time.monotonic() < end:
            sub.request_keyframe()  # e.g. a viewer flooding PLIs
            sent += 1
            await asyncio.sleep(0.002)
        return sent

    sent, frames = await asyncio.gather(storm(), read_for(sub, storm_s + 0.2))
    await hub.stop()
    passed_on = source.keyframe_requests - requests_before
    assert sent > 200
    # At most one per 500 ms (plus the one at the edge of the window) ...
    assert 2 <= passed_on <= storm_s / 0.5 + 1, passed_on
    # ... and the stream carries no more keyframes than that.
    keyframes = sum(1 for _, frame in frames if frame.keyframe)
    assert 2 <= keyframes <= passed_on + 1, keyframes


async def test_camera_runs_only_while_watched_plus_linger() -> None:
    hub, source = make_hub(linger_s=0.4)
    await hub.start()
    await asyncio.sleep(0.2)
    assert hub.state is CameraState.IDLE
    assert source.starts == 0

    sub = hub.subscribe("viewer")
    await asyncio.wait_for(sub.get(), 5.0)
    assert state(hub) is CameraState.STREAMING
    sub.close()
    await asyncio.sleep(0.2)
    assert source.running  # lingering

    again = hub.subscribe("reload")  # back within the linger: no restart
    await asyncio.wait_for(again.get(), 2.0)
    assert source.starts == 1
    again.close()
    await wait_until(lambda: hub.state is CameraState.IDLE, 3.0)
    assert source.stops == source.starts == 1
    assert hub.pipeline_ok()
    await hub.stop()
    await hub.stop()  # idempotent


async def test_always_on_keeps_the_camera_running() -> None:
    hub, source = make_hub(always_on=True)
    await hub.start()
    await wait_until(lambda: hub.state is CameraState.STREAMING)
    sub = hub.subscribe("viewer")
    await asyncio.wait_for(sub.get(), 2.0)
    sub.close()
    await asyncio.sleep(0.3)
    assert state(hub) is CameraState.STREAMING
    assert source.running
    await hub.stop()
    assert not source.running


async def test_closed_subscriptions_raise() -> None:
    hub, _ = make_hub()
    await hub.start()
    sub = hub.subscribe("viewer")
    await asyncio.wait_for(sub.get(), 5.0)
    sub.close()
    sub.close()
    try:
        await sub.get()
    except SubscriptionClosedError:
        pass
    else:
        raise AssertionError("get() on a closed subscription must raise")

    other = hub.subscribe("other")
    waiting = asyncio.ensure_future(other.get())
    await asyncio.sleep(0)
    await hub.stop()
    await wait_until(waiting.done, 2.0)
    assert isinstance(waiting.exception(), SubscriptionClosedError)
    late = hub.subscribe("after-stop")
    try:
        await late.get()
    except SubscriptionClosedError:
        pass
    else:
        raise AssertionError("subscribing to a stopped hub yields a closed subscription")


async def test_state_listeners_see_the_lifecycle() -> None:
    hub, _ = make_hub()
    seen: list[CameraState] = []
    remove = hub.add_state_listener(lambda status: seen.append(status.state))
    await hub.start()
    sub = hub.subscribe("viewer")
    await asyncio.wait_for(sub.get(), 5.0)
    sub.close()
    await wait_until(lambda: hub.state is CameraState.IDLE)
    remove()
    await hub.stop()
    assert seen[:3] == [CameraState.STARTING, CameraState.STREAMING, CameraState.IDLE]
    assert hub.frames_total > 0
    assert hub.last_frame_at is not None
    assert "camera idle" in hub.status.summary()
