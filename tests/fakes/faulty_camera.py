"""A camera that fails on cue, around a real source (the synthetic one, so frames are real H.264).

It behaves as petcamd/camera/v4l2.py's V4l2Source does with a real USB camera:
- `wedged`: frames stop while the encoder runs on, as when a sensor or a USB camera freezes
  (nothing is reported then; frames just stop). Restarting does not help until it clears.
- `unplugged`: the running capture ends at once and reports it through `on_failure` (the capture
  thread's read fails with ENODEV), `present()` is False (/dev/videoN is gone) and starting fails
  with CameraMissingError, V4l2Source's message, until it is plugged in again. A capture that was
  running when the camera was pulled never delivers again, even after the replug.
"""

from __future__ import annotations

import asyncio

from petcamd.camera.source import (
    CameraMissingError,
    EncodedFrame,
    EncoderKind,
    FailureSink,
    FrameSink,
    Source,
)


class FaultyCamera:
    """Implements `Source` by wrapping one."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.wedged = False
        self._unplugged = False
        self._capture = 0  # which start() is live; an unplug ends it for good
        self._on_failure: FailureSink | None = None
        self.starts = 0
        self.refused_starts = 0

    @property
    def description(self) -> str:
        return f"faulty {self.inner.description}"

    @property
    def encoder_kind(self) -> EncoderKind:
        return self.inner.encoder_kind

    @property
    def unplugged(self) -> bool:
        return self._unplugged

    @unplugged.setter
    def unplugged(self, value: bool) -> None:
        if value and not self._unplugged:
            self._capture += 1
            failure, self._on_failure = self._on_failure, None
            if failure is not None:
                asyncio.get_running_loop().call_soon(
                    failure, "capture from /dev/video0 failed: [Errno 19] No such device"
                )
        self._unplugged = value

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:
        if self._unplugged:
            self.refused_starts += 1
            raise CameraMissingError("/dev/video0 does not exist; is the camera plugged in?")
        self._capture += 1
        capture = self._capture

        def deliver(frame: EncodedFrame) -> None:
            if capture == self._capture and not self.wedged:
                sink(frame)

        await self.inner.start(deliver)
        self._on_failure = on_failure
        self.starts += 1

    async def stop(self) -> None:
        self._on_failure = None
        await self.inner.stop()

    def present(self) -> bool:
        return not self._unplugged

    def request_keyframe(self) -> None:
        self.inner.request_keyframe()
