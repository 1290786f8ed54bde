"""Fake V4L2 cameras: recorded streams played back in real time, plus a fake sysfs tree.

Stands in for FFmpeg's video4linux2 demuxer (libavdevice/v4l2.c) behind `V4l2Source`'s
`open_input` seam: `input_format` picks what the "camera" sends (h264, mjpeg, yuyv422) and a format
the camera lacks is refused with EINVAL, as v4l2.c does ("Cannot find a proper format"). Each read
returns one frame per frame period, as a camera's VIDIOC_DQBUF would. Unplugged, a read fails with
ENODEV (VIDIOC_DQBUF on a vanished UVC device) and opening with ENOENT (udev removed the node).
The recordings themselves are real streams encoded with PyAV. The sysfs tree mirrors
/sys/class/video4linux/videoN/{name,index}.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from petcamd.camera.pattern import TestPattern
from petcamd.camera.source import StreamSettings

# What a Raspberry Pi 4 with one UVC webcam shows in /sys/class/video4linux.
PI4_WITH_WEBCAM: dict[int, tuple[str, str]] = {
    0: ("HD Pro Webcam C920", "0"),
    1: ("HD Pro Webcam C920", "1"),  # UVC metadata node
    10: ("bcm2835-codec-decode", "0"),
    11: ("bcm2835-codec-encode", "0"),
    12: ("bcm2835-codec-isp", "0"),
    13: ("bcm2835-isp", "0"),
    14: ("bcm2835-isp", "1"),
    18: ("bcm2835-codec-image_fx", "0"),
    20: ("pispbe", "0"),
    31: ("bcm2835-codec-encode_image", "0"),
}


def make_sysfs(root: Path, nodes: dict[int, tuple[str, str]]) -> Path:
    base = root / "sys" / "class" / "video4linux"
    base.mkdir(parents=True)
    for number, (name, index) in nodes.items():
        node = base / f"video{number}"
        node.mkdir()
        (node / "name").write_text(name + "\n")
        (node / "index").write_text(index + "\n")
    return base


def record(path: Path, kind: str, settings: StreamSettings, frames: int) -> Path:
    """Write a real stream as a camera would send it: h264 (Annex-B), mjpeg, or raw yuyv422."""
    pattern = TestPattern(settings.width, settings.height)
    if kind == "yuyv422":
        with path.open("wb") as out:
            for index in range(frames):
                picture = pattern.render(index).reformat(format="yuyv422")
                out.write(bytes(picture.planes[0]))
        return path
    codec = {"h264": "libx264", "mjpeg": "mjpeg"}[kind]
    container: Any = av.open(str(path), "w", format=kind)
    stream = container.add_stream(codec, rate=settings.fps)
    stream.width, stream.height = settings.width, settings.height
    if kind == "mjpeg":
        stream.pix_fmt = "yuvj420p"
    else:
        stream.pix_fmt = "yuv420p"
        keyint = round(settings.fps * settings.keyframe_interval_s)
        stream.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": f"repeat-headers=1:keyint={keyint}:min-keyint={keyint}:scenecut=0",
        }
    for index in range(frames):
        picture = pattern.render(index)
        if kind == "mjpeg":
            picture = picture.reformat(format="yuvj420p")
        picture.pts = index
        picture.time_base = Fraction(1, settings.fps)
        for packet in stream.encode(picture):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


class PlaybackContainer:
    """A PyAV input container whose demux() is paced like a live camera."""

    def __init__(self, path: Path, kind: str, settings: StreamSettings, camera: RecordedCamera) -> None:
        if kind == "yuyv422":
            options = {
                "video_size": f"{settings.width}x{settings.height}",
                "pixel_format": "yuyv422",
                "framerate": str(settings.fps),
            }
            self._inner: Any = av.open(str(path), format="rawvideo", options=options)
        else:
            self._inner = av.open(str(path), format=kind)
        self.streams = self._inner.streams
        self._period = 1 / settings.fps
        self._camera = camera
        self.closed = False

    def demux(self, stream: Any) -> Iterator[Any]:
        deadline = time.monotonic()
        for index, packet in enumerate(self._inner.demux(stream)):
            if packet.size == 0:
                continue
            while self._camera.stalled.is_set() and not self.closed:
                time.sleep(0.01)  # VIDIOC_DQBUF blocking on a wedged camera
            if self._camera.unplugged.is_set():
                raise OSError(errno.ENODEV, "No such device")
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            deadline += self._period
            packet.pts = index
            packet.time_base = Fraction(1, round(1 / self._period))
            self._camera.packets_read.append(bytes(packet))
            yield packet

    def close(self) -> None:
        self.closed = True
        self._inner.close()


class RecordedCamera:
    """The `open_input` seam: a camera offering exactly the recorded formats."""

    def __init__(self, recordings: dict[str, Path]) -> None:
        self.recordings = recordings
        self.opened: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.packets_read: list[bytes] = []
        self.stalled = threading.Event()
        self.unplugged = threading.Event()
        self.controls: list[tuple[str, int, int]] = []
        self.controls_supported = True

    def __call__(self, device: str, input_format: str, settings: StreamSettings) -> PlaybackContainer:
        if self.unplugged.is_set():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", device)
        if input_format not in self.recordings:
            self.refused.append((device, input_format))
            raise av.error.FFmpegError(errno.EINVAL, "Cannot find a proper format")
        self.opened.append((device, input_format))
        return PlaybackContainer(self.recordings[input_format], input_format, settings, self)

    def set_control(self, device: str, control_id: int, value: int) -> None:
        """The `set_control` seam: most UVC cameras refuse FORCE_KEY_FRAME with EINVAL."""
        self.controls.append((device, control_id, value))
        if not self.controls_supported:
            raise OSError(errno.EINVAL, "Invalid argument")
