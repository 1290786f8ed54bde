"""V4l2Source through the recorded-camera seam (tests/fakes/v4l2_fake.py): real PyAV streams."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from petcamd.camera.health import HealthSettings
from petcamd.camera.hub import CameraState, FrameHub, HubSettings
from petcamd.camera.source import CameraMissingError, EncodedFrame, EncoderKind, SourceError, StreamSettings
from petcamd.camera.v4l2 import V4l2Source, list_capture_devices
from petcamd.camera.v4l2_controls import V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME
from tests.fakes.h264util import assert_parameter_sets_before_idr, decode
from tests.fakes.v4l2_fake import PI4_WITH_WEBCAM, RecordedCamera, make_sysfs, record

SETTINGS = StreamSettings(width=320, height=240, fps=30, bitrate=300_000, keyframe_interval_s=10.0)
FRAMES = 150  # five seconds of camera


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("camera")
    return {
        kind: record(root / f"camera.{kind}", kind, SETTINGS, FRAMES) for kind in ("h264", "mjpeg", "yuyv422")
    }


def camera_with(recordings: dict[str, Path], *kinds: str) -> RecordedCamera:
    return RecordedCamera({kind: recordings[kind] for kind in kinds})


def make_hub(source: V4l2Source) -> FrameHub:
    return FrameHub(
        source,
        HubSettings(queue_frames=60, linger_s=0.0, always_on=True),
        HealthSettings(stall_timeout_s=1.0, first_frame_timeout_s=3.0),
    )


def state(hub: FrameHub) -> CameraState:
    return hub.state


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def join(hub: FrameHub, name: str) -> tuple[float, EncodedFrame]:
    joined = time.monotonic()
    sub = hub.subscribe(name)
    frame = await asyncio.wait_for(sub.get(), 2.0)
    latency = time.monotonic() - joined
    sub.close()
    return latency, frame


def test_device_selection_skips_codec_and_metadata_nodes(tmp_path: Path) -> None:
    nodes = dict(PI4_WITH_WEBCAM)
    nodes[2] = ("USB2.0 Camera", "0")
    nodes[32] = ("unicam-image", "0")
    sysfs = make_sysfs(tmp_path, nodes)
    devices = list_capture_devices(sysfs)
    assert [(d.path, d.name) for d in devices] == [
        ("/dev/video0", "HD Pro Webcam C920"),
        ("/dev/video2", "USB2.0 Camera"),
    ]
    only_codecs = make_sysfs(tmp_path / "pi", {n: v for n, v in PI4_WITH_WEBCAM.items() if n >= 10})
    assert list_capture_devices(only_codecs) == []
    assert list_capture_devices(tmp_path / "absent") == []


async def test_h264_camera_is_passed_through_byte_for_byte(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    camera = camera_with(recordings, "h264", "mjpeg")
    sysfs = make_sysfs(tmp_path, PI4_WITH_WEBCAM)
    source = V4l2Source(SETTINGS, "auto", open_input=camera, set_control=camera.set_control, sysfs_root=sysfs)
    hub = make_hub(source)
    await hub.start()
    sub = hub.subscribe("viewer")
    frames = [await asyncio.wait_for(sub.get(), 3.0) for _ in range(30)]
    await hub.stop()

    assert camera.opened[0] == ("/dev/video0", "h264")
    assert source.encoder_kind is EncoderKind.PASSTHROUGH
    assert source.description == "V4L2 /dev/video0 (camera's own H.264)"
    start = camera.packets_read.index(frames[0].data)
    assert [f.data for f in frames] == camera.packets_read[start : start + 30]
    assert frames[0].keyframe
    assert len(decode(frames)) == 30


async def test_h264_camera_keyframe_requests_use_the_v4l2_control(
    recordings: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    camera = camera_with(recordings, "h264")
    source = V4l2Source(SETTINGS, "/dev/video0", open_input=camera, set_control=camera.set_control)
    frames: list[EncodedFrame] = []
    await source.start(frames.append)
    source.request_keyframe()
    camera.controls_supported = False
    with caplog.at_level(logging.WARNING, logger="petcamd.camera.v4l2"):
        source.request_keyframe()
        source.request_keyframe()  # not asked again once refused
    await source.stop()
    await source.stop()
    assert camera.controls == [
        ("/dev/video0", V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, 1),
        ("/dev/video0", V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, 1),
    ]
    assert sum("cannot force keyframes" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("kind", ["mjpeg", "yuyv422"])
async def test_raw_camera_is_encoded_with_libx264_fallback(
    recordings: dict[str, Path], caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    camera = camera_with(recordings, kind)
    source = V4l2Source(SETTINGS, "/dev/video0", open_input=camera, set_control=camera.set_control)
    hub = make_hub(source)
    with caplog.at_level(logging.WARNING, logger="petcamd.camera.encoder"):
        await hub.start()
        await wait_until(lambda: hub.state is CameraState.STREAMING)
    # h264_v4l2m2m cannot open here (no /dev/video*): libx264 stands in, with a warning.
    assert any("falling back to libx264" in r.getMessage() for r in caplog.records)
    assert [fmt for _, fmt in camera.refused] == ["h264"] + (["mjpeg"] if kind == "yuyv422" else [])
    assert source.encoder_kind is EncoderKind.SOFTWARE
    assert source.description == f"V4L2 /dev/video0 ({kind} encoded with libx264)"

    latencies = []
    for i in range(3):
        await asyncio.sleep(0.6)
        latency, frame = await join(hub, f"viewer{i}")
        assert frame.keyframe
        assert_parameter_sets_before_idr(frame)
        (picture,) = decode([frame])
        assert (picture.width, picture.height) == (320, 240)
        latencies.append(latency)
    await hub.stop()
    assert max(latencies) < 0.150, latencies
    assert camera.controls == []  # the encoder is ours: no device control needed


async def test_missing_device_is_a_state(recordings: dict[str, Path], tmp_path: Path) -> None:
    camera = camera_with(recordings, "h264")
    absent = V4l2Source(SETTINGS, "/dev/video7")  # the real v4l2 demuxer, on a node that is not there
    with pytest.raises(CameraMissingError, match="/dev/video7"):
        await absent.start(lambda _: None)

    no_cameras = make_sysfs(tmp_path, {n: v for n, v in PI4_WITH_WEBCAM.items() if n >= 10})
    unset = V4l2Source(SETTINGS, "", open_input=camera, sysfs_root=no_cameras)  # camera.device = ""
    assert unset.device == "auto"
    assert not unset.present()
    with pytest.raises(CameraMissingError, match="no V4L2 camera found"):
        await unset.start(lambda _: None)
    auto = V4l2Source(SETTINGS, "auto", open_input=camera, sysfs_root=no_cameras)
    hub = make_hub(auto)
    await hub.start()
    await wait_until(lambda: hub.state is CameraState.MISSING)
    assert "no V4L2 camera" in hub.status.detail
    assert hub.pipeline_ok()
    await hub.stop()
    assert camera.opened == []


async def test_camera_offering_nothing_usable(recordings: dict[str, Path]) -> None:
    camera = camera_with(recordings)
    source = V4l2Source(SETTINGS, "/dev/null", open_input=camera)
    with pytest.raises(SourceError, match="offers none of h264, mjpeg, yuyv422"):
        await source.start(lambda _: None)


async def test_real_v4l2_demuxer_on_an_absent_node() -> None:
    # The production opener, unfaked: no /dev/video* on this machine means "missing", not a crash.
    source = V4l2Source(SETTINGS, "/dev/video0")
    with pytest.raises(CameraMissingError):
        await source.start(lambda _: None)
    assert "video4linux2,v4l2" in av.formats_available


async def test_wedged_usb_camera_is_restarted(recordings: dict[str, Path]) -> None:
    camera = camera_with(recordings, "h264")
    source = V4l2Source(SETTINGS, "/dev/video0", open_input=camera)
    hub = make_hub(source)
    await hub.start()
    sub = hub.subscribe("viewer")
    before = [await asyncio.wait_for(sub.get(), 3.0) for _ in range(10)]
    camera.stalled.set()  # VIDIOC_DQBUF blocks: no error, just no frames
    await wait_until(lambda: hub.state is not CameraState.STREAMING, 3.0)
    before += [sub.get_nowait() for _ in range(sub.qsize())]  # queued before the stall
    camera.stalled.clear()
    frame = await asyncio.wait_for(sub.get(), 8.0)
    assert frame.keyframe  # the viewer resumes on an IDR from the reopened camera
    assert frame.timestamp_us > max(f.timestamp_us for f in before)
    assert state(hub) is CameraState.STREAMING
    assert len(camera.opened) == 2
    await hub.stop()


async def test_unplugged_usb_camera_is_missing_at_once_and_streams_again_when_plugged_back(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    camera = camera_with(recordings, "h264")
    node = tmp_path / "video0"  # present() looks for the node, as it would for /dev/video0
    node.touch()
    source = V4l2Source(SETTINGS, str(node), open_input=camera)
    # A stall timeout far longer than the test: only the capture thread's report can act.
    hub = FrameHub(
        source,
        HubSettings(queue_frames=60, linger_s=0.0, always_on=True),
        HealthSettings(stall_timeout_s=60.0, first_frame_timeout_s=60.0, presence_poll_s=0.05),
    )
    await hub.start()
    sub = hub.subscribe("viewer")
    assert await asyncio.wait_for(sub.get(), 3.0)
    assert source.present()
    camera.unplugged.set()  # the read fails with ENODEV ...
    node.unlink()  # ... and udev removes the node
    await wait_until(lambda: hub.state is CameraState.MISSING)
    assert "No such device" in hub.status.detail
    assert not source.present()
    assert hub.pipeline_ok()  # restarting the daemon would not bring a camera back
    before = [sub.get_nowait() for _ in range(sub.qsize())]  # queued before the unplug
    node.touch()
    camera.unplugged.clear()
    await wait_until(lambda: hub.state is CameraState.STREAMING)
    frame = await asyncio.wait_for(sub.get(), 3.0)
    assert frame.keyframe  # the viewer resumes on an IDR from the reopened camera
    assert all(frame.timestamp_us > f.timestamp_us for f in before)
    assert len(camera.opened) == 2
    await hub.stop()
