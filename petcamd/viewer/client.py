"""The Python viewer: pairs with a device from its pairing URL and watches its live video.

It trusts no server: the device key comes from the pairing URL (the QR code) and every later
session is a Noise handshake against that stored key, carried over the device's LAN WebSocket
or, when no LAN address answers, through the relay (which sees only ciphertext).
Media is a receive-only aiortc peer connection; the device's SDP answer carries its candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from petcamd.protocol import relay as relay_protocol
from petcamd.protocol.messages import Answer, ErrorCode, Message, Offer, ProtocolError
from petcamd.protocol.pairing_url import PairingPayload, PairingUrlError, decode_pairing_url
from petcamd.secure.channel import Closed, DeviceReady, Output, Received, SendFrame, ViewerChannel
from petcamd.viewer.recorder import Mp4Recorder, RecordingError, decoder_input
from petcamd.viewer.state import PairedDevice, ViewerState
from petcamd.webrtc import aiortc_private
from petcamd.webrtc.codecs import h264_preferences
from petcamd.webrtc.session import CandidateType

log = logging.getLogger(__name__)

__all__ = [
    "DeviceBusyError",
    "DeviceOfflineError",
    "NoVideoError",
    "NotPairedError",
    "PairingRefusedError",
    "ViewerError",
    "WatchResult",
    "pair",
    "watch",
    "websocket_urls",
]

WS_PATH = "/ws"
MAX_FRAME_LEN = 65535
Route = Literal["auto", "lan", "relay"]
_M = TypeVar("_M", bound=Message)


class ViewerError(Exception):
    """Something the person running the viewer should read; ``code`` is the device's, if it sent one."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class DeviceOfflineError(ViewerError):
    """No address of the device answered."""


class PairingRefusedError(ViewerError):
    """The pairing code is expired, used, locked or wrong."""


class NotPairedError(ViewerError):
    """The device does not know this viewer (never paired, or revoked)."""


class DeviceBusyError(ViewerError):
    """Too many viewers, or too many attempts: try again later."""


class NoVideoError(ViewerError):
    """The session was set up but no frame arrived in time."""


def _error_for(closed: Closed, *, pairing: bool = False, expires_at: int | None = None) -> ViewerError:
    """The exception for a channel the device (or the network) ended."""
    code = closed.code
    # An ERROR frame is unauthenticated: shown as what the device (or someone on the path) said.
    said = "the camera says" if closed.verified else "the camera (unverified) says"
    if code is None:
        if closed.by_peer and not closed.verified:
            return DeviceOfflineError("the connection to the camera was lost")
        return ViewerError("the camera ended the connection")
    if code is ErrorCode.PAIRING_CLOSED:
        if expires_at is not None and time.time() > expires_at:
            when = time.strftime("%H:%M", time.localtime(expires_at))
            return PairingRefusedError(
                f"this pairing code expired at {when}; open a new one with `petcamctl pair`", code
            )
        return PairingRefusedError(
            "this pairing code is no longer valid: it expired, was already used, or was locked after "
            "failed attempts; open a new one with `petcamctl pair`",
            code,
        )
    if code is ErrorCode.PAIRING_FAILED:
        return PairingRefusedError("pairing failed: the code does not match this camera", code)
    if code is ErrorCode.NOT_PAIRED:
        return NotPairedError(
            f"{said}: this viewer is not paired (revoked?); pair again with a new code", code
        )
    if code is ErrorCode.REVOKED:
        return NotPairedError(f"{said}: this viewer's pairing was revoked", code)
    if code in (ErrorCode.TOO_MANY_VIEWERS, ErrorCode.RATE_LIMITED):
        return DeviceBusyError(f"{said}: {code.description}", code)
    if pairing and code is ErrorCode.BAD_MESSAGE:
        return PairingRefusedError(f"{said}: {code.description}", code)
    return ViewerError(f"{said}: {code.description}", code)


def websocket_urls(addresses: tuple[str, ...], port: int) -> list[str]:
    """The device's signaling endpoint at each address, in the order given."""
    return [f"ws://[{a}]:{port}{WS_PATH}" if ":" in a else f"ws://{a}:{port}{WS_PATH}" for a in addresses]


