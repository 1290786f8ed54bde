"""A device's connection (/device): prove the key, then carry every relayed session of that device.

The relay opens with a CHALLENGE holding an ephemeral X25519 key made for this connection and
forgotten after one REGISTER; only the holder of the device's private key can answer it, and an
answer recorded on one connection is useless on any other (docs/relay.md, "Registration").
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.relay import (
    MAX_CONN_ID,
    NONCE_LEN,
    Challenge,
    Close,
    CloseCode,
    CloseReason,
    Data,
    Envelope,
    IceServers,
    Open,
    Register,
    Registered,
    check_registration,
    encode_data,
)
from petcamd.relay.connection import Connection, Shared
from petcamd.relay.limits import AddressEntry
from petcamd.relay.router import Endpoint
from petcamd.secure.identity import key_id
from petcamd.secure.noise import public_bytes

log = logging.getLogger(__name__)


class DeviceConnection(Connection):
    ROLE = "device"

    def __init__(
        self,
        ws: web.WebSocketResponse,
        shared: Shared,
        address: AddressEntry,
        transport: asyncio.Transport | None,
    ) -> None:
        super().__init__(ws, shared, address, transport)
        self.device_id: str | None = None
        self._viewers: dict[int, Endpoint] = {}
        self._next_conn_id = 1
        self._evicted = False
        self._ice: IceServers | None = None

    def rate_scale(self) -> int:
        # One device connection carries up to max_viewers_per_device sessions.
        return self.settings.max_viewers_per_device

    async def run(self) -> None:
        relay_key = X25519PrivateKey.generate()
        challenge = Challenge(secrets.token_bytes(NONCE_LEN), public_bytes(relay_key), self.settings.origin)
        self.outbox.put_control(challenge.encode())
        self.arm(self.settings.register_s, CloseCode.REGISTRATION_TIMEOUT, "registration timeout")
        async for envelope in self.envelopes():
            if self.device_id is not None:
                self._on_envelope(envelope)
            elif isinstance(envelope, Register):
                # One answer per challenge: a refusal closes the connection, a success sets the id.
                await self._register(relay_key, challenge, envelope)
            else:
                self.violation(f"expected REGISTER, got {envelope.TYPE.name}")

    async def _register(self, relay_key: X25519PrivateKey, challenge: Challenge, register: Register) -> None:
        if not check_registration(relay_key, challenge, register):
            log.info("device registration refused: the proof does not verify")
            self.metrics.registrations["refused"] += 1
            self.close(CloseCode.REGISTRATION_REFUSED, "registration refused")
            return
        device_id = key_id(register.device_key)
        self.disarm()
        self.device_id = device_id
        await self.shared.router.register(device_id, self)
        self.metrics.registrations["accepted"] += 1
        self.outbox.put_control(Registered(device_id).encode())
        self._offer_ice_servers()
        log.info("device %s registered (%d devices)", device_id, self.shared.router.devices)

    def _on_envelope(self, envelope: Envelope) -> None:
        if isinstance(envelope, Data):
            viewer = self._viewers.get(envelope.conn_id)
            if viewer is None:
                self.metrics.drops["unknown_connection"] += 1
            elif not viewer.deliver(envelope.frame):
                del self._viewers[envelope.conn_id]
                self.metrics.drops["queue_full"] += 1
                self.metrics.sessions -= 1
                viewer.end(CloseReason.OVERLOADED)
                self.outbox.put_control(Close(envelope.conn_id, CloseReason.OVERLOADED).encode())
        elif isinstance(envelope, Close):
            viewer = self._viewers.pop(envelope.conn_id, None)
            if viewer is not None:
                self.metrics.sessions -= 1
                viewer.end(CloseReason.CLOSED)
        else:
            self.violation(f"{envelope.TYPE.name} from a device")

    # DeviceHost, called by the router for viewers on any connection.

    def accept(self, viewer: Endpoint) -> Endpoint | CloseReason:
        if self.outbox.closing or self._evicted:
            return CloseReason.DEVICE_UNAVAILABLE
        if len(self._viewers) >= self.settings.max_viewers_per_device:
            return CloseReason.TOO_MANY_VIEWERS
        conn_id = self._next_conn_id
        if conn_id > MAX_CONN_ID:  # 4 billion sessions on one connection: make the device reconnect
            return CloseReason.DEVICE_UNAVAILABLE
        self._next_conn_id += 1
        self._viewers[conn_id] = viewer
        self.metrics.sessions += 1
        self._offer_ice_servers()  # fresh credentials before a session needs them
        self.outbox.put_control(Open(conn_id).encode())
        return _DeviceSide(self, conn_id)

    def _offer_ice_servers(self) -> None:
        turn = self.shared.turn
        if turn is not None and self.device_id is not None and (self._ice is None or turn.stale(self._ice)):
            self._ice = turn.issue(f"device-{self.device_id}")
            self.outbox.put_control(self._ice.encode())

    def evict(self) -> None:
        self._evicted = True
        self._end_sessions()
        self.close(CloseCode.REPLACED, "replaced by a newer registration")

    def _end_sessions(self) -> None:
        viewers, self._viewers = self._viewers, {}
        self.metrics.sessions -= len(viewers)
        for viewer in viewers.values():
            viewer.end(CloseReason.DEVICE_UNAVAILABLE)

    async def cleanup(self) -> None:
        self._end_sessions()
        if self.device_id is not None:
            await self.shared.router.unregister(self.device_id, self)
            if not self._evicted:
                log.info("device %s disconnected (%d devices)", self.device_id, self.shared.router.devices)

    def _forward(self, conn_id: int, frame: bytes) -> bool:
        if conn_id not in self._viewers:
            return True  # the session ended while the frame was on its way
        if not self.outbox.put_data(encode_data(conn_id, frame)):
            return False
        self.metrics.messages["viewer_to_device"] += 1
        self.metrics.bytes["viewer_to_device"] += len(frame)
        return True

    def _viewer_left(self, conn_id: int, reason: CloseReason) -> None:
        if self._viewers.pop(conn_id, None) is not None:
            self.metrics.sessions -= 1
            self.outbox.put_control(Close(conn_id, reason).encode())


class _DeviceSide:
    """The device end of one session, as the viewer's connection holds it."""

    __slots__ = ("_conn_id", "_device")

    def __init__(self, device: DeviceConnection, conn_id: int) -> None:
        self._device = device
        self._conn_id = conn_id

    def deliver(self, frame: bytes) -> bool:
        return self._device._forward(self._conn_id, frame)

    def end(self, reason: CloseReason) -> None:
        self._device._viewer_left(self._conn_id, reason)
