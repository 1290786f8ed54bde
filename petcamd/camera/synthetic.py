"""The synthetic camera: a moving test pattern encoded with libx264, paced in real time.

It is the default when no camera is present (so the daemon runs anywhere) and the source the
tests and benchmarks use. Capture and encoding run on one dedicated thread; frames hop to the
event loop with call_soon_threadsafe, so the loop never waits on the encoder.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from petcamd.camera.encoder import H264Encoder, open_encoder
from petcamd.camera.handoff import hand_over, report_failure
from petcamd.camera.pattern import TestPattern
from petcamd.camera.source import EncodedFrame, EncoderKind, FailureSink, FrameSink, StreamSettings

log = logging.getLogger(__name__)


class SyntheticSource:
    """Implements `Source`. Start/stop may be repeated; each start opens a fresh encoder."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self._pattern = TestPattern(settings.width, settings.height)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._encoder: H264Encoder | None = None
        self._generation = 0
        self.frames_encoded = 0

    @property
    def description(self) -> str:
        s = self.settings
        return f"synthetic test pattern {s.width}x{s.height}@{s.fps} (libx264)"

    @property
    def encoder_kind(self) -> EncoderKind:
        return EncoderKind.SOFTWARE

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        encoder = await asyncio.to_thread(open_encoder, self.settings, prefer_hardware=False)
        self._generation += 1
        generation = self._generation
        self._encoder = encoder
        self._stopping = threading.Event()

        def deliver(frame: EncodedFrame) -> None:
            # A frame already queued on the loop when stop() ran must not reach the sink.
            if self._generation == generation and self._thread is not None:
                sink(frame)

        self._thread = threading.Thread(
            target=self._run,
            args=(encoder, loop, deliver, self._stopping, on_failure),
            name="petcamd-synthetic",
            daemon=True,
        )
        self._thread.start()
        log.info("started %s", self.description)

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._thread = None
        self._generation += 1
        self._encoder = None
        await asyncio.to_thread(thread.join)
        log.info("stopped %s", self.description)

    def present(self) -> bool:
        return True

    def request_keyframe(self) -> None:
        encoder = self._encoder
        if encoder is not None:
            encoder.request_keyframe()

    def _run(
        self,
        encoder: H264Encoder,
        loop: asyncio.AbstractEventLoop,
        deliver: FrameSink,
        stopping: threading.Event,
        on_failure: FailureSink | None,
    ) -> None:
        """Capture thread: one picture per frame period on a fixed monotonic grid (no drift)."""
        period_ns = 1_000_000_000 // self.settings.fps
        deadline = time.monotonic_ns()
        index = 0
        try:
            while not stopping.is_set():
                now = time.monotonic_ns()
                if now < deadline:
                    if stopping.wait((deadline - now) / 1e9):
                        break
                    now = time.monotonic_ns()
                timestamp_us = now // 1000
                picture = self._pattern.render(index)
                for frame in encoder.encode(picture, timestamp_us):
                    self.frames_encoded += 1
                    if not hand_over(loop, deliver, frame):
                        return
                index += 1
                deadline += period_ns
                behind = time.monotonic_ns() - deadline
                if behind > period_ns:
                    # Too slow to keep up: skip whole periods rather than burst to catch up.
                    deadline += (behind // period_ns) * period_ns
        except Exception as exc:
            log.exception("synthetic source failed; frames stop (health restarts the source)")
            report_failure(loop, on_failure, f"test pattern encoder failed: {exc}")
        finally:
            encoder.close()
