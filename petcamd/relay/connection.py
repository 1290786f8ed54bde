"""What device and viewer connections share: limits, the receive loop, timers and closing.

A connection that breaks the envelope rules, exceeds a rate or sends more than the size limit is
closed with a WebSocket close code saying why (petcamd.protocol.relay.CloseCode); only that
connection and its own sessions end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from aiohttp import WebSocketError, WSMsgType, web

from petcamd.protocol.relay import CloseCode, Envelope, EnvelopeError, decode_envelope
from petcamd.relay.limits import AddressEntry, TokenBucket
from petcamd.relay.metrics import Metrics
from petcamd.relay.outbox import Outbox
from petcamd.relay.router import Router
from petcamd.relay.turn import TurnIssuer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    origin: str
    register_s: float
    idle_s: float
    messages_per_s: float
    message_burst: int
    bytes_per_s: float
    byte_burst: int
    max_viewers_per_device: int
    max_sessions_per_viewer: int
    send_queue_bytes: int


@dataclass(frozen=True, slots=True)
class Shared:
    """What every connection of one server uses."""

    settings: ConnectionSettings
    router: Router
    metrics: Metrics
    turn: TurnIssuer | None = None
    """Issues the ICE_SERVERS each client gets; None when the relay offers no STUN/TURN servers."""


class Connection:
    ROLE: ClassVar[str]

    def __init__(
        self,
        ws: web.WebSocketResponse,
        shared: Shared,
        address: AddressEntry,
        transport: asyncio.Transport | None,
    ) -> None:
        settings = shared.settings
        self.ws = ws
        self._transport = transport
        self._ending_since: float | None = None
        self.shared = shared
        self.settings = settings
        self.metrics = shared.metrics
        self.address = address
        self.outbox = Outbox(ws, settings.send_queue_bytes)
        scale = self.rate_scale()
        self._messages = TokenBucket(settings.messages_per_s * scale, settings.message_burst * scale)
        self._bytes = TokenBucket(settings.bytes_per_s * scale, settings.byte_burst * scale)
        self._timer: asyncio.TimerHandle | None = None

    def rate_scale(self) -> int:
        return 1

    async def serve(self) -> None:
        """Run the connection until it closes, then end its sessions."""
        self.metrics.connections[self.ROLE] += 1
        writer = asyncio.create_task(self.outbox.run(), name=f"relay-{self.ROLE}-writer")
        try:
            await self.run()
        except Exception:
            log.exception("%s connection failed", self.ROLE)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.disarm()
            try:
                await self.cleanup()
            finally:
                self.outbox.close(CloseCode.NORMAL, "")
                try:
                    await writer
                finally:
                    self.metrics.connections[self.ROLE] -= 1

    async def run(self) -> None:
        raise NotImplementedError

    def reap(self, now: float, grace_s: float) -> None:
        """Abort the TCP connection if it has been ending for longer than ``grace_s``.

        A peer that stops reading leaves unsent bytes in the transport, and asyncio's close()
        waits for them forever; the heartbeat marks such a connection closed, and this ends it.
        """
        if not (self.ws.closed or self.outbox.closing):
            return
        if self._ending_since is None:
            self._ending_since = now
        elif now - self._ending_since >= grace_s:
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now, unsent bytes and all."""
        transport, self._transport = self._transport, None
        if transport is not None:
            log.debug("aborting a %s connection that stopped reading", self.ROLE)
            self.metrics.closes["aborted"] += 1
            transport.abort()

    async def cleanup(self) -> None:
        """End this connection's sessions and routes; runs once, however it ended."""

    def close(self, code: CloseCode, reason: str) -> None:
        """Close the whole connection (after what is queued), counting why."""
        if not self.outbox.closing:
            self.metrics.closes[code.name.lower()] += 1
        self.outbox.close(code, reason)

    def violation(self, what: str) -> None:
        log.debug("closing a %s connection: %s", self.ROLE, what)
        self.metrics.drops["bad_envelope"] += 1
        self.close(CloseCode.BAD_ENVELOPE, "bad envelope")

    async def envelopes(self) -> AsyncIterator[Envelope]:
        """Parsed envelopes until the connection closes or breaks a rule."""
        while not self.outbox.closing:
            msg = await self.ws.receive()
            if msg.type is WSMsgType.BINARY:
                data: bytes = msg.data
                if not self._within_rate(len(data)):
                    return
                try:
                    envelope = decode_envelope(data)
                except EnvelopeError as exc:
                    self.violation(str(exc))
                    return
                yield envelope
            elif msg.type is WSMsgType.TEXT:
                self.violation("text message")
                return
            elif msg.type is WSMsgType.ERROR:
                if isinstance(msg.data, WebSocketError) and msg.data.code == CloseCode.MESSAGE_TOO_BIG:
                    log.debug("closed a %s connection: message too big", self.ROLE)
                    self.metrics.drops["too_large"] += 1
                    self.metrics.closes["message_too_big"] += 1
                return
            else:  # CLOSE, CLOSING, CLOSED: the peer left or the connection is being closed
                return

    def _within_rate(self, size: int) -> bool:
        if self._messages.take() and self._bytes.take(size) and self.address.messages.take():
            return True
        log.debug("closing a %s connection: rate limit", self.ROLE)
        self.metrics.drops["rate_limited"] += 1
        self.close(CloseCode.RATE_LIMITED, "rate limited")
        return False

    def arm(self, delay: float, code: CloseCode, reason: str) -> None:
        """Close with ``code`` after ``delay`` seconds unless disarmed first."""
        self.disarm()
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire, code, reason)

    def _expire(self, code: CloseCode, reason: str) -> None:
        self._timer = None
        log.debug("closing a %s connection: %s", self.ROLE, reason)
        self.close(code, reason)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
