"""Camera health: one long-lived task owns the source, notices stalls and restarts it.

picamera2 has no error callback and a USB camera can wedge silently, so "no frame for N seconds
while capture should run" is the only reliable failure signal. Restarts back off exponentially with
jitter; after `max_restarts` consecutive failures the state becomes FAILED and `pipeline_ok()` turns
False, so the supervisor stops the systemd watchdog pings and systemd restarts the whole daemon.
A camera that is simply absent is MISSING instead: a clear state, never a crash loop, and the
watchdog keeps being fed because restarting the daemon would not conjure a camera. While MISSING,
a source that can tell (`present()`, e.g. /dev/videoN exists) is asked twice a second and started
the moment its camera is back; one that cannot is re-probed by starting it every 30 s.
A source that reports its capture died (`on_failure`, e.g. the USB camera was unplugged) is
restarted at once rather than after the stall timeout; if its camera is gone, that is MISSING
too and counts as no failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from petcamd.camera.source import (
    CameraMissingError,
    EncodedFrame,
    FrameSink,
    Source,
    SourceError,
)

log = logging.getLogger(__name__)


class CameraState(enum.Enum):
    IDLE = "idle"  # nobody watching: the camera is off on purpose
    STARTING = "starting"
    STREAMING = "streaming"
    STALLED = "stalled"  # frames stopped; a restart follows
    RESTARTING = "restarting"
    FAILED = "failed"  # recovery gave up: the watchdog stops, systemd restarts the daemon
    MISSING = "missing"  # no camera: reported, re-probed now and then, never a crash loop


@dataclass(frozen=True, slots=True)
class CameraStatus:
    state: CameraState
    detail: str
    since: float  # monotonic seconds
    restarts: int  # consecutive failed (re)starts so far

    def summary(self) -> str:
        """One line for STATUS= and `petcamctl status`."""
        return f"camera {self.state.value}: {self.detail}" if self.detail else f"camera {self.state.value}"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    stall_timeout_s: float = 5.0
    first_frame_timeout_s: float = 10.0  # a Pi camera can take seconds to deliver its first frame
    start_timeout_s: float = 15.0  # a start() that hangs counts as a failure
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    max_restarts: int = 5  # consecutive failures before FAILED
    healthy_after_s: float = 30.0  # a restart counts as a recovery once frames flowed this long
    missing_reprobe_s: float = 30.0  # for sources whose present() cannot tell
    presence_poll_s: float = 0.5  # for sources that can


class Backoff:
    """Exponential backoff with "equal jitter": delay in [d/2, d], d = min(cap, initial * 2**n).

    Jitter keeps a fleet of devices (or a camera and a USB hub resetting together) from retrying
    in lockstep; the lower half-bound keeps the growth meaningful.
    """

    def __init__(self, initial_s: float, cap_s: float, rng: Callable[[], float] = random.random) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.attempts = 0
        self._rng = rng

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.initial_s * float(2**self.attempts))
        self.attempts += 1
        return ceiling * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self.attempts = 0


StatusListener = Callable[[CameraStatus], None]


class SourceSupervisor:
    """Owns one source: runs it while wanted, watches its frames, restarts it when it stalls.

    Every start and stop of the source happens on this one task, so a viewer leaving during a
    restart cannot race the restart.
    """

    def __init__(
        self,
        source: Source,
        sink: FrameSink,
        settings: HealthSettings | None = None,
        *,
        on_status: StatusListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.source = source
        self.settings = settings or HealthSettings()
        self._sink = sink
        self._on_status = on_status
        self._clock = clock
        self._backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s, rng)
        self._status = CameraStatus(CameraState.IDLE, "", clock(), 0)
        self._wanted = False
        self._closed = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running = False  # source.start() succeeded and stop() not yet called
        self._generation = 0
        self._started_at = 0.0
        self._got_frame = False
        self._failures = 0
        self._gave_up = False
        self._failure_detail = ""
        self._source_failed: str | None = None  # what the running source reported, if it did
        self._streaming_since = 0.0
        self.last_frame_at: float | None = None
        self.frames_total = 0
        self.restarts_total = 0

    # -- public ---------------------------------------------------------------------------------

    @property
    def status(self) -> CameraStatus:
        return self._status

    @property
    def state(self) -> CameraState:
        return self._status.state

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="camera-supervisor")

    async def close(self) -> None:
        """Stop the source and the task. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # A crash was logged where it happened; stopping must still release the camera.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running = False
        self._generation += 1
        await self._stop_quietly()  # also when cancelled halfway through start()
        if not self._gave_up:
            self._set(CameraState.IDLE, "stopped")

    def set_wanted(self, wanted: bool) -> None:
        if wanted != self._wanted:
            self._wanted = wanted
            self._changed.set()

    def request_keyframe(self) -> None:
        if self._running:
            self.source.request_keyframe()

    def pipeline_ok(self) -> bool:
        """For the systemd watchdog: False only when recovery has given up (or this task died)."""
        if self._gave_up:
            return False
        if self._task is not None and self._task.done():
            return False
        if self._status.state is CameraState.STREAMING and self.last_frame_at is not None:
            # Belt and braces: frames must really be flowing, whatever the state machine thinks.
            limit = self.settings.stall_timeout_s * 2 + self.settings.backoff_max_s
            return self._clock() - self.last_frame_at < limit
        return True

    # -- the task -------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closed:
                if not self._wanted:
                    await self._stop_source()
                    if not self._gave_up:
                        self._set(CameraState.IDLE, "no viewers")
                    await self._sleep(None, until=lambda: self._wanted)
                    continue
                outcome = await self._start_source()
                if outcome == "missing":
                    await self._await_camera()
                    continue
                if outcome == "started":
                    outcome = await self._watch()
                    if outcome not in ("stalled", "failed"):
                        continue  # unwanted or closed: handled at the top of the loop
                await self._stop_source()
                if outcome == "failed" and self.source.present() is False:
                    log.warning("camera gone: %s", self._failure_detail)
                    self._set(CameraState.MISSING, self._failure_detail)
                    await self._await_camera()
                    continue
                await self._back_off(outcome)
        except Exception:
            log.exception("camera supervisor crashed")
            self._set(CameraState.FAILED, "internal error in the camera supervisor")
            raise

    async def _start_source(self) -> str:
        if self._gave_up:  # still trying, slowly, but the watchdog stays off until it holds
            self._set(CameraState.FAILED, f"retrying: {self._failure_detail}")
        elif self._failures == 0:
            self._set(CameraState.STARTING, self.source.description)
        else:
            self._set(CameraState.RESTARTING, f"attempt {self._failures + 1}: {self.source.description}")
        self._generation += 1
        generation = self._generation
        self._got_frame = False
        self._source_failed = None

        def on_frame(frame: EncodedFrame) -> None:
            if generation == self._generation:
                self._frame_arrived(frame)

        def on_failure(reason: str) -> None:
            if generation == self._generation and self._source_failed is None:
                self._source_failed = reason or "capture ended"
                self._changed.set()

        try:
            await asyncio.wait_for(self.source.start(on_frame, on_failure), self.settings.start_timeout_s)
        except CameraMissingError as exc:
            log.warning("camera missing: %s", exc)
            await self._stop_quietly()
            self._set(CameraState.MISSING, str(exc))
            return "missing"
        except (SourceError, TimeoutError) as exc:
            reason = str(exc) or "start() timed out"
            log.warning("camera failed to start: %s", reason)
            await self._stop_quietly()
            self._failure_detail = f"start failed: {reason}"
            return "start-failed"
        self._running = True
        self._started_at = self._clock()
        return "started"

    async def _watch(self) -> str:
        """Wait while frames flow: "stalled", "failed" (the source said so), or "changed" when
        wanted/closed changed."""
        while True:
            if self._closed or not self._wanted:
                return "changed"
            if self._source_failed is not None:
                self._failure_detail = f"capture failed: {self._source_failed}"
                log.warning("camera %s", self._failure_detail)
                self._set(CameraState.STALLED, self._failure_detail)
                return "failed"
            if self._got_frame and self.last_frame_at is not None:
                deadline = self.last_frame_at + self.settings.stall_timeout_s
                if self._failures or self._gave_up:
                    healthy_at = self._streaming_since + self.settings.healthy_after_s
                    if self._clock() >= healthy_at:
                        self._recovered()
                    else:
                        deadline = min(deadline, healthy_at)
            else:
                deadline = self._started_at + self.settings.first_frame_timeout_s
            remaining = deadline - self._clock()
            if remaining <= 0:
                if self._got_frame:
                    silent = self._clock() - (self.last_frame_at or self._started_at)
                    self._failure_detail = f"no frame for {silent:.1f} s"
                else:
                    self._failure_detail = (
                        f"no first frame within {self.settings.first_frame_timeout_s:.1f} s"
                    )
                log.warning("camera stalled: %s", self._failure_detail)
                self._set(CameraState.STALLED, self._failure_detail)
                return "stalled"
            await self._wait_for_change(remaining, until=self._unwanted)

    async def _back_off(self, outcome: str) -> None:
        self._failures += 1
        self.restarts_total += 1
        detail = self._failure_detail or outcome
        delay = self._backoff.next_delay()
        if self._failures > self.settings.max_restarts:
            if not self._gave_up:
                log.error(
                    "camera did not recover after %d restarts (%s); giving up", self._failures - 1, detail
                )
            self._gave_up = True
            self._set(CameraState.FAILED, f"{detail}; next try in {delay:.1f} s")
        else:
            self._set(CameraState.RESTARTING, f"{detail}; restart {self._failures} in {delay:.1f} s")
        await self._sleep(delay, until=self._unwanted)

    def _frame_arrived(self, frame: EncodedFrame) -> None:
        self.frames_total += 1
        self.last_frame_at = self._clock()
        if not self._got_frame:
            self._got_frame = True
            self._streaming_since = self.last_frame_at
            note = " (recovering)" if self._failures or self._gave_up else ""
            self._set(CameraState.STREAMING, self.source.description + note)
            self._changed.set()  # the watch switches from the first-frame to the stall deadline
        self._sink(frame)

    def _recovered(self) -> None:
        log.info(
            "camera recovered: frames flowed for %.0f s after %d restart(s)",
            self.settings.healthy_after_s,
            self._failures,
        )
        self._failures = 0
        self._gave_up = False
        self._backoff.reset()
        self._set(CameraState.STREAMING, self.source.description)

    async def _await_camera(self) -> None:
        """While MISSING: return once the camera is back (or it is time to re-probe), or unwanted."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.settings.missing_reprobe_s
        can_tell = self.source.present() is not None
        # Wait before each check, so a source whose present() and start() disagree is retried
        # twice a second, not in a busy loop.
        while not self._unwanted() and not self._closed:
            remaining = end - loop.time()
            if remaining <= 0:
                return
            await self._wait_for_change(
                min(remaining, self.settings.presence_poll_s) if can_tell else remaining, until=self._unwanted
            )
            if can_tell and self.source.present():
                log.info("camera is back: %s", self.source.description)
                return

    # -- helpers --------------------------------------------------------------------------------

    def _unwanted(self) -> bool:
        return not self._wanted

    async def _wait_for_change(self, seconds: float | None, *, until: Callable[[], bool]) -> None:
        """Return on any change (a first frame, wanted, closed), after `seconds`, or if `until()`."""
        # clear() and the check run with no await in between, so no change can slip by unseen.
        self._changed.clear()
        if until() or self._closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    async def _sleep(self, seconds: float | None, *, until: Callable[[], bool]) -> None:
        """Sleep the full `seconds` (None: forever), cut short only once `until()` holds."""
        loop = asyncio.get_running_loop()
        end = None if seconds is None else loop.time() + seconds
        while not until() and not self._closed:
            remaining = None if end is None else end - loop.time()
            if remaining is not None and remaining <= 0:
                return
            await self._wait_for_change(remaining, until=until)

    async def _stop_source(self) -> None:
        if not self._running:
            return
        self._running = False
        self._generation += 1
        await self._stop_quietly()

    async def _stop_quietly(self) -> None:
        try:
            await self.source.stop()
        except Exception:
            log.exception("stopping the camera source failed")

    def _set(self, state: CameraState, detail: str) -> None:
        old = self._status
        if old.state is state and old.detail == detail and old.restarts == self._failures:
            return
        since = old.since if old.state is state else self._clock()
        self._status = CameraStatus(state, detail, since, self._failures)
        if old.state is not state:
            log.info("camera state %s -> %s (%s)", old.state.value, state.value, detail)
        if self._on_status is not None:
            self._on_status(self._status)
