"""A fake picamera2 that follows the real API and emits real H.264 (PyAV libx264).

Mirrors raspberrypi/picamera2 (read at v0.3.36, commit 3e6dff0; force_key_frame() since v0.3.32,
commit e623daa):
- picamera2/picamera2.py: `Picamera2.global_camera_info()` (staticmethod, one dict per camera with
  Model/Location/Rotation/Id/Num), `Picamera2(camera_num=0)` which indexes that list (IndexError when
  the camera is absent), `create_video_configuration()`, `configure()`, `start_recording(encoder,
  output, pts=None, config=None, quality=None, name=None)`, `stop_recording()`, `close()`.
- picamera2/encoders/encoder.py: `Encoder.output`, `Encoder.outputframe(frame, keyframe=True,
  timestamp=None, packet=None, audio=False)` fanning out to every Output under a lock, and
  `_timestamp()`: microseconds since the first frame, from the sensor timestamp.
- picamera2/encoders/v4l2_encoder.py + h264_encoder.py: `H264Encoder(bitrate=None, repeat=True,
  iperiod=None, framerate=None, enable_sps_framerate=False, qp=None, profile=None)`; `self.vd` is the
  open /dev/video11 while running; outputframe() is called on the encoder's poll thread; from
  v0.3.32 `force_key_frame()` bumps `_key_frames_requested` and `_encode` sets the V4L2 control
  FORCE_KEY_FRAME before queueing the next picture. Before v0.3.32 there is no force_key_frame().
- picamera2/encoders/libav_h264_encoder.py: `LibavH264Encoder`, what `picamera2.encoders.H264Encoder`
  is on a Pi 5 (picamera2/encoders/__init__.py: no VC4 hardware encoder); it sets pict_type "I" for
  forced keyframes and passes `packet=` to outputframe().
- picamera2/outputs/output.py: `Output(pts=None)` with start/stop/outputframe.

Only the hardware is fake: the sensor is a test pattern and the "hardware encoder" is libx264.
The V4L2 control of pre-0.3.32 versions reaches the fake kernel through `FakeCameraWorld.ioctl`.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from types import ModuleType
from typing import Any

import av
import pytest

from petcamd.camera.encoder import PICTURE_TYPE_I, PICTURE_TYPE_NONE
from petcamd.camera.h264 import NalType, iter_nal_units, join_nal_units, nal_type
from petcamd.camera.pattern import TestPattern
from petcamd.camera.v4l2_controls import V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, VIDIOC_S_CTRL

IMX708 = {
    "Model": "imx708",
    "Location": 2,
    "Rotation": 180,
    "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a",
    "Num": 0,
}


@dataclass
class FakeCameraWorld:
    """What hardware the fake sees, and what happened to it."""

    cameras: list[dict[str, Any]] = field(default_factory=lambda: [dict(IMX708)])
    force_key_frame_api: bool = True  # picamera2 >= 0.3.32
    pi5: bool = False  # no hardware encoder: H264Encoder is LibavH264Encoder
    stall_after_frames: int | None = None  # each affected camera goes silent after this many frames
    stalling_opens: int = 0  # how many of the next opened cameras stall
    strip_parameter_sets: bool = False  # emulate an encoder that sends SPS/PPS only once
    ioctl_calls: list[tuple[int, int, bytes]] = field(default_factory=list)
    opened: list[Picamera2] = field(default_factory=list)
    produced: list[bytes] = field(default_factory=list)  # every access unit handed to an Output
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        """The kernel side of the V4L2 control seam: only the encoder's FORCE_KEY_FRAME is known."""
        self.ioctl_calls.append((fd, request, arg))
        control_id, value = struct.unpack("=Ii", arg)
        assert request == VIDIOC_S_CTRL
        assert control_id == V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME
        for camera in self.opened:
            encoder = camera.encoder
            if encoder is not None and encoder.vd is not None and encoder.vd.fileno() == fd and value:
                encoder.kernel_force_key_frame = True
                return arg
        raise OSError(9, "Bad file descriptor")


class _FakeDevice:
    """Stands in for V4L2Encoder's `open('/dev/video11', 'rb+', buffering=0)`."""

    _next_fd = 1000

    def __init__(self) -> None:
        _FakeDevice._next_fd += 1
        self._fd = _FakeDevice._next_fd
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        self.closed = True


# -- picamera2/outputs/output.py --------------------------------------------------------------------


class Output:
    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False
        self.needs_add_stream = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        """Overridden by users' outputs."""

    def _add_stream(self, encoder_stream: Any, *args: Any, **kwargs: Any) -> None:
        pass


# -- picamera2/encoders/encoder.py ------------------------------------------------------------------


