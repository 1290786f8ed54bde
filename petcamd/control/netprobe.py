"""The probes of the connection test (petcamd.control.nettest): relay, STUN and TURN servers.

Each probe returns a result and raises nothing it can explain: refusals, timeouts, TLS and DNS
failures become an ``error`` text worded for the owner, within the ``timeout_s`` each is given.

- relay: open ``<relay_url>/device``, time the relay's CHALLENGE, note the origin it names (the
  one the registration proof is bound to), measure round trips with WebSocket pings, and leave
  without registering: reachability needs no device key.
- STUN: Binding requests from one UDP socket to every STUN server, and to a server's alternate
  address when it offers one (RFC 5780), so the answers show how the router maps that one port.
- TURN: an Allocate over the URL's transport (UDP, TCP or TLS) with long-term credentials (the
  401, realm and nonce dance), then a Refresh with lifetime 0 so no allocation outlives the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import statistics
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from petcamd.control.stun import (
    HEADER_LEN,
    REQUESTED_UDP,
    Attr,
    Endpoint,
    Kind,
    Message,
    Method,
    StunError,
    decode,
    encode,
    long_term_key,
    message_length,
)
from petcamd.protocol.relay import Challenge, EnvelopeError, decode_envelope, relay_origin

__all__ = [
    "Endpoint",
    "IceUrl",
    "Observation",
    "RelayResult",
    "StunResult",
    "TurnResult",
    "device_url",
    "format_endpoint",
    "parse_ice_url",
    "probe_relay",
    "probe_stun",
    "probe_turn",
]

RELAY_PINGS = 3
STUN_RTO_S = 0.5
"""First retransmission timeout over UDP; it doubles after each try (RFC 5389 section 7.2.1)."""


def format_endpoint(value: Endpoint | None) -> str | None:
    if value is None:
        return None
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass(frozen=True, slots=True)
class RelayResult:
    url: str
    """The WebSocket URL probed: ``<relay_url>/device``."""
    reachable: bool = False
    """A relay CHALLENGE arrived (whatever origin it names)."""
    expected_origin: str | None = None
    origin: str | None = None
    """The origin the relay's CHALLENGE names: its ``public_origin`` setting."""
    connect_ms: float | None = None
    """From connecting until the CHALLENGE: DNS, TCP, TLS, the HTTP upgrade and one message."""
    rtt_ms: float | None = None
    """Median WebSocket ping round trip."""
    tls: bool | None = None
    """None for ws://; for wss:// whether the TLS handshake (certificate included) succeeded."""
    tls_error: str | None = None
    http_status: int | None = None
    """The HTTP status when the server refused the WebSocket upgrade."""
    error: str | None = None

    @property
    def origin_ok(self) -> bool:
        return self.reachable and self.origin is not None and self.origin == self.expected_origin

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "reachable": self.reachable,
            "expected_origin": self.expected_origin,
            "origin": self.origin,
            "origin_ok": self.origin_ok,
            "connect_ms": _ms(self.connect_ms),
            "rtt_ms": _ms(self.rtt_ms),
            "tls": self.tls,
            "tls_error": self.tls_error,
            "http_status": self.http_status,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class StunResult:
    url: str
    server: Endpoint | None = None
    """The address the server's name resolved to."""
    mapped: Endpoint | None = None
    """The address and port the server saw (XOR-MAPPED-ADDRESS)."""
    other_address: Endpoint | None = None
    """The server's alternate address (RFC 5780 OTHER-ADDRESS), when it has one."""
    rtt_ms: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "server": format_endpoint(self.server),
            "mapped": format_endpoint(self.mapped),
            "other_address": format_endpoint(self.other_address),
            "rtt_ms": _ms(self.rtt_ms),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Observation:
    """One Binding answer: which destination saw which public endpoint, from which local one."""

    destination: Endpoint
    mapped: Endpoint
    local: Endpoint


