"""The device's connection to petcam-relay in internet mode: register with proof of the device key,
then carry each viewer session the relay opens as a Negotiator, exactly as the LAN server does.

One long-lived task owns the connection and reconnects on its own with jittered exponential
backoff; a registration the relay refuses (4001) or takes over (4003, the same key registered
elsewhere) waits minutes, not seconds, so two clones of one SD card do not flap forever. The relay
sees only envelopes: the frames inside are Noise messages (docs/relay.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.camera.health import Backoff
from petcamd.protocol.messages import ProtocolError
from petcamd.protocol.relay import (
    MAX_ENVELOPE_LEN,
    Challenge,
    Close,
    CloseCode,
    Data,
    IceServers,
    Open,
    Registered,
    RelayOriginError,
    decode_envelope,
    prove_registration,
    relay_origin,
    websocket_origin,
)
from petcamd.signaling.lan_server import NegotiatorFactory
from petcamd.signaling.negotiator import Negotiator
from petcamd.webrtc.ice import IceServer

log = logging.getLogger(__name__)

__all__ = ["RelayClient", "RelayClientSettings", "RelayState", "device_endpoint"]


class RelayState(enum.Enum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    REGISTERED = "registered"
    BACKOFF = "backoff"
    """Waiting before the next attempt (``last_error`` says why)."""


@dataclass(frozen=True, slots=True)
class RelayClientSettings:
    backoff_initial_s: float = 1.0
    backoff_cap_s: float = 60.0
    """The longest wait between attempts after ordinary failures (relay down, network lost)."""
    refused_backoff_s: float = 300.0
    """The wait after the relay refused the proof or another device took over the same id."""
    connect_timeout_s: float = 10.0
    register_timeout_s: float = 10.0
    heartbeat_s: float = 20.0
    """WebSocket ping interval: a dead path is noticed within about this long."""

    def __post_init__(self) -> None:
        if (
            min(self.backoff_initial_s, self.connect_timeout_s, self.register_timeout_s, self.heartbeat_s)
            <= 0
        ):
            raise ValueError("relay client timeouts must be positive")
        if self.backoff_cap_s < self.backoff_initial_s or self.refused_backoff_s < self.backoff_initial_s:
            raise ValueError("backoff caps must be at least the initial backoff")


def device_endpoint(relay_url: str) -> str:
    """``wss://relay.example.org/`` (or https://...) → ``wss://relay.example.org/device``."""
    return websocket_origin(relay_url) + "/device"


class _RefusedError(Exception):
    """The relay will not take this registration; retrying soon would not help."""


