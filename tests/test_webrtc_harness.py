"""Shared pieces of the WebRTC tests (this module holds no tests).

The device side is the real thing: SyntheticSource (libx264) -> FrameHub -> SessionManager. The
viewer is a real aiortc peer that offers like a browser (VP8 and H.264, receive only) and decodes
with aiortc's own receiver. Taps on both ends record the frames handed to the passthrough track
and the depacketized access units aiortc's receiver feeds its decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import h264 as aiortc_h264

from petcamd.camera.h264 import iter_nal_units
from petcamd.camera.health import HealthSettings
from petcamd.camera.hub import FrameHub, HubSettings
from petcamd.camera.source import EncodedFrame, FrameSubscription, StreamSettings
from petcamd.camera.synthetic import SyntheticSource
from petcamd.webrtc.sessions import SessionManager
from tests.fakes.sources import RecordingSource


@contextlib.asynccontextmanager
async def running_hub(
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    bitrate: int = 400_000,
    keyframe_interval_s: float = 2.0,
    keyframe_min_interval_s: float = HubSettings().keyframe_min_interval_s,
) -> AsyncIterator[tuple[FrameHub, RecordingSource]]:
    """A camera that keeps running between viewers, so every join lands mid-GOP.

    The hub's keyframe rate limit is the production default: viewers joining within it of each
    other wait for the deferred IDR, so tests that time joins space them out by more than that.
    """
    settings = StreamSettings(
        width=width, height=height, fps=fps, bitrate=bitrate, keyframe_interval_s=keyframe_interval_s
    )
    source = RecordingSource(SyntheticSource(settings))
    hub = FrameHub(
        source,
        HubSettings(
            queue_frames=30, keyframe_min_interval_s=keyframe_min_interval_s, linger_s=0.0, always_on=True
        ),
        HealthSettings(stall_timeout_s=5.0, first_frame_timeout_s=10.0),
    )
    await hub.start()
    try:
        deadline = time.monotonic() + 10
        while not source.frames:
            assert time.monotonic() < deadline, "synthetic source produced no frame"
            await asyncio.sleep(0.01)
        yield hub, source
    finally:
        await hub.stop()


class TappedSubscription:
    def __init__(self, inner: FrameSubscription, record: list[EncodedFrame]) -> None:
        self._inner = inner
        self._record = record

    async def get(self) -> EncodedFrame:
        frame = await self._inner.get()
        self._record.append(frame)
        return frame

    def request_keyframe(self) -> None:
        self._inner.request_keyframe()

    def close(self) -> None:
        self._inner.close()


class TappedFeed:
    """A FrameFeed recording, per subscription, every frame handed to the passthrough track."""

    def __init__(self, inner: FrameHub) -> None:
        self.inner = inner
        self.delivered: dict[str, list[EncodedFrame]] = {}

    def subscribe(self, name: str) -> TappedSubscription:
        return TappedSubscription(self.inner.subscribe(name), self.delivered.setdefault(name, []))


class Viewer:
    """A real aiortc viewer with no ICE servers (its host candidates are pinned to 127.0.0.1)."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.frames: list[tuple[float, int, int]] = []  # (monotonic arrival, width, height)
        self.first_frame = asyncio.Event()
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
                self.frames.append((time.monotonic(), frame.width, frame.height))
                self.first_frame.set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    @property
    def dtls_state(self) -> str:
        """aiortc < 1.5 keeps reporting "connected" after the remote end closed DTLS."""
        state: str = self.pc.getReceivers()[0].transport.state
        return state

    @property
    def first_frame_at(self) -> float | None:
        return self.frames[0][0] if self.frames else None

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        await self.pc.close()


async def join(manager: SessionManager, viewer: Viewer, peer_id: str = "viewer-1") -> None:
    """Offer/answer through the manager as the signaling layer will."""
    answer = await manager.answer(peer_id, await viewer.offer())
    await viewer.accept(answer)


class DecoderTap:
    """Records what aiortc's H.264 decoder is fed: the receiver's depacketized access units."""

    def __init__(self) -> None:
        self.units: list[bytes] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[DecoderTap]:
        original = aiortc_h264.H264Decoder.decode
        tap = self

        def decode(decoder: Any, encoded_frame: Any) -> Any:
            with tap._lock:
                tap.units.append(bytes(encoded_frame.data))
            return original(decoder, encoded_frame)

        setattr(aiortc_h264.H264Decoder, "decode", decode)  # noqa: B010 - a test tap on a method
        try:
            yield self
        finally:
            setattr(aiortc_h264.H264Decoder, "decode", original)  # noqa: B010


def nal_units(access_unit: bytes) -> tuple[bytes, ...]:
    """The NAL units of an access unit, whatever start-code form (3 or 4 bytes) it uses."""
    return tuple(iter_nal_units(access_unit))


def closed_udp_port() -> int:
    """A loopback UDP port nobody listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


JOIN_SPACING_S = HubSettings().keyframe_min_interval_s + 0.05
"""Viewers joining further apart than the hub's keyframe rate limit each get an IDR at once."""


async def wait_for(predicate: Callable[[], object], within: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())
