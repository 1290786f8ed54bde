"""The on-device LAN server: the viewer's origin in Local Network Mode, and its signaling endpoint.

Plain HTTP by design (docs/security.md explains why no certificate warning is worth it): the
pairing URL pins the device key and all signaling is Noise-encrypted end to end. Unauthenticated
endpoints reveal nothing beyond the device id and name.

``GET /ws`` is a WebSocket whose binary messages are protocol frames (docs/protocol.md). Anyone on
the LAN can open one, so each costs little until its viewer authenticates: messages are capped at
the protocol's frame size, connections are capped per address and in total, new connections per
address are rate-limited (every hello costs the device Diffie-Hellman operations), and a bad frame
ends only the connection it came on. At the total cap a new connection closes the oldest one that
has not authenticated yet instead of being refused: a flood from many addresses can then only
race a viewer's handshake (milliseconds), not lock viewers out until its connections time out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from petcamd.protocol.messages import MAX_FRAME_LEN, ErrorCode, Frame
from petcamd.quiet_log import QuietLog
from petcamd.secure.device_ca import CA_DOWNLOAD_PATH
from petcamd.signaling.negotiator import FrameSender, Negotiator, TransportCloser
from petcamd.web_static import StaticFiles, header_hook, quiet_malformed_requests, security_headers

log = logging.getLogger(__name__)

__all__ = ["WS_PATH", "ConnectionLimits", "LanServer", "LanServerSettings", "NegotiatorFactory"]

WS_PATH = "/ws"
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")
"""A Host header fit to repeat in a policy: a name or address and an optional port, nothing else."""
_CLOSE_TIMEOUT_S = 2.0
"""How long a close waits for the viewer's closing handshake (shutdown waits for no one longer)."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-device numbers: one device serves a handful of viewers."""

    max_connections: int = 32
    """Open connections in total; unauthenticated ones beyond it are closed oldest first."""
    max_per_address: int = 8
    handshake_burst: int = 10
    """New WebSocket connections an address may open at once (one hello each)..."""
    handshakes_per_s: float = 0.5
    """...and the rate at which that allowance refills."""
    tracked_addresses: int = 1024
    """Rate-limit state kept for at most this many addresses (full buckets are forgotten first)."""

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_per_address, self.handshake_burst, self.tracked_addresses) < 1:
            raise ValueError("connection limits must be at least 1")
        if self.handshakes_per_s <= 0:
            raise ValueError("handshakes_per_s must be positive")


@dataclass(frozen=True, slots=True)
class LanServerSettings:
    address: str
    port: int
    device_id: str
    device_name: str
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    static_dir: Path | None = None
    """The web viewer's files, served at / when set (routes above take precedence)."""
    connect_sources: tuple[str, ...] = ()
    """WebSocket origins the served page may reach besides this server (the relay's, if any)."""
    https_port: int | None = None
    """Also serve everything over HTTPS on this port (the optional device CA; see device_ca.py)."""
    ssl_context: ssl.SSLContext | None = None
    ca_certificate: bytes | None = None
    """The device CA (DER), offered at CA_DOWNLOAD_PATH on both ports so a phone can install it."""


class NegotiatorFactory(Protocol):
    """`petcamd.signaling.negotiator.Signaling`: one negotiator per connection."""

    def __call__(self, send: FrameSender, close: TransportCloser, *, label: str = "") -> Negotiator: ...