class Encoder:
    def __init__(self) -> None:
        self._output: list[Output] = []
        self._running = False
        self._output_lock = threading.Lock()
        self.firsttimestamp: int | None = None
        self.world: FakeCameraWorld | None = None
        self.width = 0
        self.height = 0
        self.vd: _FakeDevice | None = None
        self.kernel_force_key_frame = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def output(self) -> Any:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Any) -> None:
        self._output = list(value) if isinstance(value, list) else [value]

    def start(self, quality: Any = None) -> None:
        if self._running:
            raise RuntimeError("Encoder already running")
        self._running = True
        self.firsttimestamp = None
        for out in self._output:
            out.start()
        self._start()

    def stop(self) -> None:
        if not self._running:
            raise RuntimeError("Encoder already stopped")
        self._running = False
        self._stop()
        for out in self._output:
            out.stop()

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        with self._output_lock:
            for out in self._output:
                out.outputframe(frame, keyframe, timestamp, packet, audio)

    def _timestamp(self, sensor_timestamp_ns: int) -> int:
        ts = sensor_timestamp_ns // 1000
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
            return 0
        return ts - self.firsttimestamp

    def _start(self) -> None:
        pass

    def _stop(self) -> None:
        pass

    # The fake's own hardware: libx264 standing in for the VideoCore (or the Pi 5's libx264).
    def _open_codec(self, bitrate: int | None, iperiod: int | None, framerate: float | None) -> None:
        ctx: Any = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, "yuv420p"
        ctx.time_base = Fraction(1, 1_000_000)
        ctx.framerate = Fraction(round(framerate or 30), 1)
        ctx.bit_rate = bitrate or 1_000_000
        ctx.gop_size = iperiod or 60
        keyint = iperiod or 60
        ctx.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": f"repeat-headers=1:keyint={keyint}:min-keyint={keyint}:scenecut=0",
        }
        ctx.open()
        self._codec = ctx

    def _encode_picture(self, picture: Any, sensor_timestamp_ns: int, *, force_idr: bool) -> None:
        timestamp_us = self._timestamp(sensor_timestamp_ns)
        picture.pts = timestamp_us
        picture.pict_type = PICTURE_TYPE_I if force_idr else PICTURE_TYPE_NONE
        for packet in self._codec.encode(picture):
            data = bytes(packet)
            assert self.world is not None
            if self.world.strip_parameter_sets and self.world.produced:
                keep = [n for n in iter_nal_units(data) if nal_type(n) not in (NalType.SPS, NalType.PPS)]
                data = join_nal_units(keep)
            with self.world.lock:
                self.world.produced.append(data)
            self._emit(data, bool(packet.is_keyframe), timestamp_us, packet)

    def _emit(self, data: bytes, keyframe: bool, timestamp_us: int, packet: Any) -> None:
        self.outputframe(data, keyframe, timestamp_us)


# -- picamera2/encoders/v4l2_encoder.py + h264_encoder.py -------------------------------------------


class LegacyH264Encoder(Encoder):
    """The VideoCore hardware encoder before picamera2 0.3.32: no force_key_frame()."""

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = None,
        framerate: float | None = None,
        enable_sps_framerate: bool = False,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__()
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        if profile is not None and profile.lower() not in (
            "baseline",
            "constrained baseline",
            "main",
            "high",
        ):
            raise RuntimeError("Profile " + profile + " not recognised")
        self.profile = profile

    def _start(self) -> None:
        self.vd = _FakeDevice()
        self._open_codec(self.bitrate, self.iperiod, self.framerate)

    def _stop(self) -> None:
        if self.vd is not None:
            self.vd.close()

    def encode_request(self, picture: Any, sensor_timestamp_ns: int) -> None:
        force, self.kernel_force_key_frame = self.kernel_force_key_frame, False
        self._encode_picture(picture, sensor_timestamp_ns, force_idr=force)