@dataclass(frozen=True, slots=True)
class TurnResult:
    url: str
    transport: str = "udp"
    """How the probe reached the server: udp, tcp or tls."""
    tested: bool = True
    """False when no TURN credentials were given."""
    server: Endpoint | None = None
    allocated: bool = False
    relayed: Endpoint | None = None
    """The relayed address viewers would send media to (XOR-RELAYED-ADDRESS)."""
    mapped: Endpoint | None = None
    lifetime_s: int | None = None
    released: bool = False
    """The allocation was deleted again (Refresh with lifetime 0)."""
    rtt_ms: float | None = None
    """Round trip of the first, unauthenticated Allocate."""
    auth_failed: bool = False
    tls_error: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "transport": self.transport,
            "tested": self.tested,
            "server": format_endpoint(self.server),
            "allocated": self.allocated,
            "relayed": format_endpoint(self.relayed),
            "mapped": format_endpoint(self.mapped),
            "lifetime_s": self.lifetime_s,
            "released": self.released,
            "rtt_ms": _ms(self.rtt_ms),
            "auth_failed": self.auth_failed,
            "tls_error": self.tls_error,
            "error": self.error,
        }


# ---------------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True, slots=True)
class IceUrl:
    url: str
    scheme: Literal["stun", "stuns", "turn", "turns"]
    host: str
    port: int
    transport: Literal["udp", "tcp", "tls"]

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")


_SCHEMES: dict[str, tuple[Literal["stun", "stuns", "turn", "turns"], int]] = {
    "stun": ("stun", 3478),
    "stuns": ("stuns", 5349),
    "turn": ("turn", 3478),
    "turns": ("turns", 5349),
}


def parse_ice_url(url: str) -> IceUrl:
    """A ``stun:``/``stuns:``/``turn:``/``turns:`` URL (RFC 7064, 7065). Raises ValueError."""
    scheme_text, colon, rest = url.strip().partition(":")
    known = _SCHEMES.get(scheme_text.lower())
    if not colon or known is None:
        raise ValueError(f"not a STUN or TURN URL: {url!r}")
    scheme, default_port = known
    address, _, query = rest.partition("?")
    if address.startswith("["):
        host, bracket, after = address[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"bad IPv6 address in {url!r}")
        port_text = after[1:]
    else:
        host, _, port_text = address.partition(":")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    if not host or not 0 < port < 65536 or "/" in host or "@" in host:
        raise ValueError(f"not a STUN or TURN URL: {url!r}")
    params = urllib.parse.parse_qs(query)
    requested = params.get("transport", ["udp" if scheme in ("stun", "turn") else "tcp"])[0].lower()
    if scheme in ("stuns", "turns"):
        if requested != "tcp":
            raise ValueError(f"{url!r}: TLS runs over TCP only (DTLS is not supported)")
        return IceUrl(url, scheme, host, port, "tls")
    if requested not in ("udp", "tcp"):
        raise ValueError(f"unknown transport in {url!r}")
    # A stun: URL has no transport parameter (RFC 7064): Binding requests go over UDP.
    return IceUrl(url, scheme, host, port, "tcp" if scheme == "turn" and requested == "tcp" else "udp")


def device_url(relay_url: str) -> str:
    """The relay's device endpoint for a configured relay URL (https becomes wss, http ws)."""
    parts = urllib.parse.urlsplit(relay_url.strip())
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme.lower(), parts.scheme.lower())
    path = parts.path.rstrip("/") + "/device"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


# ---------------------------------------------------------------------------------------------
# Error texts


def _os_error_text(exc: BaseException, where: str) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"{where} closed the connection"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {where}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (nothing listens there)"
    if isinstance(exc, ConnectionResetError):
        return f"{where} reset the connection"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{where}: {exc.strerror}"
    return f"{where}: {exc or type(exc).__name__}"


def _tls_text(exc: BaseException) -> str:
    cause: BaseException = exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
    elif isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return str(cause.reason or cause)
    return str(cause)


def _seconds(value: float) -> str:
    return f"{value:g} s"


# ---------------------------------------------------------------------------------------------
# The relay probe


