"""PiCameraSource against the fake picamera2 (tests/fakes/picamera2_fake.py), real H.264 inside."""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable

import pytest

from petcamd.camera.health import HealthSettings
from petcamd.camera.hub import CameraState, FrameHub, HubSettings
from petcamd.camera.picamera import PiCameraSource, picamera2_cameras
from petcamd.camera.source import (
    CameraMissingError,
    EncodedFrame,
    EncoderKind,
    StreamSettings,
)
from petcamd.camera.v4l2_controls import V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, VIDIOC_S_CTRL
from tests.fakes import picamera2_fake
from tests.fakes.h264util import assert_parameter_sets_before_idr, decode
from tests.fakes.picamera2_fake import FakeCameraWorld

SETTINGS = StreamSettings(width=320, height=240, fps=30, bitrate=300_000, keyframe_interval_s=10.0)
FAST_HEALTH = HealthSettings(
    stall_timeout_s=0.5,
    first_frame_timeout_s=2.0,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    max_restarts=2,
    missing_reprobe_s=0.3,
    healthy_after_s=1.0,
)


def make(
    world: FakeCameraWorld,
    monkeypatch: pytest.MonkeyPatch,
    *,
    always_on: bool = False,
    legacy_ioctl: bool = True,
) -> tuple[FrameHub, PiCameraSource]:
    picamera2_fake.install(monkeypatch, world)
    source = PiCameraSource(SETTINGS, ioctl=world.ioctl) if legacy_ioctl else PiCameraSource(SETTINGS)
    hub = FrameHub(source, HubSettings(queue_frames=60, linger_s=0.0, always_on=always_on), FAST_HEALTH)
    return hub, source


def state(hub: FrameHub) -> CameraState:
    return hub.state


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def join_latency(hub: FrameHub, name: str) -> tuple[float, EncodedFrame]:
    joined = time.monotonic()
    sub = hub.subscribe(name)
    frame = await asyncio.wait_for(sub.get(), 2.0)
    latency = time.monotonic() - joined
    sub.close()
    return latency, frame


