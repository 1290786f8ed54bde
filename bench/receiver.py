"""The viewing side, in its own process: aiortc viewers that decode every frame they receive.

Viewers offer like a browser (receive only, VP8 and H.264; the sender picks H.264) with no ICE
servers. Times are `time.monotonic()`, CLOCK_MONOTONIC, which every process on the machine shares,
so the orchestrator can compare them with its own and with the sender's.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import time
from pathlib import Path
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from bench.harness import Json
from petcamd.viewer.client import pair, watch
from petcamd.viewer.state import PairedDevice, ViewerState


class ViewerFailedError(Exception):
    """A viewer session ended with an error instead of video."""


class BenchViewer:
    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.frames: list[float] = []  # monotonic time of each decoded frame
        self.sizes: set[tuple[int, int]] = set()
        self.first_frame = asyncio.Event()
        self.offer_started: float | None = None
        self.connected_at: float | None = None
        self._consumer: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()

    def _on_track(self, track: Any) -> None:
        self._consumer = asyncio.ensure_future(self._consume(track))

    async def _consume(self, track: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                self.frames.append(time.monotonic())
                self.sizes.add((frame.width, frame.height))
                self.first_frame.set()

    async def offer(self) -> str:
        self.offer_started = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        await self.pc.close()


class ReceiverRole:
    def __init__(self) -> None:
        self.viewers: dict[str, BenchViewer] = {}
        self._next = 0
        self._state: ViewerState | None = None
        self._device: PairedDevice | None = None
        self._watches: list[asyncio.Task[Any]] = []
        self._stop_watching = asyncio.Event()

    async def op_offer(self, n: int = 1) -> Json:
        ids: list[str] = []
        offers: list[str] = []
        for _ in range(n):
            self._next += 1
            viewer_id = f"v{self._next}"
            viewer = BenchViewer()
            self.viewers[viewer_id] = viewer
            offers.append(await viewer.offer())
            ids.append(viewer_id)
        return {"ids": ids, "offers": offers}

    async def op_accept(self, ids: list[str], answers: list[str]) -> Json:
        for viewer_id, answer in zip(ids, answers, strict=True):
            await self.viewers[viewer_id].pc.setRemoteDescription(
                RTCSessionDescription(sdp=answer, type="answer")
            )
        return {}

    async def op_wait_first(self, ids: list[str], within: float = 10.0) -> Json:
        """Times of offer, connection and first decoded frame; a viewer without a frame is an error."""
        viewers = [self.viewers[i] for i in ids]
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*(v.first_frame.wait() for v in viewers))
        except TimeoutError:
            missing = [i for i, v in zip(ids, viewers, strict=True) if not v.frames]
            raise RuntimeError(f"no decoded frame within {within:g} s for viewer(s) {missing}") from None
        return {
            viewer_id: {
                "offer_started": v.offer_started,
                "connected": v.connected_at,
                "first_frame": v.frames[0],
                "sizes": sorted(v.sizes),
            }
            for viewer_id, v in zip(ids, viewers, strict=True)
        }

    async def op_frames(self, t0: float, t1: float) -> Json:
        """Frames each viewer decoded between t0 and t1 (monotonic seconds)."""
        return {
            viewer_id: {
                "frames": bisect.bisect_right(v.frames, t1) - bisect.bisect_left(v.frames, t0),
                "sizes": sorted(v.sizes),
            }
            for viewer_id, v in self.viewers.items()
        }

    async def op_close(self) -> Json:
        viewers = list(self.viewers.values())
        self.viewers.clear()
        await asyncio.gather(*(v.close() for v in viewers))
        return {}

    # --- the real viewer client, against the real daemon (memory benchmark) ---------------------

    async def op_pair(self, url: str, directory: str) -> Json:
        self._state = ViewerState(Path(directory))
        self._device = await pair(self._state, url, "benchmark")
        return {"peer_id": self._device.peer_id}

    async def op_watch(self, n: int) -> Json:
        """Start `n` more sessions of the paired viewer; they watch until `watch_stop`."""
        if self._state is None or self._device is None:
            raise RuntimeError("pair first")
        for _ in range(n):
            self._watches.append(
                asyncio.create_task(watch(self._state, self._device, stop=self._stop_watching))
            )
        return {"watching": len(self._watches)}

    async def op_watch_stop(self, within: float = 15.0) -> Json:
        self._stop_watching.set()
        _, pending = await asyncio.wait(self._watches, timeout=within)
        if pending:
            stacks = io.StringIO()
            for task in pending:
                task.print_stack(file=stacks)
            raise ViewerFailedError(
                f"{len(pending)} viewer(s) did not stop within {within:g} s:\n{stacks.getvalue()}"
            )
        results = await asyncio.gather(*self._watches, return_exceptions=True)
        self._watches.clear()
        self._stop_watching = asyncio.Event()
        out: list[Json] = []
        for result in results:
            if isinstance(result, BaseException):
                raise ViewerFailedError(f"a viewer failed: {type(result).__name__}: {result}")
            out.append(result.to_json())
        return {"results": out}

    async def aclose(self) -> None:
        self._stop_watching.set()
        for task in self._watches:
            with contextlib.suppress(Exception):
                await task
        await self.op_close()