async def probe_relay(
    relay_url: str, *, timeout_s: float, ssl_context: ssl.SSLContext | None = None
) -> RelayResult:
    """Reach the relay's device endpoint and read its CHALLENGE, within ``timeout_s``."""
    try:
        expected = relay_origin(relay_url)
        url = device_url(relay_url)
    except ValueError as exc:
        return RelayResult(relay_url, error=f"relay_url is not usable: {exc}")
    secure = url.startswith("wss:")
    where = urllib.parse.urlsplit(url).netloc
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting_for = f"from {where}"
    tls: bool | None = None
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout_at(deadline):
                started = loop.time()
                ws = await session.ws_connect(url, ssl=_context(ssl_context), autoping=False, heartbeat=None)
                tls = True if secure else None
                waiting_for = "for the relay's CHALLENGE"
            try:
                async with asyncio.timeout_at(deadline):
                    challenge = _challenge(await ws.receive())
                    connect_ms = (loop.time() - started) * 1000
                if isinstance(challenge, str):
                    return RelayResult(url, expected_origin=expected, tls=tls, error=challenge)
                rtts: list[float] = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await _ping_rtts(ws, RELAY_PINGS, rtts)
            finally:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # a relay that ignores the close frame
                        await ws.close()
    except TimeoutError:
        return RelayResult(
            url,
            expected_origin=expected,
            tls=tls,
            error=f"no answer {waiting_for} within {_seconds(timeout_s)}",
        )
    except aiohttp.WSServerHandshakeError as exc:
        return RelayResult(
            url,
            expected_origin=expected,
            tls=True if secure else None,
            http_status=exc.status,
            error=_handshake_text(exc.status, url),
        )
    except aiohttp.ClientSSLError as exc:
        text = _tls_text(exc)
        return RelayResult(
            url, expected_origin=expected, tls=False, tls_error=text, error=f"TLS failed: {text}"
        )
    except aiohttp.ClientConnectorError as exc:
        return RelayResult(url, expected_origin=expected, error=_os_error_text(exc.os_error, where))
    except (aiohttp.ClientError, OSError) as exc:
        return RelayResult(url, expected_origin=expected, tls=tls, error=_os_error_text(exc, where))
    return RelayResult(
        url,
        reachable=True,
        expected_origin=expected,
        origin=challenge.origin,
        connect_ms=connect_ms,
        rtt_ms=statistics.median(rtts) if rtts else None,
        tls=tls,
    )


def _challenge(msg: aiohttp.WSMessage) -> Challenge | str:
    """The CHALLENGE in the relay's first message, or why there is none."""
    if msg.type is not aiohttp.WSMsgType.BINARY:
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return f"the server closed the WebSocket without a CHALLENGE (code {msg.data})"
        return f"the server sent a {msg.type.name.lower()} message instead of a relay CHALLENGE"
    try:
        envelope = decode_envelope(msg.data)
    except EnvelopeError as exc:
        return f"the server's first message is not a relay envelope ({exc})"
    if not isinstance(envelope, Challenge):
        return f"the relay sent {envelope.TYPE.name} instead of a CHALLENGE"
    return envelope


async def _ping_rtts(ws: aiohttp.ClientWebSocketResponse, count: int, rtts: list[float]) -> None:
    """Append WebSocket ping round trips in ms; fewer than ``count`` if the relay goes away meanwhile."""
    loop = asyncio.get_running_loop()
    for n in range(count):
        payload = f"nettest {n}".encode()
        sent = loop.time()
        await ws.ping(payload)
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.PONG and msg.data == payload:
                rtts.append((loop.time() - sent) * 1000)
                break
            if msg.type is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return


def _handshake_text(status: int, url: str) -> str:
    if status == 429:
        return "the relay refused: too many connections from this address (HTTP 429)"
    if status == 503:
        return "the relay is full or unavailable (HTTP 503)"
    if status == 404:
        return f"HTTP 404: nothing at {url} (is relay_url the relay's address?)"
    return f"the server answered HTTP {status} instead of opening the WebSocket"


# ---------------------------------------------------------------------------------------------
# Transports for STUN transactions