class _TokenBuckets:
    """Per-address token buckets on the monotonic clock."""

    def __init__(self, limits: ConnectionLimits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, updated at)

    def take(self, address: str) -> bool:
        now = self._clock()
        burst, rate = self._limits.handshake_burst, self._limits.handshakes_per_s
        tokens, updated = self._buckets.get(address, (float(burst), now))
        tokens = min(float(burst), tokens + (now - updated) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[address] = (tokens, now)
        if len(self._buckets) > self._limits.tracked_addresses:
            self._forget(now)
        return allowed

    def _forget(self, now: float) -> None:
        burst, rate = self._limits.handshake_burst, self._limits.handshakes_per_s
        full = [a for a, (t, at) in self._buckets.items() if t + (now - at) * rate >= burst]
        for address in full:
            del self._buckets[address]
        # Still too many: an address flood. Dropping the oldest state errs towards letting in.
        excess = len(self._buckets) - self._limits.tracked_addresses
        for address in sorted(self._buckets, key=lambda a: self._buckets[a][1])[: max(0, excess)]:
            del self._buckets[address]


def address_key(remote: str | None) -> str:
    """What the per-address limits count by.

    Exact addresses, IPv6 included: on a home LAN every phone shares the one /64 prefix, so
    grouping by prefix would make one viewer's retries everyone's problem. A LAN host that picks
    many addresses still meets the total limit.
    """
    if not remote:
        return "?"
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class LanServer:
    """An aiohttp site bound at start; `port` is the bound one (so port 0 works in tests)."""

    def __init__(
        self,
        settings: LanServerSettings,
        negotiators: NegotiatorFactory | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._negotiators = negotiators
        self._limits = settings.limits
        self._buckets = _TokenBuckets(settings.limits, clock)
        self._per_address: dict[str, int] = {}
        self._open: dict[Negotiator, web.WebSocketResponse] = {}  # oldest first
        self._evicting: set[Negotiator] = set()  # told to close to make room, not yet gone
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.port: int | None = None
        self.https_port: int | None = None
        self.refused = 0
        """Connections refused by a limit since start (for tests and status)."""
        self.evicted = 0
        """Unauthenticated connections closed to make room for newer ones since start."""
        self._quiet = QuietLog(log)

    @property
    def connections(self) -> int:
        return sum(self._per_address.values())

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/healthz", self._health)
        if self._negotiators is not None:
            app.router.add_get(WS_PATH, self._websocket)
        if self._settings.ca_certificate is not None:
            app.router.add_get(CA_DOWNLOAD_PATH, self._ca_certificate)
        if self._settings.static_dir is not None:
            app.router.add_get("/{path:.*}", StaticFiles(self._settings.static_dir).handle)
        app.on_response_prepare.append(header_hook(self._security_headers))
        app.on_response_prepare.append(self._no_server_header)
        return app

    def _security_headers(self, request: web.Request) -> dict[str, str]:
        """The page may open WebSockets to the host it was loaded from (by whatever address or name
        the viewer used) and to the relay; nothing else."""
        connect = list(self._settings.connect_sources)
        host = request.host
        if _HOST.fullmatch(host):
            connect.insert(0, f"{'wss' if request.secure else 'ws'}://{host}")
        # No HSTS even over https: it would bind the host name (all ports) to https for a year
        # and break the plain-http viewer on the same device if the owner turns HTTPS off.
        return security_headers(connect, https=False)

    @staticmethod
    async def _no_server_header(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers.pop("Server", None)  # no software versions to unauthenticated clients

    async def _ca_certificate(self, _request: web.Request) -> web.Response:
        """Public by nature: a certificate holds no secret. DER, the form phones install."""
        return web.Response(
            body=self._settings.ca_certificate,
            content_type="application/x-x509-ca-cert",
            headers={"Content-Disposition": 'attachment; filename="petcamd-ca.crt"'},
        )

    async def _health(self, _request: web.Request) -> web.Response:
        body = {"status": "ok", "device_id": self._settings.device_id, "name": self._settings.device_name}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    # --- WebSocket signaling --------------------------------------------------------------------

    def _refusal(self, address: str) -> ErrorCode | None:
        if self._stopping:
            return ErrorCode.DEVICE_UNAVAILABLE
        if self._per_address.get(address, 0) >= self._limits.max_per_address:
            self._quiet.info("per-address", f"refused a connection from {address}: too many open from there")
            return ErrorCode.RATE_LIMITED
        if not self._buckets.take(address):
            self._quiet.info("rate", f"refused a connection from {address}: too many new ones from there")
            return ErrorCode.RATE_LIMITED
        if not self._make_room():
            self._quiet.warning("total", f"refused a connection: {self.connections} open, all authenticated")
            return ErrorCode.RATE_LIMITED
        return None

    def _make_room(self) -> bool:
        """Below the total cap, or the oldest unauthenticated connection was told to close.

        Connections told to close still count until they are gone (at most the close timeout), and
        at most as many again may be closing at once: memory stays bounded whatever the flood."""
        limit = self._limits.max_connections
        if self.connections - len(self._evicting) < limit:
            return True
        if len(self._evicting) >= limit:
            return False
        for negotiator in self._open:
            if negotiator.peer_id is None and not negotiator.is_closed:
                self._quiet.info("evict", f"{limit} connections open: closing the oldest unauthenticated one")
                self.evicted += 1
                self._evicting.add(negotiator)
                negotiator.close(ErrorCode.RATE_LIMITED)
                return True
        return False

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        factory = self._negotiators
        if factory is None:
            raise web.HTTPNotFound
        ws = web.WebSocketResponse(
            max_msg_size=MAX_FRAME_LEN, compress=False, autoping=True, timeout=_CLOSE_TIMEOUT_S
        )
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="WebSocket only\n")
        address = address_key(request.remote)
        refusal = self._refusal(address)
        if refusal is not None:
            self.refused += 1
            await ws.prepare(request)
            # A browser cannot read an HTTP status from a failed upgrade; a frame it can.
            await ws.send_bytes(Frame.error(refusal).encode())
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
            return ws
        self._per_address[address] = self._per_address.get(address, 0) + 1  # counted before any await
        try:
            await ws.prepare(request)
            negotiator = factory(ws.send_bytes, ws.close, label=address)
            self._open[negotiator] = ws
            try:
                negotiator.start()
                await self._read(ws, negotiator)
            finally:
                await negotiator.aclose()  # sends what the channel still had to say, then closes
                await ws.close()
                del self._open[negotiator]
                self._evicting.discard(negotiator)
        finally:
            count = self._per_address.get(address, 1) - 1
            if count > 0:
                self._per_address[address] = count
            else:
                self._per_address.pop(address, None)
        return ws

    @staticmethod
    async def _read(ws: web.WebSocketResponse, negotiator: Negotiator) -> None:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                negotiator.feed(message.data)
            elif message.type == WSMsgType.TEXT:
                log.info("%r: text message; frames are binary: closing", negotiator)
                negotiator.close(ErrorCode.BAD_MESSAGE)
            elif message.type == WSMsgType.ERROR:
                # The reason names a limit or a framing rule; it never quotes the payload.
                log.info("%r: WebSocket error (close code %s): closing", negotiator, ws.close_code)
                return
            if negotiator.is_closed:
                return

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        quiet_malformed_requests()
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        settings = self._settings
        try:
            sock = _listen(settings.address, settings.port)
            await web.SockSite(runner, sock).start()
            self.port = sock.getsockname()[1]
            if settings.https_port is not None and settings.ssl_context is not None:
                tls_sock = _listen(settings.address, settings.https_port)
                await web.SockSite(runner, tls_sock, ssl_context=settings.ssl_context).start()
                self.https_port = tls_sock.getsockname()[1]
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("LAN server listening on http://%s:%d/", settings.address, self.port)
        if self.https_port is not None:
            log.info("LAN server listening on https://%s:%d/", settings.address, self.https_port)

    async def stop(self) -> None:
        """Close open WebSockets first: aiohttp would otherwise wait for their handlers."""
        self._stopping = True
        closing = [ws.close(code=WSCloseCode.GOING_AWAY) for ws in self._open.values()]
        await asyncio.gather(*closing, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _listen(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        sock.setblocking(False)  # noqa: FBT003 - socket API
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {address}:{port}: {exc.strerror}") from None
    return sock
