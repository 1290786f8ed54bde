"""Choosing the camera source from config: `[camera] source = auto | picamera | v4l2 | test`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from petcamd.camera.picamera import Picamera2Api, PiCameraSource, import_picamera2, picamera2_cameras
from petcamd.camera.source import Source, StreamSettings
from petcamd.camera.synthetic import SyntheticSource
from petcamd.camera.v4l2 import SYSFS_VIDEO4LINUX, V4l2Source, list_capture_devices

log = logging.getLogger(__name__)

SOURCE_KINDS = ("auto", "picamera", "v4l2", "test")


def create_source(
    kind: str,
    device: str,
    settings: StreamSettings,
    *,
    picamera2_importer: Callable[[], Picamera2Api] = import_picamera2,
    sysfs_root: Path = SYSFS_VIDEO4LINUX,
) -> Source:
    """Build the configured source. Never raises for a missing camera: an explicitly configured
    camera that is absent fails in `start()` with CameraMissingError, which the hub reports as
    MISSING; "auto" falls back to the synthetic pattern so the daemon runs anywhere.

    `device`: "auto", a libcamera camera number for picamera, or a /dev/videoN path for v4l2.
    """
    if kind == "test":
        log.info("camera source: synthetic test pattern (configured)")
        return SyntheticSource(settings)
    if kind == "picamera":
        return PiCameraSource(settings, _camera_number(device), importer=picamera2_importer)
    if kind == "v4l2":
        return V4l2Source(settings, device, sysfs_root=sysfs_root)
    if kind != "auto":
        raise ValueError(f"unknown camera source {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")

    if device.startswith("/dev/"):
        log.info("camera source: V4L2 %s (auto, device configured)", device)
        return V4l2Source(settings, device, sysfs_root=sysfs_root)
    cameras = picamera2_cameras(picamera2_importer)
    for number, camera in enumerate(cameras):
        # libcamera also lists USB webcams; V4L2 serves those better (H.264 passthrough).
        if "/usb" not in str(camera.get("Id", "")):
            log.info(
                "camera source: picamera2 camera %d %s (auto: libcamera lists it)",
                number,
                camera.get("Model"),
            )
            return PiCameraSource(settings, number, importer=picamera2_importer)
    devices = list_capture_devices(sysfs_root)
    if devices:
        chosen = devices[0]
        log.info("camera source: V4L2 %s %r (auto: first capture device)", chosen.path, chosen.name)
        return V4l2Source(settings, chosen.path, sysfs_root=sysfs_root)
    log.warning(
        "camera source: no camera found (picamera2 lists none, no V4L2 capture device); "
        "streaming the synthetic test pattern"
    )
    return SyntheticSource(settings)


def _camera_number(device: str) -> int:
    if device in ("", "auto"):
        return 0
    try:
        return int(device)
    except ValueError:
        raise ValueError(f"picamera device must be a camera number or 'auto', not {device!r}") from None
