"""SourceSupervisor policy with scripted sources: start failures, hangs, backoff, unplugging, watchdog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from petcamd.camera.health import Backoff, CameraState, CameraStatus, HealthSettings, SourceSupervisor
from petcamd.camera.source import (
    CameraMissingError,
    EncodedFrame,
    EncoderKind,
    FailureSink,
    FrameSink,
    SourceError,
)

FAST = HealthSettings(
    stall_timeout_s=0.3,
    first_frame_timeout_s=0.5,
    start_timeout_s=0.3,
    backoff_initial_s=0.02,
    backoff_max_s=0.05,
    max_restarts=2,
    missing_reprobe_s=0.1,
    healthy_after_s=0.2,
)


class ScriptedSource:
    """A source whose start() follows a script: "ok", "fail", "hang"; "ok" emits frames."""

    description = "scripted"
    encoder_kind = EncoderKind.SOFTWARE

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.starts = 0
        self.stops = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:
        step = self.script[min(self.starts, len(self.script) - 1)]
        self.starts += 1
        if step == "fail":
            raise SourceError("sensor i2c timeout")
        if step == "hang":
            await asyncio.sleep(3600)
        self._task = asyncio.ensure_future(self._emit(sink))

    async def _emit(self, sink: FrameSink) -> None:
        while True:
            sink(EncodedFrame(b"\x00\x00\x00\x01\x65", time.monotonic_ns() // 1000, keyframe=True))
            await asyncio.sleep(1 / 30)

    async def stop(self) -> None:
        self.stops += 1
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def present(self) -> bool | None:
        return None

    def request_keyframe(self) -> None:
        pass


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    low = Backoff(1.0, 8.0, rng=lambda: 0.0)
    high = Backoff(1.0, 8.0, rng=lambda: 1.0)
    assert [low.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [high.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    high.reset()
    assert high.next_delay() == 1.0


async def test_start_failures_back_off_then_give_up_then_recover() -> None:
    source = ScriptedSource(["fail", "hang", "fail", "fail", "ok"])
    statuses: list[CameraStatus] = []
    frames: list[EncodedFrame] = []
    supervisor = SourceSupervisor(source, frames.append, FAST, on_status=statuses.append)
    supervisor.start()
    supervisor.set_wanted(True)
    await wait_until(lambda: supervisor.state is CameraState.FAILED)
    assert not supervisor.pipeline_ok()
    assert "start failed" in supervisor.status.detail
    await wait_until(lambda: supervisor.pipeline_ok() and supervisor.state is CameraState.STREAMING)
    assert frames
    assert source.starts == 5
    assert supervisor.restarts_total == 4
    states = [s.state for s in statuses]
    assert states[0] is CameraState.STARTING
    assert CameraState.RESTARTING in states
    await supervisor.close()
    await supervisor.close()
    assert source.stops >= source.starts - 1


async def test_idle_is_healthy_and_wanting_starts_and_stops() -> None:
    source = ScriptedSource(["ok"])
    supervisor = SourceSupervisor(source, lambda _: None, FAST)
    supervisor.start()
    await asyncio.sleep(0.05)
    assert supervisor.state is CameraState.IDLE
    assert supervisor.pipeline_ok()
    assert source.starts == 0
    supervisor.set_wanted(True)
    await wait_until(lambda: supervisor.state is CameraState.STREAMING)
    supervisor.set_wanted(False)
    await wait_until(lambda: supervisor.state is CameraState.IDLE)
    assert source.stops == 1
    assert supervisor.pipeline_ok()
    await supervisor.close()


async def test_close_during_a_hanging_start_returns_promptly() -> None:
    source = ScriptedSource(["hang"])
    supervisor = SourceSupervisor(source, lambda _: None, HealthSettings(start_timeout_s=60))
    supervisor.start()
    supervisor.set_wanted(True)
    await wait_until(lambda: source.starts == 1)
    began = time.monotonic()
    await supervisor.close()
    assert time.monotonic() - began < 1.0
    assert source.stops == 1


class UnpluggableSource(ScriptedSource):
    """Streams until unplugged, like a USB camera: the capture reports its failure, and starting
    fails with CameraMissingError until it is back. `can_tell=False` is a source whose present()
    cannot say (picamera2)."""

    def __init__(self, *, can_tell: bool = True) -> None:
        super().__init__(["ok"])
        self.attached = True
        self.can_tell = can_tell
        self._on_failure: FailureSink | None = None

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:
        if not self.attached:
            self.starts += 1
            raise CameraMissingError("/dev/video0 does not exist; is the camera plugged in?")
        await super().start(sink, on_failure)
        self._on_failure = on_failure

    def unplug(self, *, gone: bool = True) -> None:
        self.attached = not gone
        if self._task is not None:
            self._task.cancel()
        failed, self._on_failure = self._on_failure, None
        if failed is not None:
            failed("[Errno 19] No such device")

    def present(self) -> bool | None:
        return self.attached if self.can_tell else None


SLOW_STALL = HealthSettings(
    stall_timeout_s=30.0,  # far longer than these tests wait: only the failure report can act
    first_frame_timeout_s=30.0,
    backoff_initial_s=0.02,
    backoff_max_s=0.05,
    missing_reprobe_s=60.0,
    presence_poll_s=0.05,
)


async def test_unplugged_camera_is_missing_at_once_and_streams_the_moment_it_is_back() -> None:
    source = UnpluggableSource()
    statuses: list[CameraStatus] = []
    supervisor = SourceSupervisor(source, lambda _: None, SLOW_STALL, on_status=statuses.append)
    supervisor.start()
    supervisor.set_wanted(True)
    await wait_until(lambda: supervisor.state is CameraState.STREAMING)
    source.unplug()
    await wait_until(lambda: supervisor.state is CameraState.MISSING)
    assert "No such device" in supervisor.status.detail
    assert supervisor.restarts_total == 0  # gone is not broken: no backoff, no step towards FAILED
    assert supervisor.pipeline_ok()
    starts = source.starts
    await asyncio.sleep(0.3)
    assert source.starts == starts  # absent: present() is asked, start() is not
    source.attached = True
    await wait_until(lambda: supervisor.state is CameraState.STREAMING, limit_s=5.0)  # not the 60 s re-probe
    assert CameraState.FAILED not in {s.state for s in statuses}
    await supervisor.close()


async def test_a_reported_failure_with_the_camera_still_there_restarts_it_without_waiting_for_a_stall() -> (
    None
):
    source = UnpluggableSource()
    supervisor = SourceSupervisor(source, lambda _: None, SLOW_STALL)
    supervisor.start()
    supervisor.set_wanted(True)
    await wait_until(lambda: supervisor.state is CameraState.STREAMING)
    source.unplug(gone=False)  # a read error on a camera that is still attached
    await wait_until(lambda: source.starts == 2)
    await wait_until(lambda: supervisor.state is CameraState.STREAMING)
    assert supervisor.restarts_total == 1
    assert source.stops >= 1
    await supervisor.close()


async def test_a_source_that_cannot_tell_is_re_probed_on_the_timer() -> None:
    source = UnpluggableSource(can_tell=False)
    settings = HealthSettings(
        stall_timeout_s=30.0, backoff_initial_s=0.02, backoff_max_s=0.05, missing_reprobe_s=0.3
    )
    supervisor = SourceSupervisor(source, lambda _: None, settings)
    supervisor.start()
    supervisor.set_wanted(True)
    await wait_until(lambda: supervisor.state is CameraState.STREAMING)
    source.unplug()
    await wait_until(lambda: supervisor.state is CameraState.MISSING)
    await wait_until(lambda: source.starts >= 4)  # start() every 0.3 s: the only way to know
    source.attached = True
    await wait_until(lambda: supervisor.state is CameraState.STREAMING)
    await supervisor.close()
