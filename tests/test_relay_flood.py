"""1,000 malformed or oversized frames from one client leave everyone else's sessions untouched."""

from __future__ import annotations

import asyncio
import itertools
import os

import aiohttp

from petcamd.protocol.relay import (
    Challenge,
    Close,
    CloseCode,
    Connect,
    Data,
    EnvelopeType,
    Open,
    Registered,
)
from tests.test_relay_harness import Client, DeviceClient, Relay, metric, running_relay

ATTACKER = "10.66.6.6"
FRAMES = 1000
MAX_MESSAGE = 2048

# One bad frame each; every one of them ends the connection it arrives on.
_BAD_VIEWER_FRAMES: list[tuple[str, bytes]] = [
    ("unknown type", b"\xff" + os.urandom(20)),
    ("petcamd frame without envelope", b"\x02" + os.urandom(96)),
    ("empty", b""),
    ("truncated CONNECT", bytes((EnvelopeType.CONNECT,)) + b"\x00\x00"),
    ("CONNECT with a bad device id", Connect(1, "a" * 16).encode().upper()),
    ("CONNECT to connection id 0", bytes((EnvelopeType.CONNECT,)) + bytes(4) + b"a" * 16),
    ("DATA without a frame", bytes((EnvelopeType.DATA,)) + b"\x00\x00\x00\x01"),
    ("CLOSE of the wrong length", bytes((EnvelopeType.CLOSE,)) + b"\x00\x00\x00\x01\x00"),
    ("OPEN from a viewer", Open(1).encode()),
    ("REGISTERED from a viewer", Registered("a" * 16).encode()),
    ("CHALLENGE from a viewer", Challenge(bytes(32), bytes(32), "https://x").encode()),
    ("oversized", bytes((EnvelopeType.DATA,)) + b"\x00\x00\x00\x01" + os.urandom(MAX_MESSAGE)),
]
_BAD_DEVICE_FRAMES: list[tuple[str, bytes]] = [
    ("REGISTER too short", bytes((EnvelopeType.REGISTER,)) + os.urandom(40)),
    ("DATA before REGISTER", Data(1, b"x").encode()),
    ("CONNECT from a device", Connect(1, "a" * 16).encode()),
    ("oversized", os.urandom(MAX_MESSAGE + 1)),
]


async def _attack(relay: Relay, victims: list[str], budget: itertools.count[int], sent: list[str]) -> None:
    """One attacker worker: new connection, one bad frame, wait for the relay to hang up; repeat."""
    while (n := next(budget)) < FRAMES:
        on_device = n % 5 == 4
        kinds = _BAD_DEVICE_FRAMES if on_device else _BAD_VIEWER_FRAMES
        kind, frame = kinds[n % len(kinds)]
        ws = await relay.connect("/device" if on_device else "/viewer", ATTACKER)
        client = Client(ws)
        if on_device:
            await client.recv()  # the CHALLENGE
        elif n % 50 == 0:
            # Now and then open a junk session to a victim device first: it sees a new session
            # (which it ends), never a change to its existing ones.
            await client.send(Connect(1, victims[n % len(victims)]))
            await client.send(Data(1, os.urandom(97)))
        await client.send_raw(frame)
        code, _ = await client.closed()
        assert code in (CloseCode.BAD_ENVELOPE, CloseCode.MESSAGE_TOO_BIG), (kind, code)
        sent.append(kind)


async def _pair(relay: Relay, n: int) -> tuple[DeviceClient, Client, int]:
    device = await relay.device(address=f"10.0.0.{n}")
    viewer = await relay.viewer(address=f"10.0.1.{n}")
    await viewer.send(Connect(1, device.device_id))
    opened = await device.recv()
    assert isinstance(opened, Open)
    return device, viewer, opened.conn_id


async def _echo(device: DeviceClient, conn_id: int) -> None:
    """The device echoes its viewer's frames and ends the attacker's junk sessions."""
    while True:
        envelope = await device.recv(within=30)
        if isinstance(envelope, Data) and envelope.conn_id == conn_id:
            await device.send(Data(conn_id, envelope.frame))
        elif isinstance(envelope, Data | Open):
            await device.send(Close(envelope.conn_id))


async def _exchange(viewer: Client, stop: asyncio.Event, log: list[bytes]) -> None:
    """Send numbered frames and check every echo arrives, in order, byte for byte."""
    for seq in itertools.count():
        if stop.is_set():
            return
        frame = seq.to_bytes(4, "big") + os.urandom(60)
        await viewer.send(Data(1, frame))
        echoed = await viewer.recv()
        assert echoed == Data(1, frame), f"pair lost or reordered frame {seq}"
        log.append(frame)
        await asyncio.sleep(0.002)


async def test_malformed_flood_from_one_client_leaves_other_sessions_intact() -> None:
    limits = {
        "max_message_bytes": MAX_MESSAGE,
        "byte_burst": 100_000,
        # The pairs exchange as fast as they can; this test is about bad frames, not rates.
        "messages_per_s": 5000.0,
        "message_burst": 5000,
        "address_messages_per_s": 5000.0,
        "address_message_burst": 5000,
        "address_connects_per_s": 10_000.0,
        "address_connect_burst": 10_000,
    }
    async with running_relay(limits=limits) as relay:
        pairs = [await _pair(relay, n) for n in (1, 2)]
        victims = [device.device_id for device, _, _ in pairs]
        stop = asyncio.Event()
        logs: list[list[bytes]] = [[], []]
        echoes = [asyncio.ensure_future(_echo(device, conn)) for device, _, conn in pairs]
        exchanges = [
            asyncio.ensure_future(_exchange(viewer, stop, log))
            for (_, viewer, _), log in zip(pairs, logs, strict=True)
        ]

        budget = itertools.count()
        sent: list[str] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(_attack(relay, victims, budget, sent) for _ in range(8)))
        elapsed = loop.time() - started
        before = [len(log) for log in logs]
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*exchanges)
        for task in echoes:
            task.cancel()
        await asyncio.gather(*echoes, return_exceptions=True)

        assert len(sent) == FRAMES
        assert all(count > 20 for count in before), (before, elapsed)
        for device, viewer, _ in pairs:
            assert not device.ws.closed
            assert not viewer.ws.closed
        text = await relay.metrics()
        assert (
            metric(text, "closed_connections_total", reason="bad_envelope")
            + metric(text, "closed_connections_total", reason="message_too_big")
            == FRAMES
        )
        assert metric(text, "dropped_messages_total", reason="too_large") == sent.count("oversized")
        assert metric(text, "connections", role="device") == 2
        assert metric(text, "connections", role="viewer") == 2
        async with relay.session.get(relay.url("/healthz")) as response:
            assert response.status == 200


async def test_the_flood_frames_are_refused_one_by_one() -> None:
    """Each frame of the flood, alone, is refused with the close code the flood test expects."""
    async with running_relay(limits={"max_message_bytes": MAX_MESSAGE, "byte_burst": 100_000}) as relay:
        for n, (kind, frame) in enumerate(_BAD_VIEWER_FRAMES + _BAD_DEVICE_FRAMES):
            device = (kind, frame) in _BAD_DEVICE_FRAMES
            ws = await relay.connect("/device" if device else "/viewer", f"10.7.{n}.1")
            client = Client(ws)
            if device:
                await client.recv()
            await client.send_raw(frame)
            expected = CloseCode.MESSAGE_TOO_BIG if kind == "oversized" else CloseCode.BAD_ENVELOPE
            assert (await client.closed())[0] == expected, kind
            assert isinstance(ws, aiohttp.ClientWebSocketResponse)
