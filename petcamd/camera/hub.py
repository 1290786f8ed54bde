"""The frame hub: one camera, many viewers.

Each subscriber has a small bounded queue. Fan-out is a handful of deque appends on the event
loop thread, so a viewer that stops reading cannot hold up capture or anyone else: when its queue
overflows it loses what was queued and resumes at the next keyframe (a decoder cannot resume
anywhere else). Keyframe requests from joins, overflows and viewers' PLIs are coalesced and
rate-limited, because every IDR costs several times the bits of a normal frame.
The camera runs only while someone watches (plus a linger, so a page reload does not restart it),
unless `always_on` is set.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from petcamd.camera.health import (
    CameraState,
    CameraStatus,
    HealthSettings,
    SourceSupervisor,
    StatusListener,
)
from petcamd.camera.source import EncodedFrame, Source, SubscriptionClosedError

log = logging.getLogger(__name__)

__all__ = ["CameraState", "CameraStatus", "FrameHub", "HubSettings", "HubSubscription"]


@dataclass(frozen=True, slots=True)
class HubSettings:
    queue_frames: int = 30  # per subscriber; one second at 30 fps
    keyframe_min_interval_s: float = 0.5
    linger_s: float = 10.0  # keep the camera running this long after the last viewer leaves
    always_on: bool = False


class HubSubscription:
    """Implements `FrameSubscription`. The first frame it yields is always a keyframe."""

    def __init__(self, hub: FrameHub, name: str, maxlen: int) -> None:
        self.name = name
        self._hub = hub
        self._queue: collections.deque[EncodedFrame] = collections.deque()
        self._maxlen = max(1, maxlen)
        self._waiter: asyncio.Future[None] | None = None
        self._need_keyframe = True
        self._closed = False
        self.frames_delivered = 0
        self.frames_dropped = 0  # queued frames thrown away on overflow, and frames skipped after it
        self.overflows = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    def qsize(self) -> int:
        return len(self._queue)

    async def get(self) -> EncodedFrame:
        if not self._queue and self._need_keyframe and not self._closed:
            # Asked only by a reader: a viewer that stopped reading never triggers IDRs.
            self._hub.request_keyframe()
        while not self._queue:
            if self._closed:
                raise SubscriptionClosedError(self.name)
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        self.frames_delivered += 1
        return self._queue.popleft()

    def get_nowait(self) -> EncodedFrame:
        """Next queued frame; raises asyncio.QueueEmpty if none (SubscriptionClosedError if closed)."""
        if self._closed:
            raise SubscriptionClosedError(self.name)
        if not self._queue:
            raise asyncio.QueueEmpty
        self.frames_delivered += 1
        return self._queue.popleft()

    def request_keyframe(self) -> None:
        if not self._closed:
            self._hub.request_keyframe()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._wake()
        self._hub._remove(self)

    def _offer(self, frame: EncodedFrame) -> None:
        """Queue `frame`; runs on the loop thread for every frame, so it stays tiny."""
        if self._need_keyframe:
            if not frame.keyframe:
                return
            self._need_keyframe = False
        if len(self._queue) >= self._maxlen:
            self.overflows += 1
            self.frames_dropped += len(self._queue)
            self._queue.clear()
            if not frame.keyframe:
                self.frames_dropped += 1
                self._need_keyframe = True
                log.debug("subscriber %s overflowed; skipping to the next keyframe", self.name)
                return
        self._queue.append(frame)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class FrameHub:
    """Implements `FrameFeed`: fans one source out to subscribers and owns its lifecycle."""

    def __init__(
        self,
        source: Source,
        settings: HubSettings | None = None,
        health: HealthSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.source = source
        self.settings = settings or HubSettings()
        self._clock = clock
        self._subs: list[HubSubscription] = []
        self._listeners: list[StatusListener] = []
        self._supervisor = SourceSupervisor(
            source, self._on_frame, health, on_status=self._on_status, clock=clock, rng=rng
        )
        self._started = False
        self._stopped = False
        self._linger: asyncio.TimerHandle | None = None
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self._last_keyframe_request: float | None = None
        self.keyframe_requests = 0  # asked of the hub
        self.keyframes_requested = 0  # passed on to the source after coalescing

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started or self._stopped:
            return
        self._started = True
        self._supervisor.start()
        self._update_wanted()

    async def stop(self) -> None:
        """Close every subscription and stop the camera. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for sub in list(self._subs):
            sub.close()
        self._cancel_timers()
        await self._supervisor.close()

    # -- FrameFeed ------------------------------------------------------------------------------

    def subscribe(self, name: str) -> HubSubscription:
        sub = HubSubscription(self, name, self.settings.queue_frames)
        if self._stopped:
            sub._closed = True
            return sub
        self._subs.append(sub)
        log.debug("subscriber %s joined (%d now)", name, len(self._subs))
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._update_wanted()
        self.request_keyframe()
        return sub

    def request_keyframe(self) -> None:
        """Coalesced: at most one request reaches the source per `keyframe_min_interval_s`."""
        self.keyframe_requests += 1
        if not self._supervisor.running or self._keyframe_timer is not None:
            return  # a fresh start begins with an IDR anyway / one is already scheduled
        now = self._clock()
        last = self._last_keyframe_request
        wait = 0.0 if last is None else last + self.settings.keyframe_min_interval_s - now
        if wait <= 0:
            self._send_keyframe_request()
        else:
            loop = asyncio.get_running_loop()
            self._keyframe_timer = loop.call_later(wait, self._deferred_keyframe_request)

    # -- observation ----------------------------------------------------------------------------

    @property
    def state(self) -> CameraState:
        return self._supervisor.state

    @property
    def status(self) -> CameraStatus:
        return self._supervisor.status

    @property
    def frames_total(self) -> int:
        return self._supervisor.frames_total

    @property
    def last_frame_at(self) -> float | None:
        """Monotonic time of the last frame, or None before the first."""
        return self._supervisor.last_frame_at

    @property
    def supervisor(self) -> SourceSupervisor:
        return self._supervisor

    @property
    def subscribers(self) -> list[HubSubscription]:
        return list(self._subs)

    def pipeline_ok(self) -> bool:
        """For the systemd watchdog; see `SourceSupervisor.pipeline_ok`."""
        return self._supervisor.pipeline_ok()

    def add_state_listener(self, listener: StatusListener) -> Callable[[], None]:
        """Called on the loop thread on every state change; returns a function that unregisters."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    # -- internals ------------------------------------------------------------------------------

    def _on_frame(self, frame: EncodedFrame) -> None:
        if frame.keyframe and self._keyframe_timer is not None:
            self._keyframe_timer.cancel()  # this keyframe satisfies whatever was pending
            self._keyframe_timer = None
        for sub in self._subs:
            sub._offer(frame)

    def _send_keyframe_request(self) -> None:
        self._last_keyframe_request = self._clock()
        self.keyframes_requested += 1
        self._supervisor.request_keyframe()

    def _deferred_keyframe_request(self) -> None:
        self._keyframe_timer = None
        if self._supervisor.running:  # no keyframe has arrived since the request: send it now
            self._send_keyframe_request()

    def _remove(self, sub: HubSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            log.debug("subscriber %s left (%d now)", sub.name, len(self._subs))
        if not self._subs and not self._stopped and not self.settings.always_on:
            if self.settings.linger_s <= 0:
                self._update_wanted()
            elif self._linger is None and self._started:
                loop = asyncio.get_running_loop()
                self._linger = loop.call_later(self.settings.linger_s, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger = None
        self._update_wanted()

    def _update_wanted(self) -> None:
        if self._started and not self._stopped:
            wanted = self.settings.always_on or bool(self._subs) or self._linger is not None
            self._supervisor.set_wanted(wanted)

    def _on_status(self, status: CameraStatus) -> None:
        if status.state is not CameraState.STREAMING and self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
            self._keyframe_timer = None
        if status.state in (CameraState.STARTING, CameraState.RESTARTING):
            # A new encoder starts afresh, so nobody may resume mid-GOP from the old one.
            for sub in self._subs:
                sub._need_keyframe = True
        elif status.state is CameraState.STREAMING and any(s.waiting_for_keyframe for s in self._subs):
            # Most encoders open with an IDR anyway; a UVC camera joined mid-GOP may not.
            asyncio.get_running_loop().call_soon(self._request_if_waiting)
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.exception("camera state listener failed")

    def _request_if_waiting(self) -> None:
        if any(s.waiting_for_keyframe for s in self._subs):
            self.request_keyframe()

    def _cancel_timers(self) -> None:
        for timer in (self._linger, self._keyframe_timer):
            if timer is not None:
                timer.cancel()
        self._linger = None
        self._keyframe_timer = None