class _FrameSocket:
    """Protocol frames over the device's own WebSocket: one frame per binary message."""

    route = "lan"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, url: str) -> None:
        self.ws = ws
        self.url = url

    async def open(self) -> None:
        """Nothing to set up: the LAN endpoint is the device itself."""

    async def send(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)

    async def receive(self) -> bytes | None:
        """The next frame; None once the connection is gone. Raises ProtocolError for a text message."""
        message = await self.ws.receive()
        if message.type == aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        if message.type == aiohttp.WSMsgType.TEXT:
            raise ProtocolError("text message")
        return None

    async def close(self) -> None:
        await self.ws.close()


class _RelaySocket(_FrameSocket):
    """Protocol frames through petcam-relay: one session (connection id 1) with one device."""

    route = "relay"
    CONN_ID = 1

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, url: str, device_id: str) -> None:
        super().__init__(ws, url)
        self._device_id = device_id
        self.close_reason: relay_protocol.CloseReason | None = None
        self.ice_servers: relay_protocol.IceServers | None = None

    async def open(self) -> None:
        await self.ws.send_bytes(relay_protocol.Connect(self.CONN_ID, self._device_id).encode())

    async def send(self, frame: bytes) -> None:
        await self.ws.send_bytes(relay_protocol.encode_data(self.CONN_ID, frame))

    async def receive(self) -> bytes | None:
        while True:
            message = await self.ws.receive()
            if message.type != aiohttp.WSMsgType.BINARY:
                return None
            envelope = relay_protocol.decode_envelope(message.data)
            if isinstance(envelope, relay_protocol.Data) and envelope.conn_id == self.CONN_ID:
                return envelope.frame
            if isinstance(envelope, relay_protocol.Close) and envelope.conn_id == self.CONN_ID:
                self.close_reason = envelope.reason
                return None
            if isinstance(envelope, relay_protocol.IceServers):
                self.ice_servers = envelope  # STUN/TURN for this session, credentials included

    async def close(self) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(relay_protocol.Close(self.CONN_ID).encode())
        await self.ws.close()


def relay_viewer_url(relay_url: str) -> str:
    """``wss://relay.example.org/`` → ``wss://relay.example.org/viewer``."""
    return relay_protocol.websocket_origin(relay_url) + "/viewer"


