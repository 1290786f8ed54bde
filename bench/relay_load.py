"""Load for the relay benchmark, in its own process on other cores than the relay.

A minimal WebSocket client on asyncio streams (client frames masked with the all-zero key, which
RFC 6455 permits and leaves payloads unchanged), so that the load generator costs much less per
message than the relay it measures. It speaks the relay envelope format from petcamd.protocol.relay
and registers devices with the real key proof. Each DATA frame carries its send time (monotonic ns,
shared by every process on the machine) so the receiving end measures forwarding latency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.harness import Json
from petcamd.protocol.relay import (
    Challenge,
    Connect,
    Data,
    Envelope,
    Open,
    Registered,
    decode_envelope,
    encode_data,
    prove_registration,
)
from petcamd.secure.identity import key_id
from petcamd.secure.noise import public_bytes

_OP_BINARY = 0x2
_OP_CLOSE = 0x8
_OP_PING = 0x9
_OP_PONG = 0xA


class ClosedError(ConnectionError):
    pass


class UnexpectedEnvelopeError(Exception):
    """The relay answered with something else than the protocol says."""


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self.writer = writer
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, host: str, port: int, path: str) -> RawWebSocket:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise ClosedError(f"WebSocket upgrade refused: {head.splitlines()[0]!r}")
        return cls(reader, writer)

    def send(self, payload: bytes) -> None:
        self.writer.write(_frame(_OP_BINARY, payload))

    async def receive(self) -> list[bytes]:
        """Every complete binary message that has arrived (at least one); answers pings."""
        while True:
            messages = self._parse()
            if messages:
                return messages
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                raise ClosedError("connection closed")
            self._buffer += chunk

    def _parse(self) -> list[bytes]:
        buf = self._buffer
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if len(buf) - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if opcode == _OP_BINARY:
                out.append(payload)
            elif opcode == _OP_PING:
                self.writer.write(_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                raise ClosedError(f"closed by the relay: {int.from_bytes(payload[:2], 'big')}")
        del buf[:pos]
        return out

    async def envelope(self) -> Envelope:
        (message,) = await self.receive()
        return decode_envelope(message)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(_frame(_OP_CLOSE, (1000).to_bytes(2, "big")))
        self.writer.close()


@dataclass(slots=True)
class Tally:
    received: int = 0
    sent: int = 0
    recording: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    low_water: int = 0
    space: asyncio.Event = field(default_factory=asyncio.Event)

    def arrived(self, frame: bytes) -> None:
        self.received += 1
        if self.recording:
            self.latencies_ms.append((time.monotonic_ns() - int.from_bytes(frame[:8], "big")) / 1e6)
        if self.sent - self.received <= self.low_water:
            self.space.set()


@dataclass(slots=True)
class Lane:
    """One direction of one session: send with `ws`, under `conn_id`."""

    ws: RawWebSocket
    conn_id: int


class RelayLoadRole:
    def __init__(self) -> None:
        self._host = "127.0.0.1"
        self._port = 0
        self._viewer_port = 0
        self._sockets: list[RawWebSocket] = []
        self._readers: list[asyncio.Task[None]] = []
        self._lanes: list[Lane] = []
        self._idle: list[RawWebSocket] = []
        self._tally = Tally()
        self._pump: asyncio.Task[None] | None = None
        self._payload = b""

    async def op_target(self, port: int, viewer_port: int = 0) -> Json:
        """Devices connect to `port`; viewers to `viewer_port` (another relay instance), or `port` too."""
        self._port = port
        self._viewer_port = viewer_port or port
        return {}

    async def _device(self) -> tuple[RawWebSocket, str]:
        ws = await RawWebSocket.connect(self._host, self._port, "/device")
        key = X25519PrivateKey.generate()
        challenge = await ws.envelope()
        if not isinstance(challenge, Challenge):
            raise UnexpectedEnvelopeError(f"expected CHALLENGE, got {challenge!r}")
        ws.send(prove_registration(key, challenge, challenge.origin).encode())
        registered = await ws.envelope()
        device_id = key_id(public_bytes(key))
        if registered != Registered(device_id):
            raise UnexpectedEnvelopeError(f"registration failed: {registered!r}")
        return ws, device_id

    def _read(self, ws: RawWebSocket, on_data: Callable[[bytes], None]) -> None:
        async def loop() -> None:
            with contextlib.suppress(ClosedError, ConnectionError, asyncio.IncompleteReadError):
                while True:
                    for message in await ws.receive():
                        if message[0] == Data.TYPE:
                            on_data(message[5:])

        self._readers.append(asyncio.create_task(loop()))

    async def op_register_idle(self, n: int, concurrency: int = 50) -> Json:
        """Register `n` devices that then say nothing (they still answer the relay's pings)."""
        counter = itertools.count()

        async def one_by_one() -> None:
            while next(counter) < n:
                ws, _ = await self._device()
                self._idle.append(ws)
                self._read(ws, lambda _frame: None)

        await asyncio.gather(*(one_by_one() for _ in range(concurrency)))
        return {"registered": len(self._idle)}

    async def op_sessions(self, n: int, payload_bytes: int) -> Json:
        """`n` device/viewer pairs with one session each; DATA flows both ways on each."""
        tally = self._tally
        self._payload = os.urandom(max(8, payload_bytes) - 8)
        for _ in range(n):
            device, device_id = await self._device()
            viewer = await RawWebSocket.connect(self._host, self._viewer_port, "/viewer")
            viewer.send(Connect(1, device_id).encode())
            opened = await device.envelope()
            if not isinstance(opened, Open):
                raise UnexpectedEnvelopeError(f"expected OPEN, got {opened!r}")
            self._sockets += [device, viewer]
            self._lanes += [Lane(viewer, 1), Lane(device, opened.conn_id)]
            self._read(device, tally.arrived)
            self._read(viewer, tally.arrived)
        return {"sessions": n}

    async def op_flood(self, window: int = 0, rate: float = 0.0) -> Json:
        """Send until `stop`: keeping `window` messages in flight, or at `rate` messages per second."""
        if self._pump is not None:
            raise RuntimeError("already flooding")
        self._pump = asyncio.create_task(self._closed_loop(window) if window else self._open_loop(rate))
        return {}

    def _send_one(self, lane: Lane) -> None:
        lane.ws.send(encode_data(lane.conn_id, time.monotonic_ns().to_bytes(8, "big") + self._payload))
        self._tally.sent += 1

    async def _drain(self) -> None:
        await asyncio.gather(*(ws.writer.drain() for ws in self._sockets))

    async def _closed_loop(self, window: int) -> None:
        tally = self._tally
        tally.low_water = window // 2
        lanes = itertools.cycle(self._lanes)
        while True:
            while tally.sent - tally.received < window:
                self._send_one(next(lanes))
            tally.space.clear()
            await self._drain()
            await tally.space.wait()

    async def _open_loop(self, rate: float) -> None:
        lanes = itertools.cycle(self._lanes)
        started = time.monotonic()
        sent = 0
        while True:
            due = int((time.monotonic() - started) * rate)
            for _ in range(due - sent):
                self._send_one(next(lanes))
            sent = max(sent, due)
            await self._drain()
            await asyncio.sleep(0.002)

    async def op_mark(self, record: bool = True) -> Json:
        """Counters now, and the latencies recorded since the last mark."""
        tally = self._tally
        latencies, tally.latencies_ms = tally.latencies_ms, []
        tally.recording = record
        return {"sent": tally.sent, "received": tally.received, "latencies_ms": latencies}

    async def op_stop(self, settle_s: float = 1.0) -> Json:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        await asyncio.sleep(settle_s)
        tally = self._tally
        tally.recording = False
        return {"sent": tally.sent, "received": tally.received}

    async def aclose(self) -> None:
        await self.op_stop(0)
        for ws in self._sockets + self._idle:
            ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
