"""A viewer's connection (/viewer): sessions with devices by device id, under ids the viewer picks.

Anyone may connect as a viewer: the relay authenticates no viewer, because the device does that
end to end inside Noise. A viewer connection with no session open is closed after the idle time.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from petcamd.protocol.relay import Close, CloseCode, CloseReason, Connect, Data, IceServers, encode_data
from petcamd.relay.connection import Connection, Shared
from petcamd.relay.limits import AddressEntry
from petcamd.relay.router import Endpoint

log = logging.getLogger(__name__)


class ViewerConnection(Connection):
    ROLE = "viewer"

    def __init__(
        self,
        ws: web.WebSocketResponse,
        shared: Shared,
        address: AddressEntry,
        transport: asyncio.Transport | None,
    ) -> None:
        super().__init__(ws, shared, address, transport)
        self._devices: dict[int, Endpoint] = {}
        self._ice: IceServers | None = None

    async def run(self) -> None:
        self._idle()
        self._offer_ice_servers()
        async for envelope in self.envelopes():
            if isinstance(envelope, Connect):
                await self._connect(envelope)
            elif isinstance(envelope, Data):
                self._data(envelope)
            elif isinstance(envelope, Close):
                device = self._devices.pop(envelope.conn_id, None)
                if device is not None:
                    device.end(CloseReason.CLOSED)
                    self._idle()
            else:
                self.violation(f"{envelope.TYPE.name} from a viewer")
                return

    def _offer_ice_servers(self) -> None:
        turn = self.shared.turn
        if turn is not None and (self._ice is None or turn.stale(self._ice)):
            self._ice = turn.issue("viewer")
            self.outbox.put_control(self._ice.encode())

    async def _connect(self, connect: Connect) -> None:
        self._offer_ice_servers()
        conn_id = connect.conn_id
        if conn_id in self._devices:
            self.violation("CONNECT for a connection id in use")
            return
        if len(self._devices) >= self.settings.max_sessions_per_viewer:
            self._refuse(conn_id, CloseReason.TOO_MANY_SESSIONS)
            return
        result = await self.shared.router.connect(connect.device_id, _ViewerSide(self, conn_id))
        if isinstance(result, CloseReason):
            self._refuse(conn_id, result)
            return
        if self.outbox.closing:  # closed while the router looked for the device
            result.end(CloseReason.CLOSED)
            return
        self._devices[conn_id] = result
        self.disarm()
        log.debug("viewer session opened with device %s", connect.device_id)

    def _refuse(self, conn_id: int, reason: CloseReason) -> None:
        self.metrics.drops[reason.name.lower()] += 1
        self.outbox.put_control(Close(conn_id, reason).encode())

    def _data(self, data: Data) -> None:
        device = self._devices.get(data.conn_id)
        if device is None:
            self.metrics.drops["unknown_connection"] += 1
        elif not device.deliver(data.frame):
            del self._devices[data.conn_id]
            self.metrics.drops["queue_full"] += 1
            device.end(CloseReason.OVERLOADED)
            self.outbox.put_control(Close(data.conn_id, CloseReason.OVERLOADED).encode())
            self._idle()

    def _idle(self) -> None:
        if not self._devices and not self.outbox.closing:
            self.arm(self.settings.idle_s, CloseCode.IDLE_TIMEOUT, "idle timeout")

    async def cleanup(self) -> None:
        devices, self._devices = self._devices, {}
        for device in devices.values():
            device.end(CloseReason.CLOSED)

    def _forward(self, conn_id: int, frame: bytes) -> bool:
        if conn_id not in self._devices:
            return True  # the session ended while the frame was on its way
        if not self.outbox.put_data(encode_data(conn_id, frame)):
            return False
        self.metrics.messages["device_to_viewer"] += 1
        self.metrics.bytes["device_to_viewer"] += len(frame)
        return True

    def _device_left(self, conn_id: int, reason: CloseReason) -> None:
        if self._devices.pop(conn_id, None) is not None:
            self.outbox.put_control(Close(conn_id, reason).encode())
            self._idle()


class _ViewerSide:
    """The viewer end of one session, as the device's connection holds it."""

    __slots__ = ("_conn_id", "_viewer")

    def __init__(self, viewer: ViewerConnection, conn_id: int) -> None:
        self._viewer = viewer
        self._conn_id = conn_id

    def deliver(self, frame: bytes) -> bool:
        return self._viewer._forward(self._conn_id, frame)

    def end(self, reason: CloseReason) -> None:
        self._viewer._device_left(self._conn_id, reason)
