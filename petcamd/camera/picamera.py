"""The Raspberry Pi camera through picamera2 (python3-picamera2, optional and imported lazily).

picamera2 runs its encoder on a thread of its own and calls our Output's `outputframe()` there;
each access unit hops to the event loop with call_soon_threadsafe. Keyframes on request:
`encoder.force_key_frame()` exists since picamera2 0.3.32 (upstream commit e623daa); older
versions get the V4L2 FORCE_KEY_FRAME control set directly on the encoder's device (/dev/video11),
which is exactly what 0.3.32 does internally. The Pi 5 has no hardware H.264 encoder; there
picamera2's `H264Encoder` is its libx264-based `LibavH264Encoder`, reported as software encoding.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from petcamd.camera.h264 import ParameterSetCache
from petcamd.camera.handoff import hand_over
from petcamd.camera.source import (
    CameraMissingError,
    EncodedFrame,
    EncoderKind,
    FailureSink,
    FrameSink,
    SourceError,
    StreamSettings,
)
from petcamd.camera.v4l2_controls import V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, VIDIOC_S_CTRL

log = logging.getLogger(__name__)

Ioctl = Callable[[int, int, bytes], Any]
"""The one seam to the kernel: `fcntl.ioctl(fd, request, arg)`; tests record calls instead."""


@dataclass(frozen=True, slots=True)
class Picamera2Api:
    """The parts of picamera2 this source uses, resolved once per start."""

    picamera2: Any  # the Picamera2 class
    h264_encoder: Any  # picamera2.encoders.H264Encoder (LibavH264Encoder on a Pi 5)
    libav_h264_encoder: Any | None  # None on picamera2 versions that predate it
    output: Any  # picamera2.outputs.Output


def import_picamera2() -> Picamera2Api:
    """Import picamera2 on demand: it pulls in libcamera and probes /dev/video*, slow on a Zero."""
    try:
        root: ModuleType = importlib.import_module("picamera2")
        encoders = importlib.import_module("picamera2.encoders")
        outputs = importlib.import_module("picamera2.outputs")
    except ImportError as exc:
        raise CameraMissingError(
            f"picamera2 is not installed ({exc}); install python3-picamera2 for a Pi camera"
        ) from exc
    return Picamera2Api(
        picamera2=root.Picamera2,
        h264_encoder=encoders.H264Encoder,
        libav_h264_encoder=getattr(encoders, "LibavH264Encoder", None),
        output=outputs.Output,
    )


def picamera2_cameras(importer: Callable[[], Picamera2Api] = import_picamera2) -> list[dict[str, Any]]:
    """Cameras libcamera can see (empty if picamera2 is missing); USB ones have "/usb" in their Id."""
    try:
        api = importer()
        return list(api.picamera2.global_camera_info())
    except (CameraMissingError, RuntimeError, OSError) as exc:
        log.debug("picamera2 unavailable: %s", exc)
        return []


class PiCameraSource:
    """Implements `Source` with picamera2's H.264 encoder. Start/stop may be repeated."""

    def __init__(
        self,
        settings: StreamSettings,
        camera_num: int = 0,
        *,
        importer: Callable[[], Picamera2Api] = import_picamera2,
        ioctl: Ioctl = fcntl.ioctl,
    ) -> None:
        self.settings = settings
        self.camera_num = camera_num
        self._importer = importer
        self._ioctl = ioctl
        self._camera: Any = None
        self._encoder: Any = None
        self._kind = EncoderKind.HARDWARE
        self._model = "camera"
        self._generation = 0
        self._lock = threading.Lock()
        self._warned_no_keyframe = False

    @property
    def description(self) -> str:
        how = "hardware" if self._kind is EncoderKind.HARDWARE else "software"
        return f"picamera2 {self._model} ({how} H.264)"

    @property
    def encoder_kind(self) -> EncoderKind:
        return self._kind

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:  # noqa: ARG002
        # picamera2 has no error callback, so `on_failure` is never called: a dead camera shows
        # as frames stopping, which health notices as a stall.
        if self._camera is not None:
            return
        loop = asyncio.get_running_loop()
        self._generation += 1
        generation = self._generation

        def deliver(frame: EncodedFrame) -> None:
            if generation == self._generation:
                sink(frame)

        # Opening the camera blocks for a while (libcamera, sensor power-up): keep the loop free.
        await asyncio.to_thread(self._open, loop, deliver)

    async def stop(self) -> None:
        if self._camera is None:
            return
        self._generation += 1
        await asyncio.to_thread(self._close)

    def present(self) -> None:
        """Cannot tell cheaply (asking libcamera means a camera manager), and a CSI camera is not
        hot-plugged anyway: a missing one is re-probed by starting it now and then."""

    def request_keyframe(self) -> None:
        encoder = self._encoder
        if encoder is None:
            return
        if hasattr(encoder, "force_key_frame"):  # picamera2 >= 0.3.32
            encoder.force_key_frame()
            return
        device = getattr(encoder, "vd", None)  # V4L2Encoder's /dev/video11 file while running
        if device is not None and not device.closed:
            control = struct.pack("=Ii", V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, 1)
            try:
                self._ioctl(device.fileno(), VIDIOC_S_CTRL, control)
            except OSError as exc:
                log.warning("forcing a keyframe via V4L2 failed: %s", exc)
            return
        if not self._warned_no_keyframe:
            self._warned_no_keyframe = True
            log.warning(
                "this picamera2 version cannot force keyframes with its %s; viewers wait for the next IDR",
                type(encoder).__name__,
            )

    # -- blocking parts, on a worker thread -----------------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop, sink: FrameSink) -> None:
        api = self._importer()
        cameras = list(api.picamera2.global_camera_info())
        if self.camera_num >= len(cameras):
            raise CameraMissingError(
                f"no camera {self.camera_num} found by libcamera ({len(cameras)} attached); "
                "check the ribbon cable and camera_auto_detect in config.txt"
            )
        self._model = str(cameras[self.camera_num].get("Model", "camera"))
        s = self.settings
        camera: Any = None
        try:
            camera = api.picamera2(self.camera_num)
            frame_us = round(1_000_000 / s.fps)
            config = camera.create_video_configuration(
                main={"size": (s.width, s.height), "format": "YUV420"},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
            )
            camera.configure(config)
            encoder = self._make_encoder(api)
            output = _make_output(api.output, self._timestamps(), loop, sink)
            camera.start_recording(encoder, output)
        except IndexError as exc:  # Picamera2(n) indexes global_camera_info(): the camera vanished
            self._close_quietly(camera)
            raise CameraMissingError(f"camera {self.camera_num} disappeared while opening") from exc
        except (RuntimeError, OSError, ValueError) as exc:
            self._close_quietly(camera)
            raise SourceError(f"picamera2 could not start camera {self.camera_num}: {exc}") from exc
        with self._lock:
            self._camera = camera
            self._encoder = encoder
        log.info("started %s", self.description)

    def _make_encoder(self, api: Picamera2Api) -> Any:
        s = self.settings
        software = api.libav_h264_encoder is not None and api.h264_encoder is api.libav_h264_encoder
        self._kind = EncoderKind.SOFTWARE if software else EncoderKind.HARDWARE
        kwargs: dict[str, Any] = {
            "bitrate": s.bitrate,
            "repeat": True,  # SPS/PPS before every IDR
            "iperiod": max(1, round(s.fps * s.keyframe_interval_s)),
            "framerate": s.fps,
        }
        # The V4L2 encoder knows "constrained baseline"; the libav one matches FFmpeg's profile
        # names, and libx264's ultrafast preset is constrained baseline anyway.
        profile = "baseline" if software else "constrained baseline"
        try:
            return api.h264_encoder(profile=profile, **kwargs)
        except TypeError:  # picamera2 before 0.3.17 has no profile argument
            return api.h264_encoder(**kwargs)

    def _timestamps(self) -> Callable[[int | None], int]:
        """Map picamera2's timestamps (µs since the first frame, from the sensor) onto monotonic µs.

        The offset is fixed at the first frame, so spacing stays the sensor's own.
        """
        base: list[int] = []

        def convert(timestamp: int | None) -> int:
            now = time.monotonic_ns() // 1000
            if timestamp is None:
                return now
            if not base:
                base.append(now - timestamp)
            return base[0] + timestamp

        return convert

    def _close(self) -> None:
        with self._lock:
            camera, self._camera = self._camera, None
            self._encoder = None
        self._close_quietly(camera)
        log.info("stopped %s", self.description)

    @staticmethod
    def _close_quietly(camera: Any) -> None:
        if camera is None:
            return
        for step in ("stop_recording", "close"):
            try:
                getattr(camera, step)()
            except Exception:
                log.exception("picamera2 %s failed", step)


def _make_output(
    base: Any,
    timestamps: Callable[[int | None], int],
    loop: asyncio.AbstractEventLoop,
    sink: FrameSink,
) -> Any:
    """An instance of a subclass of picamera2's Output, defined only once picamera2 is imported."""
    parameter_sets = ParameterSetCache()

    class LoopOutput(base):  # type: ignore[misc]
        def outputframe(
            self,
            frame: Any,
            keyframe: bool = True,  # noqa: ARG002 - IDR detection below is authoritative
            timestamp: int | None = None,
            packet: Any = None,  # noqa: ARG002 - the same bytes as `frame`
            audio: bool = False,
        ) -> None:
            """Runs on picamera2's encoder thread (picamera2's own signature)."""
            if audio or frame is None:
                return
            data, idr = parameter_sets.process(bytes(frame))
            hand_over(loop, sink, EncodedFrame(data, timestamps(timestamp), idr))

    return LoopOutput()