class _Link:
    """A ViewerChannel over one frame socket: the handshake, then messages both ways."""

    def __init__(self, http: aiohttp.ClientSession, sock: _FrameSocket) -> None:
        self._http = http
        self._sock = sock
        self.url = sock.url
        self.route = sock.route
        self._channel: ViewerChannel | None = None
        self._inbox: asyncio.Queue[Message | Closed] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.closed: Closed | None = None
        self.on_closed: Callable[[Closed], None] | None = None
        self._finished = False

    @classmethod
    async def connect(
        cls, urls: list[str], timeout_s: float, *, relay_url: str = "", device_id: str = "", ssl: Any = None
    ) -> _Link:
        """The first LAN address that answers, else the relay (if the device has one)."""
        if not urls and not relay_url:
            raise DeviceOfflineError("the pairing data holds no address of the camera")
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=None)
        )
        failures: list[str] = []
        targets = [(url, False) for url in urls]
        if relay_url:
            targets.append((relay_viewer_url(relay_url), True))
        tls: dict[str, Any] = {"ssl": ssl} if ssl is not None else {}  # aiohttp's own default otherwise
        for url, via_relay in targets:
            max_size = relay_protocol.MAX_ENVELOPE_LEN if via_relay else MAX_FRAME_LEN
            try:
                async with asyncio.timeout(timeout_s):
                    ws = await http.ws_connect(url, max_msg_size=max_size, compress=0, **tls)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures.append(f"{url}: {type(exc).__name__}")
                log.debug("cannot reach %s: %s", url, exc)
                continue
            sock = _RelaySocket(ws, url, device_id) if via_relay else _FrameSocket(ws, url)
            await sock.open()
            return cls(http, sock)
        await http.close()
        raise DeviceOfflineError("the camera is not reachable (" + "; ".join(failures) + ")")

    async def handshake(self, channel: ViewerChannel, timeout_s: float, **context: Any) -> DeviceReady:
        """Sends the hello and returns once the device proved its key (and, pairing, said `paired`)."""
        self._channel = channel
        await self._sock.send(channel.start())
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for output in await self._next_outputs():
                        if isinstance(output, SendFrame):
                            await self._sock.send(output.data)
                        elif isinstance(output, DeviceReady):
                            return output
                        elif isinstance(output, Closed):
                            self.closed = output
                            raise self._error(output, pairing=channel.is_pairing, **context)
        except TimeoutError:
            raise DeviceOfflineError(f"the camera did not answer within {timeout_s:g} s") from None

    def rtc_configuration(self) -> RTCConfiguration:
        """No STUN/TURN on the LAN; through the relay, the servers it offered (TURN for strict NATs)."""
        sock = self._sock
        if not isinstance(sock, _RelaySocket) or sock.ice_servers is None:
            return RTCConfiguration(iceServers=[])
        return RTCConfiguration(
            iceServers=[
                RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
                for s in sock.ice_servers.servers
            ]
        )

    def _error(self, closed: Closed, **context: Any) -> ViewerError:
        sock = self._sock
        if isinstance(sock, _RelaySocket) and closed.code is None and sock.close_reason is not None:
            reason = sock.close_reason
            if reason is relay_protocol.CloseReason.DEVICE_UNAVAILABLE:
                return DeviceOfflineError(
                    "the camera is not connected to the relay (offline, or in Local Network Mode)"
                )
            if reason is not relay_protocol.CloseReason.CLOSED:
                return DeviceBusyError(
                    f"the relay ended the session: {reason.name.lower().replace('_', ' ')}"
                )
        return _error_for(closed, **context)

    async def _next_outputs(self) -> list[Output]:
        channel = self._channel
        if channel is None:
            raise RuntimeError("no channel")
        try:
            frame = await self._sock.receive()
        except ProtocolError:
            return channel.close(ErrorCode.BAD_MESSAGE)
        if frame is None:
            return channel.connection_lost()
        return channel.feed(frame)

    def start_reader(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="petcam-view-reader")

    async def _read(self) -> None:
        channel = self._channel
        while self.closed is None and channel is not None and not channel.is_closed:
            for output in await self._next_outputs():
                if isinstance(output, SendFrame):  # pongs, or our error before closing
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await self._sock.send(output.data)
                elif isinstance(output, Received):
                    self._inbox.put_nowait(output.message)
                elif isinstance(output, Closed):
                    self.closed = output
                    self._inbox.put_nowait(output)
                    if self.on_closed is not None:
                        self.on_closed(output)
        await self._sock.close()

    async def send(self, message: Message) -> None:
        if self._channel is None:
            raise RuntimeError("no channel")
        await self._sock.send(self._channel.send(message))

    async def expect(self, kind: type[_M], timeout_s: float) -> _M:
        """The next message of ``kind`` (others are dropped); raises if the channel ends first."""
        async with asyncio.timeout(timeout_s):
            while True:
                item = await self._inbox.get()
                if isinstance(item, Closed):
                    raise self._error(item)
                if isinstance(item, kind):
                    return item

    async def close(self) -> None:
        """Says bye if the channel is still open, then closes the WebSocket and the HTTP client."""
        if self._finished:
            return
        self._finished = True
        channel = self._channel
        try:
            if channel is not None and not channel.is_closed:
                for output in channel.close():
                    if isinstance(output, SendFrame):
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await self._sock.send(output.data)
            await self._sock.close()
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._reader
        finally:
            await self._http.close()


