"""Shared pieces of the relay tests (this module holds no tests).

A real RelayServer on 127.0.0.1 port 0, real aiohttp WebSocket clients speaking the envelope
format, and a loopback TCP proxy that records every byte between clients and the relay. The relay
trusts 127.0.0.1 as a proxy, so each client picks the address the per-address limits see with an
X-Forwarded-For header.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.relay import (
    Challenge,
    Envelope,
    Registered,
    decode_envelope,
    prove_registration,
)
from petcamd.relay.config import RelayConfig, parse_config
from petcamd.relay.server import RelayServer
from petcamd.secure.identity import key_id
from petcamd.secure.noise import public_bytes

ORIGIN = "https://relay.test"
TIMEOUT_S = 5.0

BASE_CONFIG: dict[str, dict[str, Any]] = {
    "server": {"port": 0, "public_origin": ORIGIN, "trusted_proxies": ["127.0.0.1"]},
    "timeouts": {"heartbeat_s": 5.0, "register_s": 5.0, "idle_s": 30.0},
}


def relay_config(**sections: dict[str, Any]) -> RelayConfig:
    raw = copy.deepcopy(BASE_CONFIG)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw, source="test")


class ClosedError(AssertionError):
    """The relay closed the connection while the test expected a message."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason!r}")
        self.code = code
        self.reason = reason


class Client:
    """One WebSocket to the relay, speaking envelopes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, envelope: Envelope) -> None:
        await self.ws.send_bytes(envelope.encode())

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def recv(self, within: float = TIMEOUT_S) -> Envelope:
        msg = await self.ws.receive(timeout=within)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return decode_envelope(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            raise ClosedError(self.ws.close_code, msg.extra or "")
        raise AssertionError(f"unexpected {msg.type!r}")

    async def closed(self, within: float = TIMEOUT_S) -> tuple[int | None, str]:
        """Read until the relay closes the connection; returns its close code and reason."""
        async with asyncio.timeout(within):
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    return msg.data, msg.extra or ""
                if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return self.ws.close_code, ""
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return self.ws.close_code, ""

    async def close(self) -> None:
        await self.ws.close()


class DeviceClient(Client):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, key: X25519PrivateKey) -> None:
        super().__init__(ws)
        self.key = key
        self.device_id = key_id(public_bytes(key))
        self.challenge: Challenge | None = None

    async def read_challenge(self) -> Challenge:
        challenge = await self.recv()
        assert isinstance(challenge, Challenge), challenge
        self.challenge = challenge
        return challenge

    async def register(self) -> None:
        challenge = await self.read_challenge()
        await self.send(prove_registration(self.key, challenge, ORIGIN))
        registered = await self.recv()
        assert registered == Registered(self.device_id), registered


@dataclass
class Relay:
    server: RelayServer
    session: aiohttp.ClientSession
    base_url: str = ""
    clients: list[Client] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def ws_url(self, path: str) -> str:
        return self.url(path).replace("http", "ws", 1)

    async def connect(self, path: str, address: str, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        headers = {"X-Forwarded-For": address}
        ws: aiohttp.ClientWebSocketResponse = await self.session.ws_connect(
            self.ws_url(path), headers=headers, **kwargs
        )
        return ws

    async def device(
        self, key: X25519PrivateKey | None = None, address: str = "10.0.0.1", *, register: bool = True
    ) -> DeviceClient:
        ws = await self.connect("/device", address)
        client = DeviceClient(ws, key or X25519PrivateKey.generate())
        self.clients.append(client)
        if register:
            await client.register()
        return client

    async def viewer(self, address: str = "10.0.1.1", **kwargs: Any) -> Client:
        client = Client(await self.connect("/viewer", address, **kwargs))
        self.clients.append(client)
        return client

    async def metrics(self) -> str:
        async with self.session.get(self.url("/metrics")) as response:
            assert response.status == 200
            return await response.text()


@contextlib.asynccontextmanager
async def running_relay(
    config: RelayConfig | None = None, *, client_ssl: ssl.SSLContext | None = None, **sections: dict[str, Any]
) -> AsyncIterator[Relay]:
    """A started relay and a client session (trusting ``client_ssl``'s CAs for built-in TLS)."""
    server = RelayServer(config if config is not None else relay_config(**sections))
    await server.start()
    try:
        connector = aiohttp.TCPConnector(ssl=client_ssl) if client_ssl is not None else None
        async with aiohttp.ClientSession(connector=connector) as session:
            relay = Relay(server, session, f"{server.scheme}://127.0.0.1:{server.port}")
            try:
                yield relay
            finally:
                for client in relay.clients:
                    await client.ws.close()
    finally:
        await server.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text exposition; 0 when absent."""
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    wanted = f"petcam_relay_{name}{{{label}}}" if labels else f"petcam_relay_{name}"
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


async def wait_for(condition: Callable[[], bool], within: float = TIMEOUT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class CaptureProxy:
    """A loopback TCP proxy to the relay that records every byte, in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.streams: list[tuple[bytearray, bytearray]] = []  # (client to relay, relay to client)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> CaptureProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        up, down = bytearray(), bytearray()
        self.streams.append((up, down))
        tasks = [
            asyncio.ensure_future(self._pipe(reader, upstream_writer, up)),
            asyncio.ensure_future(self._pipe(upstream_reader, writer, down)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray) -> None:
        try:
            while data := await reader.read(65536):
                record += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def websocket_payloads(self) -> list[bytes]:
        """Every WebSocket frame payload seen, unmasked (clients mask what they send)."""
        payloads: list[bytes] = []
        for up, down in self.streams:
            payloads += ws_payloads(bytes(up)) + ws_payloads(bytes(down))
        return payloads

    def raw(self) -> bytes:
        return b"".join(bytes(up) + bytes(down) for up, down in self.streams)


def ws_payloads(stream: bytes) -> list[bytes]:
    """Parse one direction of a WebSocket connection (after its HTTP upgrade) into payloads."""
    return [payload for _opcode, payload in ws_frames(stream)]


def ws_frames(stream: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of each WebSocket frame after the HTTP upgrade."""
    end = stream.find(b"\r\n\r\n")
    if end < 0:
        return []
    data, pos, frames = stream, end + 4, []
    while pos + 2 <= len(data):
        opcode, second = data[pos] & 0x0F, data[pos + 1]
        length, pos = second & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        mask = b""
        if second & 0x80:
            mask, pos = data[pos : pos + 4], pos + 4
        payload = data[pos : pos + length]
        pos += length
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append((opcode, payload))
    return frames