class H264Encoder(LegacyH264Encoder):
    """picamera2 >= 0.3.32: force_key_frame() becomes the V4L2 control in _encode()."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key_frames_requested = 0
        self._key_frames_generated = 0

    def force_key_frame(self) -> None:
        self._key_frames_requested += 1

    def encode_request(self, picture: Any, sensor_timestamp_ns: int) -> None:
        if self._key_frames_requested > self._key_frames_generated:
            self._key_frames_generated += 1
            self.kernel_force_key_frame = True
        super().encode_request(picture, sensor_timestamp_ns)


class LegacyLibavH264Encoder(Encoder):
    """picamera2/encoders/libav_h264_encoder.py before 0.3.32 (a Pi 5's H264Encoder then)."""

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int = 30,
        framerate: float = 30,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__()
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.framerate = framerate
        self.profile = profile
        self._force_next = False

    def _start(self) -> None:
        self._open_codec(self.bitrate, self.iperiod, self.framerate)

    def encode_request(self, picture: Any, sensor_timestamp_ns: int) -> None:
        force, self._force_next = self._force_next, False
        self._encode_picture(picture, sensor_timestamp_ns, force_idr=force)

    def _emit(self, data: bytes, keyframe: bool, timestamp_us: int, packet: Any) -> None:
        self.outputframe(data, keyframe, timestamp=timestamp_us, packet=packet)


class LibavH264Encoder(LegacyLibavH264Encoder):
    """libx264 on the CPU with force_key_frame() (picamera2 >= 0.3.32): pict_type "I"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key_frames_requested = 0
        self._key_frames_generated = 0

    def force_key_frame(self) -> None:
        self._key_frames_requested += 1

    def encode_request(self, picture: Any, sensor_timestamp_ns: int) -> None:
        if self._key_frames_requested > self._key_frames_generated:
            self._key_frames_generated += 1
            self._force_next = True
        super().encode_request(picture, sensor_timestamp_ns)


# -- picamera2/picamera2.py -------------------------------------------------------------------------


class Picamera2:
    world: FakeCameraWorld  # set on the class by install()

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(camera) for camera in Picamera2.world.cameras]

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None) -> None:
        self.is_open = False
        camera_num = self.global_camera_info()[camera_num]["Num"]  # IndexError: no such camera
        self.camera_num = camera_num
        self.camera_config: dict[str, Any] | None = None
        self.encoder: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        world = Picamera2.world
        self.stall_after: int | None = None
        if world.stalling_opens > 0:
            world.stalling_opens -= 1
            self.stall_after = world.stall_after_frames
        self.frames_delivered = 0
        world.opened.append(self)
        self.is_open = True

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None, **_: Any
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        return {"use_case": "video", "main": dict(main or {}), "controls": dict(controls or {})}

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        self.camera_config = camera_config

    def start_recording(
        self,
        encoder: Encoder,
        output: Output,
        pts: Any = None,
        config: Any = None,
        quality: Any = None,
        name: Any = None,
    ) -> None:
        assert self.camera_config is not None, "configure() first"
        width, height = self.camera_config["main"]["size"]
        frame_us = self.camera_config["controls"].get("FrameDurationLimits", (33_333, 33_333))[0]
        encoder.world = Picamera2.world
        encoder.width, encoder.height = width, height
        encoder.output = output
        encoder.start(quality)
        self.encoder = encoder
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._capture, args=(encoder, width, height, frame_us * 1000), daemon=True
        )
        self._thread.start()

    def stop_recording(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.encoder is not None and self.encoder.running:
            self.encoder.stop()

    def close(self) -> None:
        self.is_open = False

    def _capture(self, encoder: Any, width: int, height: int, period_ns: int) -> None:
        """The camera + encoder thread: outputframe() is called from here, as upstream."""
        pattern = TestPattern(width, height)
        deadline = time.monotonic_ns()
        index = 0
        while not self._stop.is_set():
            delay = (deadline - time.monotonic_ns()) / 1e9
            if delay > 0 and self._stop.wait(delay):
                break
            deadline += period_ns
            if self.stall_after is not None and self.frames_delivered >= self.stall_after:
                continue  # a wedged sensor: no more requests complete, no error either
            encoder.encode_request(pattern.render(index), time.monotonic_ns())
            self.frames_delivered += 1
            index += 1


def install(monkeypatch: pytest.MonkeyPatch, world: FakeCameraWorld) -> FakeCameraWorld:
    """Make `import picamera2` (and its encoders/outputs submodules) load this fake."""
    Picamera2.world = world
    root = ModuleType("picamera2")
    encoders = ModuleType("picamera2.encoders")
    outputs = ModuleType("picamera2.outputs")
    root.Picamera2 = Picamera2  # type: ignore[attr-defined]
    if world.pi5:
        libav = LibavH264Encoder if world.force_key_frame_api else LegacyLibavH264Encoder
        encoders.H264Encoder = libav  # type: ignore[attr-defined]
        encoders.LibavH264Encoder = libav  # type: ignore[attr-defined]
    else:
        hardware = H264Encoder if world.force_key_frame_api else LegacyH264Encoder
        encoders.H264Encoder = hardware  # type: ignore[attr-defined]
        encoders.LibavH264Encoder = LibavH264Encoder  # type: ignore[attr-defined]
    outputs.Output = Output  # type: ignore[attr-defined]
    root.encoders = encoders  # type: ignore[attr-defined]
    root.outputs = outputs  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", root)
    monkeypatch.setitem(sys.modules, "picamera2.encoders", encoders)
    monkeypatch.setitem(sys.modules, "picamera2.outputs", outputs)
    return world