async def pair(
    state: ViewerState,
    url: str,
    name: str,
    *,
    timeout_s: float = 10.0,
    addresses: tuple[str, ...] | None = None,
    via: Route = "auto",
    ssl: Any = None,
) -> PairedDevice:
    """Pair with the device of a pairing URL; stores and returns it.

    ``addresses`` overrides the URL's (e.g. a tunnel); they are tried in order either way, then
    the relay if the URL names one. ``via`` limits that to the LAN or the relay; ``ssl`` is
    aiohttp's (a private CA for a private relay).
    """
    try:
        payload = decode_pairing_url(url)
    except PairingUrlError as exc:
        raise ViewerError(f"not a petcamd pairing URL: {exc}") from None
    identity = await asyncio.to_thread(state.identity)
    try:
        channel = ViewerChannel.for_pairing(identity.private_key, payload, name)
    except ProtocolError as exc:
        raise ViewerError(str(exc)) from None
    tried = addresses if addresses is not None else payload.addresses
    link = await _Link.connect(
        websocket_urls(tried, payload.port) if via != "relay" else [],
        timeout_s,
        relay_url=payload.relay_url if via != "lan" else "",
        device_id=payload.device_id,
        ssl=ssl,
    )
    try:
        ready = await link.handshake(channel, timeout_s, expires_at=payload.expires_at)
    finally:
        await link.close()
    if ready.peer_id is None:
        raise ViewerError("the camera did not confirm the pairing")
    device = _device_from(payload, ready, working=link.url, tried=tried)
    return await asyncio.to_thread(state.add, device)


def _device_from(
    payload: PairingPayload, ready: DeviceReady, *, working: str, tried: tuple[str, ...]
) -> PairedDevice:
    """The address that answered goes first, so the next watch tries it first."""
    urls = websocket_urls(tried, payload.port)
    first = tried[urls.index(working)] if working in urls else None
    ordered = ((first,) if first else ()) + tuple(a for a in payload.addresses if a != first)
    return PairedDevice(
        device_id=payload.device_id,
        device_key=payload.device_key,
        peer_id=ready.peer_id or "",
        name=ready.device_name or payload.name or payload.device_id,
        addresses=ordered,
        port=payload.port,
        relay_url=payload.relay_url,
    )


@dataclass(slots=True)
class WatchResult:
    device_id: str
    device_name: str
    connect_s: float
    """WebSocket and Noise handshake."""
    first_frame_s: float | None
    """From the start of `watch` to the first decoded frame."""
    frames_decoded: int
    fps: float
    path: str | None
    """How media flowed: host (direct), srflx (through NAT) or relay (TURN)."""
    duration_s: float
    signaling: str = "lan"
    """How the negotiation travelled: "lan" (the device's own server) or "relay"."""
    width: int | None = None
    height: int | None = None
    ended_by_device: bool = False
    recorded_packets: int = 0
    record_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_name": self.device_name,
            "connect_s": round(self.connect_s, 4),
            "first_frame_s": None if self.first_frame_s is None else round(self.first_frame_s, 4),
            "frames_decoded": self.frames_decoded,
            "fps": round(self.fps, 2),
            "path": self.path,
            "signaling": self.signaling,
            "duration_s": round(self.duration_s, 3),
            "width": self.width,
            "height": self.height,
            "ended_by_device": self.ended_by_device,
            "recorded_packets": self.recorded_packets,
            "record_path": self.record_path,
        }


@dataclass(slots=True)
class _Frames:
    """Decoded-frame bookkeeping; `done` is set when the watch should end."""

    wanted: int | None
    count: int = 0
    first_at: float | None = None
    last_at: float | None = None
    size: tuple[int, int] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, width: int, height: int) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.count += 1
        self.size = (width, height)
        if self.wanted is not None and self.count >= self.wanted:
            self.done.set()

    @property
    def fps(self) -> float:
        if self.first_at is None or self.last_at is None or self.count < 2 or self.last_at <= self.first_at:
            return 0.0
        return (self.count - 1) / (self.last_at - self.first_at)


