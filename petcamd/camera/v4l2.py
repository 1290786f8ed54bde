"""USB (UVC) cameras through PyAV's V4L2 demuxer.

A camera that emits H.264 is passed through untouched. MJPEG or YUYV is decoded and encoded with
`h264_v4l2m2m` (the Pi's hardware encoder), or libx264 with a warning where that is unavailable.
Capture, decode and encode all run on one thread of their own.

Device choice skips /dev/video10-31: on a Pi those are the codec and ISP nodes (bcm2835-codec,
bcm2835-isp, pispbe, rpi-hevc-dec), which are not cameras.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from petcamd.camera.encoder import H264Encoder, open_encoder
from petcamd.camera.h264 import ParameterSetCache
from petcamd.camera.handoff import hand_over, report_failure
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

SYSFS_VIDEO4LINUX = Path("/sys/class/video4linux")
PI_CODEC_NODES = range(10, 32)
# Names of video nodes that are not cameras (or not cameras V4L2 can use directly: unicam and
# rp1-cfe carry raw Bayer for libcamera).
NON_CAMERA_NAMES = ("bcm2835-codec", "bcm2835-isp", "pispbe", "rpi-hevc", "unicam", "rp1-cfe")
INPUT_FORMATS = ("h264", "mjpeg", "yuyv422")  # best first: passthrough, then cheap to decode
STOP_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class VideoDevice:
    path: str
    name: str


def _node_number(entry: Path) -> int:
    digits = entry.name.removeprefix("video")
    return int(digits) if digits.isdigit() else -1


def list_capture_devices(
    sysfs_root: Path = SYSFS_VIDEO4LINUX, dev_root: Path = Path("/dev")
) -> list[VideoDevice]:
    """Candidate camera nodes, lowest number first."""
    if not sysfs_root.is_dir():
        return []
    found = []
    for entry in sorted(sysfs_root.glob("video*"), key=_node_number):
        number = _node_number(entry)
        if number < 0 or number in PI_CODEC_NODES:
            continue
        name = _read(entry / "name")
        if any(name.startswith(prefix) for prefix in NON_CAMERA_NAMES):
            continue
        # UVC cameras add a metadata node next to the capture node; only index 0 captures.
        if _read(entry / "index") not in ("", "0"):
            continue
        found.append(VideoDevice(str(dev_root / entry.name), name or entry.name))
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


OpenInput = Callable[[str, str, StreamSettings], Any]
"""Open `device` asking for `input_format`: returns a PyAV input container, raises when refused."""


def open_v4l2_device(device: str, input_format: str, settings: StreamSettings) -> Any:
    options = {
        "input_format": input_format,
        "video_size": f"{settings.width}x{settings.height}",
        "framerate": str(settings.fps),
    }
    return av.open(device, format="video4linux2", options=options)


SetControl = Callable[[str, int, int], None]
"""Set a V4L2 control on a device node (the seam tests record)."""


def v4l2_set_control(device: str, control_id: int, value: int) -> None:
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, VIDIOC_S_CTRL, struct.pack("=Ii", control_id, value))
    finally:
        os.close(fd)


class _Clock:
    """Camera timestamps (packet pts) mapped onto monotonic µs, anchored at the first frame."""

    def __init__(self) -> None:
        self._anchor: tuple[int, int] | None = None  # (monotonic µs, pts µs)

    def convert(self, packet: Any) -> int:
        now = time.monotonic_ns() // 1000
        if packet.pts is None or packet.time_base is None:
            return now
        pts_us = int(packet.pts * packet.time_base * 1_000_000)
        if self._anchor is not None:
            stamp = self._anchor[0] + pts_us - self._anchor[1]
            if abs(stamp - now) < 2_000_000:
                return stamp
        self._anchor = (now, pts_us)  # first frame, or the camera's clock jumped
        return now


class V4l2Source:
    """Implements `Source` for a V4L2 capture device. Start/stop may be repeated."""

    def __init__(
        self,
        settings: StreamSettings,
        device: str = "auto",
        *,
        formats: Sequence[str] = INPUT_FORMATS,
        prefer_hardware_encoder: bool = True,
        open_input: OpenInput = open_v4l2_device,
        set_control: SetControl = v4l2_set_control,
        sysfs_root: Path = SYSFS_VIDEO4LINUX,
    ) -> None:
        self.settings = settings
        self.device = device or "auto"  # camera.device left empty: whichever camera is attached
        self.formats = tuple(formats)
        self.prefer_hardware_encoder = prefer_hardware_encoder
        self._open_input = open_input
        self._set_control = set_control
        self._sysfs_root = sysfs_root
        self._kind = EncoderKind.PASSTHROUGH
        self._path = self.device
        self._input_format = ""
        self._encoder: H264Encoder | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._generation = 0
        self._can_force_keyframe = True

    @property
    def description(self) -> str:
        if not self._input_format:
            return f"V4L2 {self._path}"
        if self._kind is EncoderKind.PASSTHROUGH:
            how = "camera's own H.264"
        else:
            codec = self._encoder.codec_name if self._encoder is not None else "H.264"
            how = f"{self._input_format} encoded with {codec}"
        return f"V4L2 {self._path} ({how})"

    @property
    def encoder_kind(self) -> EncoderKind:
        return self._kind

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        container = await asyncio.to_thread(self._open)
        self._generation += 1
        generation = self._generation

        def deliver(frame: EncodedFrame) -> None:
            if generation == self._generation:
                sink(frame)

        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(container, self._encoder, loop, deliver, self._stopping, on_failure),
            name="petcamd-v4l2",
            daemon=True,
        )
        self._thread.start()
        log.info("started %s", self.description)

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._generation += 1
        self._stopping.set()
        await asyncio.to_thread(thread.join, STOP_GRACE_S)
        if thread.is_alive():
            # Blocked in VIDIOC_DQBUF on a wedged camera: nothing can interrupt that. The thread
            # closes the device whenever the read returns; a restart meanwhile fails and health
            # escalates, up to systemd restarting the daemon.
            log.warning("capture thread for %s did not stop; abandoning it", self._path)
        self._encoder = None
        log.info("stopped %s", self.description)

    def present(self) -> bool:
        """The configured node exists (or, for "auto", some camera node does): a sysfs/dev lookup."""
        if self.device == "auto":
            return bool(list_capture_devices(self._sysfs_root))
        return Path(self.device).exists()

    def request_keyframe(self) -> None:
        encoder = self._encoder
        if encoder is not None:
            encoder.request_keyframe()
            return
        if self._thread is None or not self._can_force_keyframe:
            return
        try:
            self._set_control(self._path, V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, 1)
        except OSError as exc:
            self._can_force_keyframe = False
            log.warning("%s cannot force keyframes (%s); viewers wait for its next IDR", self._path, exc)

    # -- capture thread side --------------------------------------------------------------------

    def _resolve_device(self) -> str:
        if self.device != "auto":
            return self.device
        devices = list_capture_devices(self._sysfs_root)
        if not devices:
            raise CameraMissingError("no V4L2 camera found (/dev/video10-31 are the Pi's codec nodes)")
        return devices[0].path

    def _open(self) -> Any:
        """Open the device in the best format it offers (blocking: runs on a worker thread)."""
        self._path = self._resolve_device()
        errors = []
        for input_format in self.formats:
            try:
                container = self._open_input(self._path, input_format, self.settings)
            except FileNotFoundError as exc:
                raise CameraMissingError(f"{self._path} does not exist; is the camera plugged in?") from exc
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                errors.append(f"{input_format}: {exc}")
                continue
            try:
                self._prepare(input_format)
            except SourceError:
                container.close()
                raise
            return container
        raise SourceError(f"{self._path} offers none of {', '.join(self.formats)} ({'; '.join(errors)})")

    def _prepare(self, input_format: str) -> None:
        self._input_format = input_format
        self._can_force_keyframe = True
        if input_format == "h264":
            self._kind = EncoderKind.PASSTHROUGH
            self._encoder = None
            return
        self._encoder = open_encoder(self.settings, prefer_hardware=self.prefer_hardware_encoder)
        self._kind = self._encoder.kind

    def _run(
        self,
        container: Any,
        encoder: H264Encoder | None,
        loop: asyncio.AbstractEventLoop,
        deliver: FrameSink,
        stopping: threading.Event,
        on_failure: FailureSink | None,
    ) -> None:
        clock = _Clock()
        failure = "the camera stopped sending frames"  # the demuxer ended: the device went away
        parameter_sets = ParameterSetCache()
        try:
            stream = container.streams.video[0]
            decoder = stream.codec_context
            for packet in container.demux(stream):
                if stopping.is_set():
                    break
                if packet.size == 0:
                    continue
                timestamp_us = clock.convert(packet)
                if encoder is None:
                    data, idr = parameter_sets.process(bytes(packet))
                    frames = [EncodedFrame(data, timestamp_us, idr)]
                else:
                    frames = []
                    for picture in decoder.decode(packet):
                        frames.extend(encoder.encode(picture, timestamp_us))
                for frame in frames:
                    if not hand_over(loop, deliver, frame):
                        return
        except (av.error.FFmpegError, OSError) as exc:
            failure = f"capture from {self._path} failed: {exc}"
            if not stopping.is_set():
                log.warning("%s (health restarts it)", failure)
        except Exception as exc:
            failure = f"capture from {self._path} failed: {exc}"
            log.exception("capture from %s failed", self._path)
        finally:
            if not stopping.is_set():
                report_failure(loop, on_failure, failure)
            if encoder is not None:
                encoder.close()
            with contextlib.suppress(Exception):
                container.close()