class RelayClient:
    """Keeps the device registered at one relay while started; ``status()`` feeds `petcamctl status`."""

    def __init__(
        self,
        relay_url: str,
        static_private: X25519PrivateKey,
        device_id: str,
        negotiators: NegotiatorFactory,
        settings: RelayClientSettings | None = None,
        *,
        ssl: Any = None,
        on_ice_servers: Callable[[tuple[IceServer, ...]], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.relay_url = relay_url
        self._origin = relay_origin(relay_url)
        self._endpoint = device_endpoint(relay_url)
        self._key = static_private
        self._device_id = device_id
        self._negotiators = negotiators
        self.settings = settings or RelayClientSettings()
        self._ssl = ssl  # None = the system's trust store; tests pass their own CA
        self._wall = wall_clock
        self._backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_cap_s)
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._sessions: dict[int, Negotiator] = {}
        self._closers: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self.state = RelayState.STOPPED
        self.since: float | None = None
        self.last_error: str | None = None
        self.connection_attempts = 0
        self.registrations = 0
        self.next_attempt_in_s: float | None = None
        self._registered = asyncio.Event()
        self._on_ice_servers = on_ice_servers
        self.ice_servers: IceServers | None = None
        """The STUN/TURN servers (with TURN credentials) the relay offered last."""

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-client")

    async def stop(self) -> None:
        """Close the relay connection and every session it carried; no reconnect after this."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._end_sessions()
        self._set_state(RelayState.STOPPED)

    async def wait_registered(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self._registered.wait()

    def status(self) -> dict[str, Any]:
        """Keys documented in docs/control.md (`relay` in the status document)."""
        offered, wait = self.ice_servers, self.next_attempt_in_s
        return {
            "url": self.relay_url,
            "state": self.state.value,
            "since": round(self.since, 3) if self.since is not None else None,
            "last_error": self.last_error,
            "sessions": len(self._sessions),
            "registrations": self.registrations,
            "next_attempt_in_s": round(wait, 1) if wait is not None else None,
            "ice_servers": [s.url for s in offered.servers] if offered is not None else None,
            "ice_servers_expire_at": offered.expires_at if offered is not None else None,
        }

    def _set_state(self, state: RelayState) -> None:
        if state is not self.state:
            self.state = state
            self.since = self._wall()
        if state is not RelayState.REGISTERED:
            self._registered.clear()

    # --- the connection loop --------------------------------------------------------------------

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                delay = await self._attempt(http)
                self.next_attempt_in_s = delay
                self._set_state(RelayState.BACKOFF)
                log.info("relay: next attempt in %.1f s", delay)
                await asyncio.sleep(delay)
                self.next_attempt_in_s = None

    async def _attempt(self, http: aiohttp.ClientSession) -> float:
        """One connection, from connecting to its end; returns how long to wait before the next."""
        self._set_state(RelayState.CONNECTING)
        self.connection_attempts += 1
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                ws = await http.ws_connect(
                    self._endpoint,
                    heartbeat=self.settings.heartbeat_s,
                    max_msg_size=MAX_ENVELOPE_LEN,
                    compress=0,
                    **({"ssl": self._ssl} if self._ssl is not None else {}),
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._failed(f"cannot connect to {self._origin}: {_describe(exc)}")
        self._ws = ws
        try:
            await self._register(ws)
            self._backoff.reset()
            self.registrations += 1
            self.last_error = None
            self._set_state(RelayState.REGISTERED)
            self._registered.set()
            log.info("relay: registered at %s", self._origin)
            await self._serve(ws)
            return self._ended(ws)
        except _RefusedError as exc:
            self.last_error = str(exc)
            log.error("relay: %s; next attempt in %.0f s", exc, self.settings.refused_backoff_s)  # noqa: TRY400
            return self.settings.refused_backoff_s
        except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError) as exc:
            return self._failed(f"relay connection failed: {_describe(exc)}")
        finally:
            self._ws = None
            await ws.close()
            await self._end_sessions()

    def _failed(self, reason: str) -> float:
        self.last_error = reason
        log.warning("relay: %s", reason)
        return self._backoff.next_delay()

    def _ended(self, ws: aiohttp.ClientWebSocketResponse) -> float:
        code = ws.close_code
        if code == CloseCode.REPLACED:
            raise _RefusedError("another connection registered this device id (a cloned SD card?)")
        if code == CloseCode.REGISTRATION_REFUSED:
            raise _RefusedError("the relay refused the registration proof")
        return self._failed(f"the relay closed the connection (code {code})")

    async def _register(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async with asyncio.timeout(self.settings.register_timeout_s):
            challenge = await _receive_envelope(ws)
            if not isinstance(challenge, Challenge):
                raise ProtocolError(f"expected a challenge, got {type(challenge).__name__}")
            try:
                register = prove_registration(self._key, challenge, self._origin)
            except RelayOriginError:
                raise _RefusedError(
                    f"the relay calls itself {challenge.origin!r}, not {self._origin!r}: "
                    "check network.relay_url and the relay's public_origin"
                ) from None
            await ws.send_bytes(register.encode())
            answer = await _receive_envelope(ws)
            if answer is None and ws.close_code == CloseCode.REGISTRATION_REFUSED:
                raise _RefusedError("the relay refused the registration proof")
            if not isinstance(answer, Registered):
                raise ProtocolError(f"expected REGISTERED, got {type(answer).__name__}")
            if answer.device_id != self._device_id:
                raise ProtocolError("the relay registered a different device id")

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            envelope = await _receive_envelope(ws)
            if envelope is None:
                return
            if isinstance(envelope, Open):
                self._open(envelope.conn_id)
            elif isinstance(envelope, Data):
                negotiator = self._sessions.get(envelope.conn_id)
                if negotiator is not None:  # frames of an ended session may still cross: ignore
                    negotiator.feed(envelope.frame)
                    if negotiator.is_closed:
                        self._forget(envelope.conn_id)
            elif isinstance(envelope, Close):
                negotiator = self._sessions.get(envelope.conn_id)
                if negotiator is not None:
                    negotiator.connection_lost()
                    self._forget(envelope.conn_id)
            elif isinstance(envelope, IceServers):
                self._ice_servers(envelope)
            else:
                raise ProtocolError(f"unexpected {type(envelope).__name__} from the relay")

    def _ice_servers(self, offered: IceServers) -> None:
        """New sessions use them from now on (credentials are never logged)."""
        try:
            servers = tuple(IceServer(s.url, s.username, s.credential) for s in offered.servers)
        except ValueError as exc:
            log.warning("relay: ignoring the ICE servers it offered: %s", exc)
            return
        self.ice_servers = offered
        log.info("relay: offers %d STUN/TURN server(s)", len(servers))
        if self._on_ice_servers is not None:
            self._on_ice_servers(servers)

    # --- sessions -------------------------------------------------------------------------------

    def _open(self, conn_id: int) -> None:
        if conn_id in self._sessions:
            raise ProtocolError("the relay reused a connection id")

        async def send(frame: bytes) -> None:
            await self._send(Data(conn_id, frame).encode())

        async def close() -> None:
            if self._sessions.get(conn_id) is negotiator:
                self._forget(conn_id)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(Close(conn_id).encode())

        negotiator = self._negotiators(send, close, label=f"relay:{conn_id}")
        self._sessions[conn_id] = negotiator
        negotiator.start()

    async def _send(self, envelope: bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionError("the relay connection is closed")
        async with self._send_lock:
            await ws.send_bytes(envelope)

    def _forget(self, conn_id: int) -> None:
        """The session is over on our side; release its negotiator (and WebRTC session) in the background."""
        negotiator = self._sessions.pop(conn_id, None)
        if negotiator is None:
            return
        task = asyncio.create_task(negotiator.aclose(), name=f"relay-close-{conn_id}")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _end_sessions(self) -> None:
        for conn_id in list(self._sessions):
            negotiator = self._sessions.get(conn_id)
            if negotiator is not None:
                negotiator.connection_lost()
            self._forget(conn_id)
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)


async def _receive_envelope(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """The next envelope, or None once the WebSocket is closed. Raises ProtocolError for garbage."""
    message = await ws.receive()
    if message.type == aiohttp.WSMsgType.BINARY:
        return decode_envelope(message.data)
    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        return None
    if message.type == aiohttp.WSMsgType.ERROR:
        raise ConnectionError(f"WebSocket error: {ws.exception()}")
    raise ProtocolError(f"unexpected {message.type.name} message from the relay")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