async def test_frames_reach_viewers_byte_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    world = FakeCameraWorld()
    hub, source = make(world, monkeypatch)
    await hub.start()
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    hub.add_state_listener(lambda _: threads.add(threading.get_ident()))
    subs = [hub.subscribe("a"), hub.subscribe("b")]
    received: list[list[EncodedFrame]] = [[], []]
    for _ in range(20):
        for sub, out in zip(subs, received, strict=True):
            out.append(await asyncio.wait_for(sub.get(), 3.0))
    await hub.stop()

    assert source.encoder_kind is EncoderKind.HARDWARE
    assert source.description == "picamera2 imx708 (hardware H.264)"
    assert threads == {loop_thread}
    produced = list(world.produced)
    for frames in received:
        assert frames[0].keyframe
        start = produced.index(frames[0].data)
        # What the encoder produced, in order, byte for byte: no transcoding anywhere.
        assert [f.data for f in frames] == produced[start : start + len(frames)]
        assert len(decode(frames)) == len(frames)
        stamps = [f.timestamp_us for f in frames]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert min(gaps) > 0
        assert 25_000 < statistics.median(gaps) < 45_000, gaps
    # Camera clock, mapped onto monotonic microseconds.
    assert abs(received[0][-1].timestamp_us - time.monotonic_ns() // 1000) < 2_000_000
    config = world.opened[0].camera_config
    assert config is not None
    assert config["main"] == {"size": (320, 240), "format": "YUV420"}
    assert world.opened[0].encoder.profile == "constrained baseline"
    assert world.opened[0].encoder.iperiod == 300
    assert world.opened[0].encoder.repeat is True


@pytest.mark.parametrize("force_key_frame_api", [True, False], ids=["0.3.32+", "legacy-v4l2-control"])
async def test_new_viewer_forces_a_keyframe(
    monkeypatch: pytest.MonkeyPatch, force_key_frame_api: bool
) -> None:
    world = FakeCameraWorld(force_key_frame_api=force_key_frame_api)
    hub, _ = make(world, monkeypatch, always_on=True)
    await hub.start()
    await wait_until(lambda: hub.state is CameraState.STREAMING)
    latencies = []
    for i in range(3):
        await asyncio.sleep(0.6)
        latency, frame = await join_latency(hub, f"viewer{i}")
        assert frame.keyframe
        assert_parameter_sets_before_idr(frame)
        latencies.append(latency)
    await hub.stop()
    assert max(latencies) < 0.150, latencies
    encoder = world.opened[0].encoder
    if force_key_frame_api:
        assert encoder._key_frames_requested >= 3
        assert world.ioctl_calls == []
    else:
        assert not hasattr(encoder, "force_key_frame")
        assert len(world.ioctl_calls) >= 3
        assert {(request, arg[:4]) for _, request, arg in world.ioctl_calls} == {
            (VIDIOC_S_CTRL, V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME.to_bytes(4, sys.byteorder))
        }


async def test_pi5_reports_software_encoding_and_forces_keyframes(monkeypatch: pytest.MonkeyPatch) -> None:
    world = FakeCameraWorld(pi5=True)
    hub, source = make(world, monkeypatch, always_on=True)
    await hub.start()
    await wait_until(lambda: hub.state is CameraState.STREAMING)
    assert source.encoder_kind is EncoderKind.SOFTWARE
    assert source.description == "picamera2 imx708 (software H.264)"
    await asyncio.sleep(0.6)
    latency, frame = await join_latency(hub, "viewer")
    await hub.stop()
    assert frame.keyframe
    assert latency < 0.150
    assert world.opened[0].encoder.profile == "baseline"


async def test_old_pi5_picamera2_cannot_force_but_keeps_streaming(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    world = FakeCameraWorld(pi5=True, force_key_frame_api=False)
    hub, _ = make(world, monkeypatch, always_on=True)
    await hub.start()
    await wait_until(lambda: hub.state is CameraState.STREAMING)
    with caplog.at_level(logging.WARNING, logger="petcamd.camera.picamera"):
        hub.request_keyframe()
        await asyncio.sleep(0.6)
        hub.request_keyframe()
    assert sum("cannot force keyframes" in r.getMessage() for r in caplog.records) == 1
    assert hub.state is CameraState.STREAMING
    await hub.stop()


async def test_missing_camera_is_a_state_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    world = FakeCameraWorld(cameras=[])
    hub, _ = make(world, monkeypatch, always_on=True)
    await hub.start()
    await wait_until(lambda: hub.state is CameraState.MISSING)
    assert "no camera 0" in hub.status.detail
    assert hub.pipeline_ok()  # restarting the daemon would not conjure a camera
    sub = hub.subscribe("viewer")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.get(), 0.2)

    world.cameras.append(dict(picamera2_fake.IMX708))  # plugged in: the periodic re-probe finds it
    frame = await asyncio.wait_for(sub.get(), 3.0)
    assert frame.keyframe
    assert state(hub) is CameraState.STREAMING
    await hub.stop()


async def test_picamera2_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    assert picamera2_cameras() == []
    source = PiCameraSource(SETTINGS)
    with pytest.raises(CameraMissingError, match="python3-picamera2"):
        await source.start(lambda _: None)
    await source.stop()


async def test_stalled_camera_is_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    world = FakeCameraWorld(stall_after_frames=15, stalling_opens=1)
    hub, _ = make(world, monkeypatch)
    states: list[CameraState] = []
    hub.add_state_listener(lambda status: states.append(status.state))
    await hub.start()
    sub = hub.subscribe("viewer")
    frames: list[EncodedFrame] = []
    while len(frames) < 40:
        frames.append(await asyncio.wait_for(sub.get(), 3.0))
        assert hub.pipeline_ok()
    await hub.stop()

    distinct = [s for i, s in enumerate(states) if i == 0 or states[i - 1] is not s]
    assert distinct[:5] == [
        CameraState.STARTING,
        CameraState.STREAMING,
        CameraState.STALLED,
        CameraState.RESTARTING,
        CameraState.STREAMING,
    ]
    assert len(world.opened) == 2
    assert not world.opened[0].is_open
    assert hub.supervisor.restarts_total == 1
    # The viewer resumes at an IDR from the new encoder and the stream still decodes.
    resumed = frames[15]
    assert resumed.keyframe
    assert len(decode(frames)) == len(frames)


async def test_unrecoverable_camera_stops_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    world = FakeCameraWorld(stall_after_frames=5, stalling_opens=1000)
    hub, _ = make(world, monkeypatch, always_on=True)
    await hub.start()
    await wait_until(lambda: hub.state is CameraState.FAILED, 10.0)
    assert not hub.pipeline_ok()
    assert "no frame for" in hub.status.detail
    assert len(world.opened) == FAST_HEALTH.max_restarts + 1  # the first start and each restart
    assert hub.status.restarts == FAST_HEALTH.max_restarts + 1

    world.stalling_opens = 0  # it keeps trying slowly; if the camera comes back, so does the pipeline
    await wait_until(hub.pipeline_ok, 10.0)
    assert state(hub) is CameraState.STREAMING
    assert hub.status.restarts == 0
    await hub.stop()


async def test_parameter_sets_are_restored_before_every_idr(monkeypatch: pytest.MonkeyPatch) -> None:
    world = FakeCameraWorld(strip_parameter_sets=True)
    hub, _ = make(world, monkeypatch, always_on=True)
    await hub.start()
    await wait_until(lambda: hub.state is CameraState.STREAMING)
    for i in range(3):
        await asyncio.sleep(0.6)
        _, frame = await join_latency(hub, f"viewer{i}")
        assert frame.keyframe
        assert_parameter_sets_before_idr(frame)
        assert len(decode([frame])) == 1  # decodable on its own
    await hub.stop()
    stripped_idrs = [data for data in world.produced[1:] if b"\x00\x00\x00\x01\x65" in data]
    assert stripped_idrs
    assert all(b"\x00\x00\x00\x01\x67" not in data for data in stripped_idrs)