class _Datagrams(asyncio.DatagramProtocol):
    """STUN over one UDP socket: answers are matched to requests by transaction id."""

    def __init__(self, *, connected: bool) -> None:
        self.connected = connected
        self.waiting: dict[bytes, asyncio.Future[tuple[Message, Endpoint]]] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            message = decode(data)
        except StunError:
            return
        future = self.waiting.get(message.transaction_id)
        if future is not None and not future.done():
            future.set_result((message, (str(addr[0]), int(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        # A connected socket's error (ICMP port unreachable) concerns its one server. On the
        # shared socket it could concern any of them, so those requests run into their timeout.
        if not self.connected:
            return
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)


async def _udp_transact(
    transport: asyncio.DatagramTransport,
    protocol: _Datagrams,
    request: bytes,
    destination: Endpoint | None,
) -> tuple[Message, float]:
    """Send with retransmissions until an answer arrives; the caller's timeout bounds it.

    Retransmissions keep the transaction id (a TURN server treats them as one request); the
    round trip is measured from the last send.
    """
    loop = asyncio.get_running_loop()
    transaction_id = request[8:HEADER_LEN]
    future: asyncio.Future[tuple[Message, Endpoint]] = loop.create_future()
    protocol.waiting[transaction_id] = future
    try:
        delay = STUN_RTO_S
        while True:
            sent = loop.time()
            if destination is None:
                transport.sendto(request)
            else:
                transport.sendto(request, destination)
            done, _ = await asyncio.wait({future}, timeout=delay)
            if done:
                message, _source = future.result()
                return message, (loop.time() - sent) * 1000
            delay *= 2
    finally:
        protocol.waiting.pop(transaction_id, None)
        if not future.done():
            future.cancel()


class _Channel(Protocol):
    """One client transport to a STUN/TURN server."""

    async def transact(self, request: bytes) -> tuple[Message, float]:
        """Send a request; its answer and the round trip in ms."""

    async def close(self) -> None: ...


class _UdpChannel:
    def __init__(self, transport: asyncio.DatagramTransport, protocol: _Datagrams) -> None:
        self._transport, self._protocol = transport, protocol

    async def transact(self, request: bytes) -> tuple[Message, float]:
        return await _udp_transact(self._transport, self._protocol, request, None)

    async def close(self) -> None:
        self._transport.close()


class _StreamChannel:
    """TCP or TLS: messages framed by their own length field (RFC 5389 section 7.2.2)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def transact(self, request: bytes) -> tuple[Message, float]:
        loop = asyncio.get_running_loop()
        transaction_id = request[8:HEADER_LEN]
        sent = loop.time()
        self._writer.write(request)
        await self._writer.drain()
        while True:
            header = await self._reader.readexactly(HEADER_LEN)
            message = decode(header + await self._reader.readexactly(message_length(header) - HEADER_LEN))
            if message.transaction_id == transaction_id:
                return message, (loop.time() - sent) * 1000

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()


async def _open_channel(server: Endpoint, url: IceUrl, context: ssl.SSLContext | None) -> _Channel:
    if url.transport == "udp":
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Datagrams(connected=True), remote_addr=server
        )
        return _UdpChannel(transport, protocol)
    tls = _context(context) if url.transport == "tls" else None
    reader, writer = await asyncio.open_connection(
        server[0], server[1], ssl=tls, server_hostname=url.host if tls is not None else None
    )
    return _StreamChannel(reader, writer)


async def _resolve(host: str, port: int, kind: socket.SocketKind) -> tuple[socket.AddressFamily, Endpoint]:
    """The first IPv4 address of ``host``, else the first IPv6 one."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=kind)
    infos.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


# ---------------------------------------------------------------------------------------------
# The STUN probe


def _local_ip_toward(family: socket.AddressFamily, destination: Endpoint) -> str | None:
    """The source address the kernel picks for ``destination`` (a UDP connect sends nothing)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(destination)
            return str(sock.getsockname()[0])
    except OSError:
        return None


@dataclass
class _StunSocket:
    family: socket.AddressFamily
    transport: asyncio.DatagramTransport
    protocol: _Datagrams

    @property
    def port(self) -> int:
        return int(self.transport.get_extra_info("sockname")[1])


async def probe_stun(
    urls: Sequence[IceUrl], *, timeout_s: float, ssl_context: ssl.SSLContext | None = None
) -> tuple[list[StunResult], list[Observation]]:
    """Binding requests to every server within ``timeout_s``; UDP ones share one socket per family.

    The observations (IPv4 ones when there are any, for the NAT that matters) feed
    ``classify_mapping``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    sockets: dict[socket.AddressFamily, _StunSocket] = {}
    opening = asyncio.Lock()  # the probes run at once, and all of them must share one socket
    observations: list[Observation] = []
    try:

        async def socket_for(family: socket.AddressFamily) -> _StunSocket:
            async with opening:
                if family not in sockets:
                    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104 - any local address
                    transport, protocol = await loop.create_datagram_endpoint(
                        lambda: _Datagrams(connected=False), local_addr=(wildcard, 0), family=family
                    )
                    sockets[family] = _StunSocket(family, transport, protocol)
                return sockets[family]

        async def bind(sock: _StunSocket, destination: Endpoint) -> tuple[Message, float]:
            request = encode(Method.BINDING, Kind.REQUEST)
            message, rtt = await _udp_transact(sock.transport, sock.protocol, request, destination)
            mapped = message.mapped()
            local_ip = _local_ip_toward(sock.family, destination)
            if message.kind is Kind.SUCCESS and mapped is not None and local_ip is not None:
                observations.append(Observation(destination, mapped, (local_ip, sock.port)))
            return message, rtt

        async def probe(url: IceUrl) -> StunResult:
            try:
                async with asyncio.timeout_at(deadline):
                    if url.transport != "udp":
                        return await _stun_over_stream(url, ssl_context)
                    family, server = await _resolve(url.host, url.port, socket.SOCK_DGRAM)
                    sock = await socket_for(family)
                    message, rtt = await bind(sock, server)
            except TimeoutError:
                return StunResult(url.url, error=f"no answer within {_seconds(timeout_s)}")
            except (OSError, StunError, asyncio.IncompleteReadError) as exc:
                return StunResult(url.url, error=_os_error_text(exc, f"{url.host}:{url.port}"))
            result = _binding_result(url.url, server, message, rtt)
            other = result.other_address
            if other is not None and other[0] != server[0]:
                # RFC 5780 tests II and III: the alternate address, with either port. An alternate
                # that does not answer costs time (up to the deadline), not the result above.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await asyncio.gather(*(extra(sock, d) for d in ((other[0], server[1]), other)))
            return result

        async def extra(sock: _StunSocket, destination: Endpoint) -> None:
            with contextlib.suppress(StunError, OSError):
                await bind(sock, destination)

        results = list(await asyncio.gather(*(probe(url) for url in urls)))
    finally:
        for sock in sockets.values():
            sock.transport.close()
    udp = [o for o in observations if ":" not in o.destination[0]] or observations
    udp.sort(key=lambda o: (o.destination[0], o.destination[1]))
    return results, udp


def _binding_result(url: str, server: Endpoint, message: Message, rtt: float) -> StunResult:
    if message.kind is not Kind.SUCCESS:
        code, reason = message.error() or (0, "no reason given")
        return StunResult(url, server=server, rtt_ms=rtt, error=f"the server refused: {code} {reason}")
    mapped = message.mapped()
    if mapped is None:
        return StunResult(url, server=server, rtt_ms=rtt, error="the answer holds no mapped address")
    return StunResult(url, server, mapped, message.address(Attr.OTHER_ADDRESS), rtt)


async def _stun_over_stream(url: IceUrl, ssl_context: ssl.SSLContext | None) -> StunResult:
    _, server = await _resolve(url.host, url.port, socket.SOCK_STREAM)
    channel = await _open_channel(server, url, ssl_context)
    try:
        message, rtt = await channel.transact(encode(Method.BINDING, Kind.REQUEST))
    finally:
        await channel.close()
    return _binding_result(url.url, server, message, rtt)


def _context(context: ssl.SSLContext | None) -> ssl.SSLContext:
    return context if context is not None else ssl.create_default_context()


# ---------------------------------------------------------------------------------------------
# The TURN probe


class _TurnRefusedError(Exception):
    def __init__(self, text: str, *, auth: bool = False) -> None:
        super().__init__(text)
        self.auth = auth


@dataclass
class _TurnAuth:
    username: str
    password: str = field(repr=False)
    realm: str = ""
    nonce: bytes = b""
    key: bytes = field(default=b"", repr=False)

    def learn(self, message: Message) -> bool:
        """Take the realm and nonce of a 401 or 438 answer; False if it carries none."""
        realm, nonce = message.text(Attr.REALM), message.attributes.get(Attr.NONCE)
        if realm is None or nonce is None:
            return False
        self.realm, self.nonce = realm, nonce
        self.key = long_term_key(self.username, realm, self.password)
        return True

    def attributes(self) -> list[tuple[int, bytes]]:
        return [
            (Attr.USERNAME, self.username.encode()),
            (Attr.REALM, self.realm.encode()),
            (Attr.NONCE, self.nonce),
        ]


@dataclass
class _TurnProgress:
    """What a TURN probe learned so far, kept when a later step fails or times out."""

    server: Endpoint | None = None
    rtt_ms: float | None = None
    allocated: bool = False
    relayed: Endpoint | None = None
    mapped: Endpoint | None = None
    lifetime_s: int | None = None
    released: bool = False

    def result(
        self,
        url: IceUrl,
        error: str | None = None,
        *,
        auth_failed: bool = False,
        tls_error: str | None = None,
    ) -> TurnResult:
        if error is not None and self.allocated and not self.released:
            error = f"releasing the allocation: {error}"
        return TurnResult(
            url.url,
            url.transport,
            server=self.server,
            allocated=self.allocated,
            relayed=self.relayed,
            mapped=self.mapped,
            lifetime_s=self.lifetime_s,
            released=self.released,
            rtt_ms=self.rtt_ms,
            auth_failed=auth_failed,
            tls_error=tls_error,
            error=error,
        )


async def _authenticated(
    channel: _Channel, auth: _TurnAuth, method: Method, attributes: list[tuple[int, bytes]]
) -> Message:
    """One request with long-term credentials, retried once when the nonce went stale (438)."""
    for _ in range(2):
        request = encode(method, Kind.REQUEST, attributes + auth.attributes(), integrity_key=auth.key)
        message, _ = await channel.transact(request)
        error = message.error()
        if not (message.kind is Kind.ERROR and error is not None and error[0] == 438 and auth.learn(message)):
            break
    return message


async def probe_turn(
    url: IceUrl, username: str, password: str, *, timeout_s: float, ssl_context: ssl.SSLContext | None = None
) -> TurnResult:
    """Allocate a relayed address and release it again, within ``timeout_s``."""
    where = f"{url.host}:{url.port}"
    progress = _TurnProgress()
    try:
        async with asyncio.timeout(timeout_s):
            await _allocate_and_release(url, ssl_context, _TurnAuth(username, password), progress)
        return progress.result(url)
    except TimeoutError:
        phase = "" if progress.rtt_ms is None else " after the first answer"
        timeout = _seconds(timeout_s)
        return progress.result(url, f"no answer{phase} within {timeout} over {url.transport.upper()}")
    except _TurnRefusedError as exc:
        return progress.result(url, str(exc), auth_failed=exc.auth)
    except ssl.SSLError as exc:
        text = _os_error_text(exc, where)
        return progress.result(url, text, tls_error=text if url.transport == "tls" else None)
    except (OSError, StunError, asyncio.IncompleteReadError) as exc:
        return progress.result(url, _os_error_text(exc, where))


async def _allocate_and_release(
    url: IceUrl, ssl_context: ssl.SSLContext | None, auth: _TurnAuth, progress: _TurnProgress
) -> None:
    """Allocate (a 401 first, then with credentials), check the answer is signed, then delete it."""
    kind = socket.SOCK_DGRAM if url.transport == "udp" else socket.SOCK_STREAM
    _, progress.server = await _resolve(url.host, url.port, kind)
    channel = await _open_channel(progress.server, url, ssl_context)
    try:
        requested = [(int(Attr.REQUESTED_TRANSPORT), REQUESTED_UDP)]
        message, progress.rtt_ms = await channel.transact(encode(Method.ALLOCATE, Kind.REQUEST, requested))
        if message.kind is Kind.SUCCESS:
            await channel.transact(encode(Method.REFRESH, Kind.REQUEST, [(int(Attr.LIFETIME), bytes(4))]))
            raise _TurnRefusedError(
                "the server allocates without authentication: anyone could use it as a relay"
            )
        error = message.error()
        if error is None or error[0] != 401 or not auth.learn(message):
            raise _TurnRefusedError(f"unexpected answer to an Allocate: {_error_text(error)}")

        message = await _authenticated(channel, auth, Method.ALLOCATE, requested)
        error = message.error()
        if message.kind is not Kind.SUCCESS:
            if error is not None and error[0] == 401:
                raise _TurnRefusedError(
                    f"the server refused the username or password ({_error_text(error)})", auth=True
                )
            raise _TurnRefusedError(f"the server refused the allocation ({_error_text(error)})")
        if not message.integrity_ok(auth.key):
            raise _TurnRefusedError("the answer is not signed with these credentials (MESSAGE-INTEGRITY)")
        progress.relayed = message.address(Attr.XOR_RELAYED_ADDRESS)
        if progress.relayed is None:
            raise _TurnRefusedError("the allocation answer holds no relayed address")
        progress.allocated = True
        progress.mapped = message.mapped()
        progress.lifetime_s = message.uint(Attr.LIFETIME)

        message = await _authenticated(channel, auth, Method.REFRESH, [(int(Attr.LIFETIME), bytes(4))])
        if message.kind is not Kind.SUCCESS:
            raise _TurnRefusedError(f"the server refused ({_error_text(message.error())})")
        progress.released = True
    finally:
        await channel.close()


def _error_text(error: tuple[int, str] | None) -> str:
    if error is None:
        return "no error code"
    code, reason = error
    return f"{code} {reason}".strip()
