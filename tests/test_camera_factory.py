"""create_source: what "auto" picks, and that a missing camera is a state, not a crash."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import pytest

from petcamd.camera.factory import create_source
from petcamd.camera.health import HealthSettings
from petcamd.camera.hub import CameraState, FrameHub, HubSettings
from petcamd.camera.picamera import PiCameraSource
from petcamd.camera.source import StreamSettings
from petcamd.camera.synthetic import SyntheticSource
from petcamd.camera.v4l2 import V4l2Source
from tests.fakes import picamera2_fake
from tests.fakes.picamera2_fake import FakeCameraWorld
from tests.fakes.v4l2_fake import PI4_WITH_WEBCAM, make_sysfs

SETTINGS = StreamSettings(width=320, height=240, fps=30)
USB_CAMERA = {"Model": "uvcvideo", "Id": "/base/scb/pcie@7d500000/pci@0,0/usb@0,0-1:1.0-046d:082d", "Num": 1}


@pytest.fixture
def no_picamera2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)


@pytest.mark.usefixtures("no_picamera2")
def test_auto_without_any_camera_is_the_test_pattern(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="petcamd.camera.factory"):
        source = create_source("auto", "auto", SETTINGS, sysfs_root=tmp_path / "none")
    assert isinstance(source, SyntheticSource)
    assert any("no camera found" in r.getMessage() for r in caplog.records)


def test_auto_prefers_the_csi_camera(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    picamera2_fake.install(monkeypatch, FakeCameraWorld())
    source = create_source("auto", "auto", SETTINGS, sysfs_root=make_sysfs(tmp_path, PI4_WITH_WEBCAM))
    assert isinstance(source, PiCameraSource)
    assert source.camera_num == 0


def test_auto_sends_usb_cameras_to_v4l2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    picamera2_fake.install(monkeypatch, FakeCameraWorld(cameras=[dict(USB_CAMERA)]))
    source = create_source("auto", "auto", SETTINGS, sysfs_root=make_sysfs(tmp_path, PI4_WITH_WEBCAM))
    assert isinstance(source, V4l2Source)
    assert source.device == "/dev/video0"


@pytest.mark.usefixtures("no_picamera2")
def test_auto_with_a_device_path_and_explicit_kinds(tmp_path: Path) -> None:
    assert isinstance(create_source("auto", "/dev/video2", SETTINGS), V4l2Source)
    assert isinstance(create_source("test", "auto", SETTINGS), SyntheticSource)
    picam = create_source("picamera", "1", SETTINGS)
    assert isinstance(picam, PiCameraSource)
    assert picam.camera_num == 1
    with pytest.raises(ValueError, match="camera number"):
        create_source("picamera", "/dev/video0", SETTINGS)
    with pytest.raises(ValueError, match="unknown camera source 'webcam'"):
        create_source("webcam", "auto", SETTINGS)


@pytest.mark.usefixtures("no_picamera2")
async def test_explicit_camera_missing_at_start_is_a_state(tmp_path: Path) -> None:
    for kind in ("picamera", "v4l2"):
        source = create_source(kind, "auto", SETTINGS, sysfs_root=tmp_path / "none")
        hub = FrameHub(source, HubSettings(always_on=True), HealthSettings(missing_reprobe_s=0.2))
        await hub.start()
        end = time.monotonic() + 5
        while hub.state is not CameraState.MISSING:
            assert time.monotonic() < end
            await asyncio.sleep(0.01)
        assert hub.pipeline_ok()
        await asyncio.sleep(0.5)  # re-probes quietly, no crash loop
        assert hub.state is CameraState.MISSING
        assert hub.supervisor.restarts_total == 0
        await hub.stop()
