"""Recording what a viewer receives to MP4, without decoding or re-encoding it.

The H.264 access units are taken where aiortc's receiver hands them to its decoder (after
depacketization and jitter buffering, before decoding), so the file holds the device encoder's
bytes, NAL unit for NAL unit, with the RTP timestamps as presentation times.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiortc.codecs import h264 as aiortc_h264

from petcamd.camera.h264 import NalType, nal_types

log = logging.getLogger(__name__)

RTP_CLOCK = 90_000
_TIME_BASE = Fraction(1, RTP_CLOCK)
_RTP_WRAP = 1 << 32

AccessUnitSink = Callable[[bytes, int], None]
"""(Annex-B access unit, 32-bit RTP timestamp), called on aiortc's decoder thread."""


class RecordingError(Exception):
    """The recording could not be written; the message names the file and the cause."""


class Mp4Recorder:
    """Muxes Annex-B access units into an MP4 file. Thread-safe; starts at the first IDR."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._container: Any = None
        self._stream: Any = None
        self._probe: Any = None
        self._first_ts: int | None = None
        self._last_ts = 0
        self._unwrapped = 0
        self._last_pts = -1
        self.packets = 0
        self.skipped = 0
        self.error: str | None = None
        self._closed = False

    def write(self, access_unit: bytes, rtp_timestamp: int) -> None:
        with self._lock:
            if self._closed or self.error is not None:
                return
            try:
                self._write(access_unit, rtp_timestamp)
            except (av.FFmpegError, OSError, ValueError) as exc:
                self.error = f"cannot record to {self.path}: {exc}"
                log.warning("%s", self.error)

    def _write(self, access_unit: bytes, rtp_timestamp: int) -> None:
        types = nal_types(access_unit)
        keyframe = NalType.IDR in types
        if self._container is None:
            if not keyframe or NalType.SPS not in types:
                self.skipped += 1  # a decoder (and a player) can start only at an IDR with its SPS
                return
            self._open(access_unit)
        packet = av.Packet(access_unit)
        pts = max(self._pts(rtp_timestamp), self._last_pts + 1)
        self._last_pts = pts
        packet.pts = packet.dts = pts
        packet.time_base = _TIME_BASE
        packet.stream = self._stream
        with contextlib.suppress(AttributeError):  # read-only before PyAV 11: movenc finds IDRs itself
            packet.is_keyframe = keyframe
        self._container.mux(packet)
        self.packets += 1

    def _pts(self, rtp_timestamp: int) -> int:
        """90 kHz ticks since the first recorded frame, across 32-bit RTP timestamp wraps."""
        if self._first_ts is None:
            self._first_ts = self._last_ts = rtp_timestamp
            return 0
        delta = (rtp_timestamp - self._last_ts) % _RTP_WRAP
        if delta >= _RTP_WRAP // 2:  # reordered or repeated: treat as a step back
            delta -= _RTP_WRAP
        self._last_ts = rtp_timestamp
        self._unwrapped += delta
        return self._unwrapped

    def _open(self, first_keyframe: bytes) -> None:
        # The stream's parameters (size, SPS/PPS for the avcC box) come from parsing the first IDR
        # as a raw H.264 input: a template stream, so no encoder is ever opened.
        self._probe = av.open(io.BytesIO(first_keyframe), format="h264")
        template = self._probe.streams.video[0]
        self._container = av.open(str(self.path), "w", format="mp4")
        add_from_template = getattr(self._container, "add_stream_from_template", None)
        if add_from_template is not None:  # PyAV >= 14
            self._stream = add_from_template(template)
        else:
            self._stream = self._container.add_stream(template=template)

    def close(self) -> int:
        """Finish the file; returns the number of packets written (0: no file was created)."""
        with self._lock:
            if self._closed:
                return self.packets
            self._closed = True
            try:
                if self._container is not None:
                    self._container.close()
            except (av.FFmpegError, OSError) as exc:
                self.error = f"cannot finish {self.path}: {exc}"
            finally:
                if self._probe is not None:
                    self._probe.close()
        if self.error is not None:
            raise RecordingError(self.error)
        return self.packets


class _DecoderInputTap:
    """Routes what aiortc's H.264 decoders are fed to one sink.

    aiortc has no public hook between its jitter buffer and its decoder, so the decoder's
    ``decode`` method is wrapped while a recording runs. Its decoder threads are not tied to a
    peer connection we could name, hence one recording per process at a time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sink: AccessUnitSink | None = None
        self._original: Any = None

    @contextlib.contextmanager
    def routed_to(self, sink: AccessUnitSink) -> Iterator[None]:
        with self._lock:
            if self._sink is not None:
                raise RecordingError("another recording is running in this process")
            self._sink = sink
            self._original = aiortc_h264.H264Decoder.decode
            original = self._original
            tap = self

            def decode(decoder: Any, encoded_frame: Any) -> Any:
                current = tap._sink
                if current is not None:
                    current(bytes(encoded_frame.data), int(encoded_frame.timestamp))
                return original(decoder, encoded_frame)

            setattr(aiortc_h264.H264Decoder, "decode", decode)  # noqa: B010 - wrapping a method
        try:
            yield
        finally:
            with self._lock:
                setattr(aiortc_h264.H264Decoder, "decode", self._original)  # noqa: B010
                self._sink = None
                self._original = None


decoder_input = _DecoderInputTap()
