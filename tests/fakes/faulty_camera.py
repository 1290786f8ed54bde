"""A camera that fails on cue, around a real source (the synthetic one, so frames are real H.264).

- `wedged`: frames stop while the encoder runs on, as when a sensor or a USB camera freezes
  (picamera2 reports nothing then; frames just stop). Restarting does not help until it clears.
- `unplugged`: frames stop, and starting fails with CameraMissingError, the message V4l2Source
  gives when /dev/videoN is gone, until it is plugged in again.
"""

from __future__ import annotations

from petcamd.camera.source import CameraMissingError, EncodedFrame, EncoderKind, FrameSink, Source


class FaultyCamera:
    """Implements `Source` by wrapping one."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.wedged = False
        self.unplugged = False
        self.starts = 0
        self.refused_starts = 0

    @property
    def description(self) -> str:
        return f"faulty {self.inner.description}"

    @property
    def encoder_kind(self) -> EncoderKind:
        return self.inner.encoder_kind

    async def start(self, sink: FrameSink) -> None:
        if self.unplugged:
            self.refused_starts += 1
            raise CameraMissingError("/dev/video0 does not exist; is the camera plugged in?")

        def deliver(frame: EncodedFrame) -> None:
            if not (self.wedged or self.unplugged):
                sink(frame)

        await self.inner.start(deliver)
        self.starts += 1

    async def stop(self) -> None:
        await self.inner.stop()

    def request_keyframe(self) -> None:
        self.inner.request_keyframe()
