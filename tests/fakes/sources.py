"""Test wrappers around real sources: record what they emit, or make them fall silent."""

from __future__ import annotations

import time

from petcamd.camera.source import EncodedFrame, EncoderKind, FailureSink, FrameSink, Source


class RecordingSource:
    """Wraps a real source and records every frame it hands to the hub, with its arrival time.

    `frozen = True` swallows frames, as a wedged camera would, without stopping the encoder.
    """

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.frames: list[EncodedFrame] = []
        self.arrivals: list[float] = []  # time.monotonic() when the frame reached the hub
        self.frozen = False
        self.starts = 0
        self.stops = 0
        self.keyframe_requests = 0

    @property
    def description(self) -> str:
        return f"recording {self.inner.description}"

    @property
    def encoder_kind(self) -> EncoderKind:
        return self.inner.encoder_kind

    @property
    def running(self) -> bool:
        return self.starts > self.stops

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:
        def record(frame: EncodedFrame) -> None:
            if self.frozen:
                return
            self.frames.append(frame)
            self.arrivals.append(time.monotonic())
            sink(frame)

        await self.inner.start(record, on_failure)
        self.starts += 1

    async def stop(self) -> None:
        if self.running:
            self.stops += 1
        await self.inner.stop()

    def present(self) -> bool | None:
        return self.inner.present()

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self.inner.request_keyframe()