async def watch(
    state: ViewerState,
    device: PairedDevice,
    *,
    frames: int | None = None,
    duration_s: float | None = None,
    record: Path | None = None,
    timeout_s: float = 10.0,
    first_frame_timeout_s: float = 10.0,
    stop: asyncio.Event | None = None,
    via: Route = "auto",
    ssl: Any = None,
) -> WatchResult:
    """Watch until ``frames`` frames were decoded, ``duration_s`` passed or ``stop`` is set.

    With none of them, watches until the device ends the session. ``record`` writes the received
    H.264 to an MP4 file without re-encoding.
    """
    started = time.monotonic()
    identity = await asyncio.to_thread(state.identity)
    channel = ViewerChannel.for_session(identity.private_key, device.device_key)
    link = await _Link.connect(
        websocket_urls(device.addresses, device.port) if via != "relay" else [],
        timeout_s,
        relay_url=device.relay_url if via != "lan" else "",
        device_id=device.device_id,
        ssl=ssl,
    )
    recorder = Mp4Recorder(record) if record is not None else None
    pc: RTCPeerConnection | None = None
    consumer: asyncio.Task[None] | None = None
    tally = _Frames(frames)
    path: str | None = None
    try:
        await link.handshake(channel, timeout_s)
        connected = time.monotonic()
        link.on_closed = lambda _closed: tally.done.set()
        link.start_reader()
        with decoder_input.routed_to(recorder.write) if recorder else contextlib.nullcontext():
            pc = RTCPeerConnection(link.rtc_configuration())
            transceiver = pc.addTransceiver("video", direction="recvonly")
            transceiver.setCodecPreferences(h264_preferences())

            def on_track(track: Any) -> None:
                nonlocal consumer
                consumer = asyncio.ensure_future(_consume(track, tally))

            pc.on("track", on_track)
            await pc.setLocalDescription(await pc.createOffer())
            await link.send(Offer(pc.localDescription.sdp))
            answer = await link.expect(Answer, timeout_s)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
            await _wait(tally, duration_s, first_frame_timeout_s, stop)
            path = _media_path(pc)
            ended = link.closed
            await link.close()  # bye first: the device ends the session without waiting on DTLS
            await pc.close()
        if ended is not None and ended.code is not None:
            raise _error_for(ended)
        if tally.count == 0:
            raise NoVideoError(f"no video arrived within {first_frame_timeout_s:g} s")
        recorded = 0
        if recorder is not None:
            recorded = await asyncio.to_thread(recorder.close)
        return WatchResult(
            device_id=device.device_id,
            device_name=device.name,
            connect_s=connected - started,
            first_frame_s=None if tally.first_at is None else tally.first_at - started,
            frames_decoded=tally.count,
            fps=tally.fps,
            path=path,
            duration_s=time.monotonic() - started,
            signaling=link.route,
            width=tally.size[0] if tally.size else None,
            height=tally.size[1] if tally.size else None,
            ended_by_device=ended is not None,
            recorded_packets=recorded,
            record_path=str(record) if recorder is not None and recorded else None,
        )
    finally:
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer
        if pc is not None:
            await pc.close()
        if recorder is not None:
            with contextlib.suppress(RecordingError):
                await asyncio.to_thread(recorder.close)
        await link.close()


async def _consume(track: Any, tally: _Frames) -> None:
    with contextlib.suppress(Exception):
        while True:
            frame = await track.recv()
            tally.add(frame.width, frame.height)


async def _wait(
    tally: _Frames, duration_s: float | None, first_frame_timeout_s: float, stop: asyncio.Event | None
) -> None:
    """Until enough frames, the duration, a stop, the device ending the channel, or no first frame."""
    loop = asyncio.get_running_loop()

    def no_first_frame() -> None:
        if tally.first_at is None:
            tally.done.set()

    timers = [loop.call_later(first_frame_timeout_s, no_first_frame)]
    if duration_s is not None:
        timers.append(loop.call_later(duration_s, tally.done.set))
    waiters = {asyncio.ensure_future(tally.done.wait())}
    if stop is not None:
        waiters.add(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for timer in timers:
            timer.cancel()
        for waiter in waiters:
            waiter.cancel()


def _media_path(pc: RTCPeerConnection) -> str | None:
    try:
        pair = aiortc_private.selected_pair(pc)
    except aiortc_private.PrivateApiError:
        return None
    return None if pair is None else CandidateType.of_pair(pair.local_type, pair.remote_type).value
