"""The sending side, in its own process: the synthetic camera and the viewers' peer connections.

Three ways to send the same picture:
- "petcamd": SyntheticSource -> FrameHub -> SessionManager (passthrough, keyframe on join, PLI hook);
- "stock-passthrough": the same passthrough track on a plain aiortc peer connection fed without
  keyframe requests, so a joining viewer waits for the next periodic IDR (what aiortc alone does);
- "reencode": a plain aiortc peer connection whose track returns raw `av.VideoFrame`s of the same
  test pattern, so aiortc encodes them itself per viewer (what a naive aiortc camera does).
Camera threads carry the name `CAMERA_THREAD` so the orchestrator can tell capture from sending.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport

import petcamd.camera.synthetic as synthetic_module
from bench.harness import CAMERA_THREAD, Json, Stream, name_this_thread, percentile
from petcamd.camera.encoder import H264Encoder, open_encoder
from petcamd.camera.health import HealthSettings
from petcamd.camera.hub import FrameHub, HubSettings
from petcamd.camera.pattern import TestPattern
from petcamd.camera.source import (
    EncodedFrame,
    FailureSink,
    FrameFeed,
    FrameSink,
    FrameSubscription,
    StreamSettings,
    SubscriptionClosedError,
)
from petcamd.camera.synthetic import SyntheticSource
from petcamd.webrtc.codecs import h264_preferences
from petcamd.webrtc.ice import IceServer
from petcamd.webrtc.sessions import SessionManager, WebRtcSettings
from petcamd.webrtc.track import RTP_VIDEO_CLOCK, TIME_BASE, PassthroughVideoTrack, to_pts

_H264_RTPMAP = re.compile(r"^a=rtpmap:(\d+) H264/90000", re.MULTILINE | re.IGNORECASE)


def _camera_named_open_encoder(settings: StreamSettings, *, prefer_hardware: bool) -> H264Encoder:
    """libx264 starts its worker threads when opened; this names them as camera threads."""
    old = name_this_thread(CAMERA_THREAD)
    try:
        return open_encoder(settings, prefer_hardware=prefer_hardware)
    finally:
        name_this_thread(old)


setattr(synthetic_module, "open_encoder", _camera_named_open_encoder)  # noqa: B010 - a benchmark tap


def _camera_threads() -> list[str]:
    """Thread ids of this process named as camera threads."""
    return [
        entry.name
        for entry in Path("/proc/self/task").iterdir()
        if (entry / "comm").read_text().strip() == CAMERA_THREAD
    ]


def stream_settings(stream: Stream) -> StreamSettings:
    return StreamSettings(
        width=stream.width,
        height=stream.height,
        fps=stream.fps,
        bitrate=stream.bitrate,
        keyframe_interval_s=stream.keyframe_interval_s,
    )


class TexturedPattern(TestPattern):
    """petcamd's test pattern over a band of sensor-like noise at the bottom.

    The plain pattern compresses to about 40 % of the configured bitrate; a real camera's noise
    makes the encoder spend all of it, and a passthrough sender's cost grows with the bytes sent.
    The noise is pre-generated (a few byte copies per frame), so capture stays cheap.
    """

    NOISE_ROWS = 128
    NOISE_AMPLITUDE = 16
    NOISE_FRAMES = 16

    def __init__(self, width: int, height: int) -> None:
        super().__init__(width, height)
        rng = random.Random(1)
        amplitude = self.NOISE_AMPLITUDE
        table = bytes(128 - amplitude // 2 + v % amplitude for v in range(256))
        self._rows = min(self.NOISE_ROWS, height // 2) & ~1
        self._noise = [rng.randbytes(width * self._rows).translate(table) for _ in range(self.NOISE_FRAMES)]

    def _planes(self, index: int) -> tuple[bytearray, bytearray, bytearray]:
        luma, cb, cr = super()._planes(index)
        luma[(self.height - self._rows) * self.width :] = self._noise[index % self.NOISE_FRAMES]
        return luma, cb, cr


class BenchSource(SyntheticSource):
    """The synthetic camera on the textured pattern, its thread named, noting frames entering the hub."""

    def __init__(self, settings: StreamSettings) -> None:
        super().__init__(settings)
        self._pattern = TexturedPattern(settings.width, settings.height)
        self.entered: dict[int, int] = {}  # frame timestamp_us -> monotonic ns on reaching the hub
        self.record_entries = False
        self.bytes = 0

    async def start(self, sink: FrameSink, on_failure: FailureSink | None = None) -> None:
        def entering(frame: EncodedFrame) -> None:
            self.bytes += len(frame.data)
            if self.record_entries:
                self.entered[frame.timestamp_us] = time.monotonic_ns()
            sink(frame)

        await super().start(entering, on_failure)

    def _run(self, *args: Any) -> None:
        name_this_thread(CAMERA_THREAD)
        super()._run(*args)


# --- the re-encoding camera ------------------------------------------------------------------


class RawVideoTrack(MediaStreamTrack):
    """Hands aiortc raw frames, as a naive aiortc camera does; aiortc encodes them per viewer."""

    kind = "video"

    def __init__(self, camera: RawCamera) -> None:
        super().__init__()
        self._camera = camera
        self._queue: collections.deque[tuple[av.VideoFrame, int]] = collections.deque(maxlen=2)
        self._waiter: asyncio.Future[None] | None = None
        self._origin_us: int | None = None

    def offer(self, frame: av.VideoFrame, timestamp_us: int) -> None:
        self._queue.append((frame, timestamp_us))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recv(self) -> av.VideoFrame:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        frame, timestamp_us = self._queue.popleft()
        if self._origin_us is None:
            self._origin_us = timestamp_us
        frame.pts = to_pts(timestamp_us, self._origin_us)
        frame.time_base = TIME_BASE
        return frame

    def stop(self) -> None:
        self._camera.unsubscribe(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        super().stop()


class RawCamera:
    """The same test pattern as SyntheticSource, rendered on a camera thread but left unencoded."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._pattern = TexturedPattern(stream.width, stream.height)
        self._track: RawVideoTrack | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="bench-raw-camera", daemon=True)
        self._thread.start()

    def subscribe(self) -> RawVideoTrack:
        if self._track is not None:
            raise RuntimeError("the raw camera serves one viewer (frames are handed over, not copied)")
        self._track = RawVideoTrack(self)
        return self._track

    def unsubscribe(self, track: RawVideoTrack) -> None:
        if self._track is track:
            self._track = None

    def _publish(self, frame: av.VideoFrame, timestamp_us: int) -> None:
        self.frames += 1
        if self._track is not None:
            self._track.offer(frame, timestamp_us)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        name_this_thread(CAMERA_THREAD)
        period_ns = 1_000_000_000 // self._stream.fps
        deadline = time.monotonic_ns()
        index = 0
        while not self._stopping.is_set():
            now = time.monotonic_ns()
            if now < deadline and self._stopping.wait((deadline - now) / 1e9):
                break
            frame = self._pattern.render(index)
            try:
                loop.call_soon_threadsafe(self._publish, frame, time.monotonic_ns() // 1000)
            except RuntimeError:
                return
            index += 1
            deadline += period_ns
            behind = time.monotonic_ns() - deadline
            if behind > period_ns:
                deadline += (behind // period_ns) * period_ns

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)


# --- a feed that never asks for keyframes ------------------------------------------------------


class PlainSubscription:
    """A bounded queue of every frame, and no keyframe requests: aiortc's behaviour on its own."""

    def __init__(self, fanout: PlainFanout, maxlen: int = 30) -> None:
        self._fanout = fanout
        self._queue: collections.deque[EncodedFrame] = collections.deque(maxlen=maxlen)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def offer(self, frame: EncodedFrame) -> None:
        self._queue.append(frame)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> EncodedFrame:
        while not self._queue:
            if self._closed:
                raise SubscriptionClosedError("plain")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.popleft()

    def request_keyframe(self) -> None:
        """Stock aiortc never passes a viewer's keyframe request on to a passthrough source."""

    def close(self) -> None:
        self._closed = True
        self._fanout.subscribers.discard(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class PlainFanout:
    """Fans one long-lived hub subscription out to plain subscriptions (joins request nothing)."""

    def __init__(self, hub: FrameHub) -> None:
        self._sub = hub.subscribe("bench-plain-fanout")
        self.subscribers: set[PlainSubscription] = set()
        self._task = asyncio.create_task(self._pump(), name="bench-plain-fanout")

    async def _pump(self) -> None:
        with contextlib.suppress(SubscriptionClosedError):
            while True:
                frame = await self._sub.get()
                for sub in list(self.subscribers):
                    sub.offer(frame)

    def subscribe(self, _name: str) -> FrameSubscription:
        sub = PlainSubscription(self)
        self.subscribers.add(sub)
        return sub

    async def close(self) -> None:
        self._sub.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class RecordingFeed:
    """Notes, per subscription, every frame handed to the passthrough track and when."""

    def __init__(self, hub: FrameHub) -> None:
        self._hub = hub
        self.handed: dict[str, list[tuple[int, bool, int]]] = {}  # name -> (timestamp_us, key, ns)

    def subscribe(self, name: str) -> FrameSubscription:
        return _RecordingSubscription(self._hub.subscribe(name), self.handed.setdefault(name, []))


class _RecordingSubscription:
    def __init__(self, inner: FrameSubscription, record: list[tuple[int, bool, int]]) -> None:
        self._inner = inner
        self._record = record

    async def get(self) -> EncodedFrame:
        frame = await self._inner.get()
        self._record.append((frame.timestamp_us, frame.keyframe, time.monotonic_ns()))
        return frame

    def request_keyframe(self) -> None:
        self._inner.request_keyframe()

    def close(self) -> None:
        self._inner.close()


# --- RTP tap ----------------------------------------------------------------------------------


class RtpTap:
    """Notes when the last packet (marker bit) of each video frame has been handed to the socket.

    Wraps aiortc's private `RTCDtlsTransport._send_rtp`, which SRTP-protects a packet and hands it
    to the ICE connection's `sendto` before returning. Only the first transmission counts (an RTX
    retransmission of a frame's last packet carries the same RTP timestamp).
    """

    def __init__(self) -> None:
        self.sent: dict[tuple[int, int], int] = {}  # (ssrc, rtp timestamp) -> monotonic ns
        self.first: dict[int, tuple[int, int]] = {}  # ssrc -> (ns, rtp timestamp) of its first frame
        self.payload_types: set[int] = set()
        self._original: Any = None

    def install(self) -> None:
        original = RTCDtlsTransport._send_rtp
        self._original = original
        tap = self

        async def _send_rtp(transport: Any, data: bytes) -> None:
            await original(transport, data)
            if len(data) >= 12 and data[1] & 0x80 and (data[1] & 0x7F) in tap.payload_types:
                now = time.monotonic_ns()
                ssrc = int.from_bytes(data[8:12], "big")
                timestamp = int.from_bytes(data[4:8], "big")
                tap.sent.setdefault((ssrc, timestamp), now)
                tap.first.setdefault(ssrc, (now, timestamp))

        setattr(RTCDtlsTransport, "_send_rtp", _send_rtp)  # noqa: B010 - a benchmark tap

    def learn(self, answer_sdp: str) -> None:
        self.payload_types.update(int(pt) for pt in _H264_RTPMAP.findall(answer_sdp))


# --- plain aiortc peers -----------------------------------------------------------------------


class StockPeer:
    """A plain aiortc sender: H.264 preferred, nothing else of petcamd's session layer."""

    def __init__(self, track: MediaStreamTrack, config: RTCConfiguration) -> None:
        self.track = track
        self.pc = RTCPeerConnection(config)

    async def answer(self, offer_sdp: str) -> str:
        transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        transceiver.setCodecPreferences(h264_preferences())
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()


class SenderRole:
    def __init__(self) -> None:
        self.stream = Stream()
        self.source: BenchSource | None = None
        self.hub: FrameHub | None = None
        self.raw: RawCamera | None = None
        self.plain: PlainFanout | None = None
        self.feed: FrameFeed | None = None
        self.recording: RecordingFeed | None = None
        self.tap: RtpTap | None = None
        self.managers: dict[str, SessionManager] = {}
        self.stock: dict[str, StockPeer] = {}
        self.max_viewers = 8
        self._silent_stun: socket.socket | None = None

    async def op_start(
        self,
        mode: str,
        stream: Json,
        max_viewers: int = 8,
        latency_tap: bool = False,
        stock_feed: bool = False,
    ) -> Json:
        self.stream = Stream(**stream)
        self.max_viewers = max_viewers
        if mode == "raw":
            self.raw = RawCamera(self.stream)
            await self.raw.start()
            return {"camera": "raw test pattern"}
        source = BenchSource(stream_settings(self.stream))
        hub = FrameHub(
            source,
            HubSettings(queue_frames=30, linger_s=0.0, always_on=True),
            HealthSettings(stall_timeout_s=10.0, first_frame_timeout_s=20.0),
        )
        self.source, self.hub = source, hub
        await hub.start()
        deadline = time.monotonic() + 20
        while hub.frames_total == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the synthetic camera produced no frame in 20 s")
            await asyncio.sleep(0.02)
        if not _camera_threads():
            raise RuntimeError(
                f"no thread is named {CAMERA_THREAD!r}: SyntheticSource changed under the benchmark, "
                "and camera CPU would be counted as sending"
            )
        self.feed = hub
        if stock_feed:
            self.plain = PlainFanout(hub)
        if latency_tap:
            self.feed = self.recording = RecordingFeed(hub)
            self.tap = RtpTap()
            self.tap.install()
            source.record_entries = True
        return {"camera": source.description}

    def _stun_url(self) -> str:
        if self._silent_stun is None:
            # Bound and never read: requests vanish as they would on the way to a dead server.
            self._silent_stun = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._silent_stun.bind(("127.0.0.1", 0))
        return f"stun:127.0.0.1:{self._silent_stun.getsockname()[1]}"

    def _manager(self, ice: str) -> SessionManager:
        if ice not in self.managers:
            if self.feed is None:
                raise RuntimeError("no hub: start in passthrough mode")
            lan = ice == "lan"
            settings = WebRtcSettings(
                max_viewers=self.max_viewers,
                local_network_mode=lan,
                ice_servers=() if lan else (IceServer(self._stun_url()),),
            )
            self.managers[ice] = SessionManager(self.feed, settings)
        return self.managers[ice]

    def _stock_config(self, ice: str) -> RTCConfiguration:
        if ice == "lan":
            return RTCConfiguration(iceServers=[])
        return RTCConfiguration(iceServers=[RTCIceServer(urls=self._stun_url())])

    async def op_answer(self, offers: list[str], variant: str, ice: str = "lan") -> Json:
        ids: list[str] = []
        answers: list[str] = []
        for offer in offers:
            bench_id = secrets.token_hex(4)
            if variant == "petcamd":
                answer = await self._manager(ice).answer(f"viewer-{bench_id}", offer)
            else:
                track: MediaStreamTrack
                if variant == "stock-passthrough":
                    if self.plain is None:
                        raise RuntimeError("start in passthrough mode with stock_feed=True")
                    track = PassthroughVideoTrack(self.plain.subscribe(bench_id))
                elif variant == "reencode":
                    if self.raw is None:
                        raise RuntimeError("no raw camera: start in raw mode")
                    track = self.raw.subscribe()
                else:
                    raise ValueError(f"unknown variant {variant!r}")
                peer = StockPeer(track, self._stock_config(ice))
                self.stock[bench_id] = peer
                answer = await peer.answer(offer)
            if self.tap is not None:
                self.tap.learn(answer)
            ids.append(bench_id)
            answers.append(answer)
        return {"ids": ids, "answers": answers}

    async def op_close(self) -> Json:
        for manager in self.managers.values():
            await manager.close_all()
        peers = list(self.stock.values())
        self.stock.clear()
        await asyncio.gather(*(peer.close() for peer in peers))
        # Latency records are per batch of viewers.
        if self.recording is not None:
            self.recording.handed.clear()
        if self.tap is not None:
            self.tap.sent.clear()
            self.tap.first.clear()
        if self.source is not None:
            self.source.entered.clear()
        return {}

    async def op_counters(self) -> Json:
        hub = self.hub
        return {
            "frames_total": hub.frames_total if hub else (self.raw.frames if self.raw else 0),
            "bytes_total": self.source.bytes if self.source else 0,
            "keyframes_requested": hub.keyframes_requested if hub else 0,
            "sessions": sum(len(m.sessions) for m in self.managers.values()) + len(self.stock),
        }

    async def op_latency(self, t0_ns: int, t1_ns: int) -> Json:
        """Hub entry -> last RTP packet sent, for frames that entered the hub in [t0, t1]."""
        if self.tap is None or self.source is None or self.recording is None:
            raise RuntimeError("start with latency_tap=True")
        entered = self.source.entered
        in_window = {ts for ts, ns in entered.items() if t0_ns <= ns <= t1_ns}
        if not in_window:
            raise RuntimeError("no frame entered the hub in the window")
        firsts = sorted((ns, ssrc, ts) for ssrc, (ns, ts) in self.tap.first.items())
        viewers: list[Json] = []
        for name, handed in self.recording.handed.items():
            frames = _from_first_keyframe(handed)
            if not frames:
                raise RuntimeError(f"{name}: no keyframe was handed to the track")
            got_first = frames[0][2]
            candidates = [(ns, ssrc, ts) for ns, ssrc, ts in firsts if ns >= got_first]
            if not candidates:
                raise RuntimeError(f"{name}: no RTP stream started after its first frame")
            _, ssrc, rtp0 = candidates[0]
            origin = frames[0][0]
            last_pts = -1
            samples: list[float] = []
            for timestamp_us, _key, _ns in frames:
                pts = max(to_pts(timestamp_us, origin), last_pts + 1)
                last_pts = pts
                if timestamp_us not in in_window:
                    continue
                sent = self.tap.sent.get((ssrc, (rtp0 + pts) & 0xFFFFFFFF))
                if sent is not None:
                    samples.append((sent - entered[timestamp_us]) / 1e6)
            viewers.append(
                {
                    "name": name,
                    "frames_in_window": len(in_window),
                    "matched": len(samples),
                    "samples_ms": samples,
                    "p50_ms": percentile(samples, 50) if samples else None,
                    "p99_ms": percentile(samples, 99) if samples else None,
                }
            )
        return {"viewers": viewers, "rtp_clock": RTP_VIDEO_CLOCK}

    async def aclose(self) -> None:
        await self.op_close()
        for manager in self.managers.values():
            await manager.stop()
        if self.plain is not None:
            await self.plain.close()
        if self.hub is not None:
            await self.hub.stop()
        if self.raw is not None:
            await self.raw.stop()
        if self._silent_stun is not None:
            self._silent_stun.close()


def _from_first_keyframe(handed: list[tuple[int, bool, int]]) -> list[tuple[int, bool, int]]:
    """The passthrough track skips whatever precedes the first keyframe."""
    for index, (_ts, key, _ns) in enumerate(handed):
        if key:
            return handed[index:]
    return []
