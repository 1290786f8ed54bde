"""Every limit the relay enforces, with the close code or HTTP status a client sees."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import aiohttp
import pytest

from petcamd.protocol.relay import Close, CloseCode, CloseReason, Connect, Data, Open
from petcamd.relay import server as server_module
from petcamd.relay.limits import TokenBucket, address_key, client_address
from tests.test_relay_harness import Client, metric, running_relay, wait_for


async def test_oversized_message_closes_with_1009() -> None:
    async with running_relay(limits={"max_message_bytes": 1000, "byte_burst": 100_000}) as relay:
        viewer = await relay.viewer()
        await viewer.send(Connect(1, "a" * 16))
        await viewer.recv()
        await viewer.send(Data(1, os.urandom(1000 - 5)))  # exactly the limit: fine (no such session)
        await viewer.send_raw(os.urandom(1001))
        assert (await viewer.closed())[0] == CloseCode.MESSAGE_TOO_BIG
        text = await relay.metrics()
        assert metric(text, "dropped_messages_total", reason="too_large") == 1
        assert metric(text, "closed_connections_total", reason="message_too_big") == 1


async def test_message_rate_per_connection() -> None:
    async with running_relay(limits={"messages_per_s": 0.5, "message_burst": 5}) as relay:
        viewer = await relay.viewer()
        other = await relay.viewer(address="10.0.1.1")  # same address, own bucket
        for _ in range(5):
            await viewer.send(Data(1, b"x"))
        await viewer.send(Data(1, b"x"))
        assert await viewer.closed() == (CloseCode.RATE_LIMITED, "rate limited")
        await other.send(Connect(1, "a" * 16))
        assert await other.recv() == Close(1, CloseReason.DEVICE_UNAVAILABLE)
        assert metric(await relay.metrics(), "dropped_messages_total", reason="rate_limited") == 1


async def test_byte_rate_per_connection() -> None:
    limits = {"max_message_bytes": 1000, "bytes_per_s": 1024, "byte_burst": 2000}
    async with running_relay(limits=limits) as relay:
        viewer = await relay.viewer()
        await viewer.send(Data(1, os.urandom(900)))
        await viewer.send(Data(1, os.urandom(900)))
        await viewer.send(Data(1, os.urandom(900)))
        assert (await viewer.closed())[0] == CloseCode.RATE_LIMITED


async def test_device_connections_get_rates_scaled_by_their_viewers() -> None:
    limits = {"messages_per_s": 0.5, "message_burst": 3, "max_viewers_per_device": 4}
    async with running_relay(limits=limits) as relay:
        device = await relay.device()  # REGISTER is its first message
        for _ in range(11):
            await device.send(Data(1, b"x"))
        await device.send(Data(1, b"x"))
        assert (await device.closed())[0] == CloseCode.RATE_LIMITED


async def test_message_rate_per_address_spans_connections() -> None:
    async with running_relay(limits={"address_messages_per_s": 0.5, "address_message_burst": 6}) as relay:
        first = await relay.viewer(address="10.9.9.9")
        second = await relay.viewer(address="10.9.9.9")
        bystander = await relay.viewer(address="10.9.9.10")
        for _ in range(3):
            await first.send(Data(1, b"x"))
            await second.send(Data(1, b"x"))
        await second.send(Data(1, b"x"))
        assert (await second.closed())[0] == CloseCode.RATE_LIMITED
        await bystander.send(Connect(1, "a" * 16))
        assert isinstance(await bystander.recv(), Close)


async def test_connections_per_address() -> None:
    async with running_relay(limits={"connections_per_address": 2}) as relay:
        await relay.viewer(address="10.9.9.9")
        await relay.device(address="10.9.9.9")
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await relay.viewer(address="10.9.9.9")
        assert info.value.status == 429
        await relay.viewer(address="10.9.9.10")
        assert metric(await relay.metrics(), "refused_connections_total", reason="address_connections") == 1


async def test_ipv6_clients_are_counted_per_64() -> None:
    async with running_relay(limits={"connections_per_address": 1}) as relay:
        await relay.viewer(address="2001:db8:1:2::1")
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await relay.viewer(address="2001:db8:1:2:ffff::9")
        await relay.viewer(address="2001:db8:1:3::1")


async def test_new_connections_per_address_are_rate_limited() -> None:
    limits = {"address_connects_per_s": 0.1, "address_connect_burst": 3}
    async with running_relay(limits=limits) as relay:
        for _ in range(3):
            viewer = await relay.viewer(address="10.9.9.9")
            await viewer.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await relay.viewer(address="10.9.9.9")
        assert info.value.status == 429
        assert info.value.headers is not None
        assert info.value.headers["Retry-After"] == "10"


async def test_server_wide_connection_limit() -> None:
    async with running_relay(server={"max_connections": 2}) as relay:
        await relay.viewer(address="10.9.9.1")
        await relay.viewer(address="10.9.9.2")
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await relay.viewer(address="10.9.9.3")
        assert info.value.status == 503


async def test_idle_viewer_connection_is_closed() -> None:
    async with running_relay(timeouts={"idle_s": 0.2}) as relay:
        device = await relay.device()
        idle = await relay.viewer(address="10.0.1.1")
        busy = await relay.viewer(address="10.0.1.2")
        await busy.send(Connect(1, device.device_id))
        opened = await device.recv()
        assert isinstance(opened, Open)
        assert await idle.closed(within=2) == (CloseCode.IDLE_TIMEOUT, "idle timeout")
        await asyncio.sleep(0.3)
        await busy.send(Data(1, b"still open"))
        assert await device.recv() == Data(opened.conn_id, b"still open")
        # Once its last session ends, the idle clock starts again.
        await device.send(Close(opened.conn_id))
        assert await busy.recv() == Close(1, CloseReason.CLOSED)
        assert (await busy.closed(within=2))[0] == CloseCode.IDLE_TIMEOUT
        assert not device.ws.closed  # registered devices are kept alive by the heartbeat alone


async def test_heartbeat_closes_connections_that_do_not_answer_pings() -> None:
    async with running_relay(timeouts={"heartbeat_s": 0.2}) as relay:
        silent = await relay.viewer(address="10.0.1.1", autoping=False)
        await silent.send(Connect(1, "a" * 16))  # a session-less viewer is fine for the idle time
        lively = await relay.viewer(address="10.0.1.2")
        # aiohttp's client answers pings inside receive(), so a lively client keeps reading.
        reader = asyncio.ensure_future(lively.ws.receive())
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            msg = await silent.ws.receive(timeout=3)
            if msg.type is aiohttp.WSMsgType.PING:
                continue  # never answered
            if msg.type is aiohttp.WSMsgType.BINARY:
                continue  # the CLOSE for the unknown device
            break
        assert loop.time() - started < 2
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        await asyncio.sleep(0.5)
        await wait_for(lambda: relay.server.metrics.connections["viewer"] == 1)
        assert not reader.done()
        reader.cancel()


async def test_address_state_is_forgotten() -> None:
    async with running_relay(
        limits={"address_connects_per_s": 1000.0, "address_messages_per_s": 1e5}
    ) as relay:
        viewer = await relay.viewer(address="10.9.9.9")
        await viewer.send(Data(1, b"x"))
        await viewer.close()
        await wait_for(lambda: relay.server.addresses.connections == 0)
        await asyncio.sleep(0.05)
        relay.server.addresses.sweep()
        assert len(relay.server.addresses) == 0


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, 4, clock=lambda: now[0])
    assert all(bucket.take() for _ in range(4))
    assert not bucket.take()
    now[0] = 1.0
    assert bucket.take(2)
    assert not bucket.take()
    assert not bucket.take(100)  # a refusal takes nothing
    now[0] = 10.0
    assert bucket.full


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("198.51.100.1", ["10.0.0.1"], "198.51.100.1"),  # an untrusted peer's header is ignored
        ("127.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        ("127.0.0.1", ["6.6.6.6, 203.0.113.5"], "203.0.113.5"),  # the client's own claim comes first
        ("127.0.0.1", ["203.0.113.5, 127.0.0.1"], "203.0.113.5"),  # chained trusted proxies
        ("127.0.0.1", ["garbage, 203.0.113.5"], "203.0.113.5"),
        ("127.0.0.1", ["203.0.113.5, garbage"], "127.0.0.1"),
        ("127.0.0.1", [], "127.0.0.1"),
        ("::ffff:198.51.100.1", [], "198.51.100.1"),
    ],
)
def test_client_address_believes_only_trusted_proxies(peer: str, forwarded: list[str], expected: str) -> None:
    import ipaddress

    trusted = (ipaddress.ip_network("127.0.0.0/8"),)
    assert str(client_address(peer, forwarded, trusted)) == expected


def test_address_keys() -> None:
    import ipaddress

    assert address_key(ipaddress.ip_address("2001:db8::1")) == "2001:db8::/64"
    assert address_key(ipaddress.ip_address("192.0.2.1")) == "192.0.2.1"
    assert address_key(None) == "unknown"


async def test_a_client_that_stops_reading_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that stops reading leaves unsent bytes that asyncio's close() would wait on forever."""
    monkeypatch.setattr(server_module, "SWEEP_INTERVAL_S", 0.05)
    monkeypatch.setattr(server_module, "CLOSE_GRACE_S", 0.1)
    fast = {"messages_per_s": 1e4, "message_burst": 10**4, "bytes_per_s": 1e9, "byte_burst": 10**9}
    limits = {
        **fast,
        "address_messages_per_s": 1e5,
        "address_message_burst": 10**5,
        "send_queue_bytes": 200_000,
    }
    async with running_relay(limits=limits, timeouts={"heartbeat_s": 0.3}) as relay:
        device = await relay.device()
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)  # noqa: FBT003 - socket API
        try:
            await loop.sock_connect(sock, ("127.0.0.1", relay.server.port or 0))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                "GET /viewer HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Forwarded-For: 10.5.5.5\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            assert (await loop.sock_recv(sock, 1024)).startswith(b"HTTP/1.1 101")
            payload, mask = Connect(1, device.device_id).encode(), os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            await loop.sock_sendall(sock, bytes((0x82, 0x80 | len(payload))) + mask + masked)
            opened = await device.recv()
            assert isinstance(opened, Open)
            # The device keeps reading (and so answering pings) while it floods.
            inbox: asyncio.Queue[object] = asyncio.Queue()
            reader = asyncio.ensure_future(_drain(device, inbox))
            # From now on the viewer reads nothing: the relay's buffers fill, its session ends.
            while not relay.server.metrics.drops["queue_full"]:
                await device.send(Data(opened.conn_id, os.urandom(60_000)))
                await asyncio.sleep(0)
            assert await inbox.get() == Close(opened.conn_id, CloseReason.OVERLOADED)
            await wait_for(lambda: relay.server.metrics.connections["viewer"] == 0, within=5)
            assert relay.server.metrics.closes["aborted"] == 1
            assert relay.server.addresses.connections == 1
            assert not reader.done()
            reader.cancel()
        finally:
            sock.close()


async def _drain(client: Client, inbox: asyncio.Queue[object]) -> None:
    while True:
        await inbox.put(await client.recv(within=30))
