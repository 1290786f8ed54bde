"""A PyAV H.264 encoder shared by the synthetic source and the V4L2 raw-capture path.

It is driven by exactly one thread (the capture thread): PyAV codec contexts are not thread-safe,
and keeping the encoder off the event loop is the whole point. `request_keyframe()` is the only
method safe to call from elsewhere.
"""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from typing import Any

import av
import av.video.frame

from petcamd.camera.h264 import ParameterSetCache
from petcamd.camera.source import EncodedFrame, EncoderKind, SourceError, StreamSettings

log = logging.getLogger(__name__)

HARDWARE_CODEC = "h264_v4l2m2m"
SOFTWARE_CODEC = "libx264"

# FF_PROFILE_H264_CONSTRAINED_BASELINE: 66 | FF_PROFILE_H264_CONSTRAINED (1 << 9).
_CONSTRAINED_BASELINE = 66 | (1 << 9)


def _picture_type(name: str) -> Any:
    """PyAV >= 13 wants the PictureType enum; older versions take its name as a string."""
    try:
        from av.video.frame import PictureType
    except ImportError:  # PyAV < 13
        return name
    return getattr(PictureType, name)


PICTURE_TYPE_I = _picture_type("I")
PICTURE_TYPE_NONE = _picture_type("NONE")


def _keyint(settings: StreamSettings) -> int:
    return max(1, round(settings.fps * settings.keyframe_interval_s))


def _options(codec_name: str, settings: StreamSettings) -> dict[str, str]:
    keyint = _keyint(settings)
    if codec_name == SOFTWARE_CODEC:
        return {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": "baseline",
            "forced-idr": "1",
            "x264-params": f"repeat-headers=1:keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0",
        }
    # h264_v4l2m2m reads the generic AVCodecContext profile; it never repeats SPS/PPS on its own,
    # which ParameterSetCache makes up for.
    return {"profile": str(_CONSTRAINED_BASELINE)}


class H264Encoder:
    """One open PyAV H.264 encoder context producing one EncodedFrame per access unit."""

    def __init__(self, settings: StreamSettings, codec_name: str = SOFTWARE_CODEC) -> None:
        self.settings = settings
        self.codec_name = codec_name
        self.kind = EncoderKind.HARDWARE if codec_name == HARDWARE_CODEC else EncoderKind.SOFTWARE
        ctx: Any = av.CodecContext.create(codec_name, "w")
        ctx.width = settings.width
        ctx.height = settings.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, settings.fps)
        ctx.framerate = Fraction(settings.fps, 1)
        ctx.bit_rate = settings.bitrate
        ctx.gop_size = _keyint(settings)
        ctx.options = _options(codec_name, settings)
        ctx.open()
        self._ctx = ctx
        self._pts = 0
        self._timestamps: dict[int, int] = {}
        self._keyframe_wanted = threading.Event()
        self._parameter_sets = ParameterSetCache()

    def request_keyframe(self) -> None:
        self._keyframe_wanted.set()

    def encode(self, frame: av.VideoFrame, timestamp_us: int) -> list[EncodedFrame]:
        """Encode one picture captured at `timestamp_us` (camera clock)."""
        s = self.settings
        if frame.format.name != "yuv420p" or frame.width != s.width or frame.height != s.height:
            frame = frame.reformat(width=s.width, height=s.height, format="yuv420p")
        frame.pts = self._pts
        frame.time_base = self._ctx.time_base
        self._timestamps[self._pts] = timestamp_us
        self._pts += 1
        if self._keyframe_wanted.is_set():
            self._keyframe_wanted.clear()
            frame.pict_type = PICTURE_TYPE_I
        else:
            # Frames from a decoder (MJPEG) arrive typed I; pass them on as "encoder's choice".
            frame.pict_type = PICTURE_TYPE_NONE
        return self._collect(self._ctx.encode(frame))

    def flush(self) -> list[EncodedFrame]:
        try:
            return self._collect(self._ctx.encode(None))
        except av.error.EOFError:
            return []

    def _collect(self, packets: list[Any]) -> list[EncodedFrame]:
        out = []
        for packet in packets:
            data = bytes(packet)
            if not data:
                continue
            pts = packet.pts if packet.pts is not None else self._pts - 1
            timestamp_us = self._timestamps.pop(pts, None)
            if timestamp_us is None:
                timestamp_us = self._timestamps.pop(min(self._timestamps), 0) if self._timestamps else 0
            data, idr = self._parameter_sets.process(data)
            out.append(EncodedFrame(data, timestamp_us, idr))
        # Anything older than the newest output will never be matched (encoder dropped it).
        if out and len(self._timestamps) > 2 * self.settings.fps:
            self._timestamps.clear()
        return out

    def close(self) -> None:
        self._ctx = None


def open_encoder(settings: StreamSettings, *, prefer_hardware: bool) -> H264Encoder:
    """The Pi's hardware encoder when asked for and available, else libx264 (with a warning)."""
    if prefer_hardware:
        try:
            return H264Encoder(settings, HARDWARE_CODEC)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            log.warning(
                "hardware H.264 encoder %s unavailable (%s); falling back to %s in software",
                HARDWARE_CODEC,
                exc,
                SOFTWARE_CODEC,
            )
    try:
        return H264Encoder(settings, SOFTWARE_CODEC)
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise SourceError(f"cannot open the {SOFTWARE_CODEC} H.264 encoder: {exc}") from exc
