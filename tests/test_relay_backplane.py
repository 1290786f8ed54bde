"""Several relay instances routing as one over a real Redis (petcamd.relay.backplane).

Instances run in this process (two RelayServers sharing one redis-server) or, where an instance
must die the way a crashed process does, as a real `petcam-relay` process killed with SIGKILL.
Devices and viewers are the relay tests' own envelope clients (tests/test_relay_harness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.messages import MAX_FRAME_LEN
from petcamd.protocol.relay import Close, CloseCode, CloseReason, Connect, Data, Open
from petcamd.relay.backplane import check_redis_url, redacted_url
from tests.redis_server import RedisServer, system_redis_running
from tests.test_relay_harness import (
    ORIGIN,
    ClosedError,
    DeviceClient,
    Relay,
    metric,
    relay_config,
    running_relay,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "messages_per_s": 100_000,
    "message_burst": 100_000,
    "bytes_per_s": 1e9,
    "byte_burst": 1_000_000_000,
    "address_messages_per_s": 1_000_000,
    "address_message_burst": 1_000_000,
}
"""Rate limits out of the way where a test sends many frames."""


@contextlib.asynccontextmanager
async def two_relays(url: str, **sections: dict[str, Any]) -> AsyncIterator[tuple[Relay, Relay]]:
    """Instances A and B sharing the Redis at ``url``."""
    config = relay_config(backplane={"redis_url": url}, **sections)
    async with running_relay(config) as a, running_relay(config) as b:
        yield a, b


async def opened(device: DeviceClient) -> int:
    envelope = await device.recv()
    assert isinstance(envelope, Open), envelope
    return envelope.conn_id


async def test_a_viewer_on_one_instance_reaches_a_device_on_another(redis: RedisServer) -> None:
    async with two_relays(redis.url, limits=FAST) as (a, b):
        device = await a.device()
        viewer = await b.viewer()
        await viewer.send(Connect(7, device.device_id))
        conn = await opened(device)
        # Frames both ways, byte for byte and in order, from one byte to the largest.
        frames = [b"\x02" + os.urandom(96), os.urandom(1), os.urandom(MAX_FRAME_LEN)]
        frames += [b"\x04" + i.to_bytes(4, "big") + os.urandom(i % 700) for i in range(300)]
        for frame in frames:
            await viewer.send(Data(7, frame))
        for frame in frames:
            assert await device.recv() == Data(conn, frame)
        for frame in reversed(frames):
            await device.send(Data(conn, frame))
        for frame in reversed(frames):
            assert await viewer.recv() == Data(7, frame)

        # Either end closes a session; the other end hears CLOSED.
        await viewer.send(Close(7))
        assert await device.recv() == Close(conn, CloseReason.CLOSED)
        await viewer.send(Connect(8, device.device_id))
        second = await opened(device)
        await device.send(Close(second))
        assert await viewer.recv() == Close(8, CloseReason.CLOSED)

        # Each instance counts what it forwarded to its own clients.
        text_a, text_b = await a.metrics(), await b.metrics()
        assert metric(text_a, "messages_forwarded_total", direction="viewer_to_device") == len(frames)
        assert metric(text_b, "messages_forwarded_total", direction="device_to_viewer") == len(frames)
        assert metric(text_a, "devices_registered") == 1
        assert metric(text_b, "devices_registered") == 0
        assert metric(text_a, "backplane_up") == 1
        await wait_for(lambda: a.server.metrics.sessions == 0)

        # A device nobody registered is unavailable from every instance.
        await viewer.send(Connect(9, "a" * 16))
        assert await viewer.recv() == Close(9, CloseReason.DEVICE_UNAVAILABLE)


async def test_redis_never_holds_frames(redis: RedisServer) -> None:
    """Frames cross Redis only as PUBLISH arguments; its keys hold routing and nothing else; frames
    between a device and a viewer on the same instance never reach Redis at all."""
    monitor = await _Monitor.start(redis.port)
    marker = b"FRAME-" + secrets.token_hex(12).encode()
    local_marker = b"LOCAL-" + secrets.token_hex(12).encode()
    try:
        async with two_relays(redis.url) as (a, b):
            device = await a.device()
            local = await a.device(address="10.0.0.2")
            viewer = await b.viewer()
            local_viewer = await a.viewer(address="10.0.1.2")
            await viewer.send(Connect(1, device.device_id))
            conn = await opened(device)
            await local_viewer.send(Connect(1, local.device_id))
            local_conn = await opened(local)
            for i in range(5):
                await viewer.send(Data(1, b"\x04" + marker + os.urandom(40) + bytes([i])))
                await device.send(Data(conn, b"\x04" + marker + os.urandom(40) + bytes([i])))
                await local_viewer.send(Data(1, b"\x04" + local_marker + bytes([i])))
                await local.send(Data(local_conn, b"\x04" + local_marker + bytes([i])))
            for _ in range(5):
                for client in (device, viewer, local, local_viewer):
                    assert isinstance(await client.recv(), Data)
            keys = await _keys(redis.port)
            assert sorted(keys) == sorted(
                f"petcam-relay:v1:device:{d}".encode() for d in (device.device_id, local.device_id)
            )
            for key, (kind, value) in keys.items():
                assert kind == b"string", key
                assert marker not in value
                assert re.fullmatch(rb"[a-z2-7]{16} [a-z2-7]{16} \d+", value), value
    finally:
        lines = await monitor.stop()
    carrying = [line for line in lines if marker in line]
    assert sum(line.count(marker) for line in carrying) == 10, "each frame between instances crosses once"
    for line in carrying:
        assert re.search(rb'\] "(?i:publish)" ', line), line
    assert not [line for line in lines if local_marker in line]
    # The two devices' keys are gone with their connections.
    assert await _keys(redis.port) == {}


async def test_a_registration_on_another_instance_replaces_the_first_everywhere(redis: RedisServer) -> None:
    key = X25519PrivateKey.generate()
    async with two_relays(redis.url) as (a, b):
        old = await a.device(key)
        viewer_a = await a.viewer(address="10.0.1.1")
        viewer_b = await b.viewer(address="10.0.1.2")
        for viewer in (viewer_a, viewer_b):
            await viewer.send(Connect(1, old.device_id))
            await opened(old)

        new = await b.device(key, address="10.0.0.9")
        assert await old.closed() == (CloseCode.REPLACED, "replaced by a newer registration")
        assert await viewer_a.recv() == Close(1, CloseReason.DEVICE_UNAVAILABLE)
        assert await viewer_b.recv() == Close(1, CloseReason.DEVICE_UNAVAILABLE)
        await wait_for(lambda: a.server.router.devices == 0 and b.server.router.devices == 1)
        assert metric(await a.metrics(), "closed_connections_total", reason="replaced") == 1

        # Both instances now route the id to the new connection.
        for viewer in (viewer_a, viewer_b):
            await viewer.send(Connect(2, new.device_id))
            conn = await opened(new)
            await viewer.send(Data(2, b"to the new one"))
            assert await new.recv() == Data(conn, b"to the new one")

        # And back: registering on A again replaces the one on B.
        newest = await a.device(key, address="10.0.0.10")
        assert (await new.closed())[0] == CloseCode.REPLACED
        assert await viewer_a.recv() == Close(2, CloseReason.DEVICE_UNAVAILABLE)
        assert await viewer_b.recv() == Close(2, CloseReason.DEVICE_UNAVAILABLE)
        await viewer_b.send(Connect(3, newest.device_id))
        await opened(newest)


async def test_session_limits_count_viewers_on_every_instance(redis: RedisServer) -> None:
    async with two_relays(redis.url, limits={"max_viewers_per_device": 2}) as (a, b):
        device = await a.device()
        viewers = [await relay.viewer(address=f"10.0.1.{i}") for i, relay in enumerate((a, b, b, a))]
        for viewer in viewers[:2]:
            await viewer.send(Connect(1, device.device_id))
            await opened(device)
        for viewer in viewers[2:]:
            await viewer.send(Connect(1, device.device_id))
            assert await viewer.recv() == Close(1, CloseReason.TOO_MANY_VIEWERS)
        assert metric(await b.metrics(), "dropped_messages_total", reason="too_many_viewers") == 1

        # A session ends on B; a viewer on B gets the free place.
        await viewers[1].send(Close(1))
        assert isinstance(await device.recv(), Close)
        await viewers[2].send(Connect(2, device.device_id))
        await opened(device)


async def test_a_slow_viewer_on_another_instance_loses_only_its_own_session(redis: RedisServer) -> None:
    limits = {**FAST, "send_queue_bytes": MAX_FRAME_LEN * 2}
    async with two_relays(redis.url, limits=limits) as (a, b):
        device = await a.device()
        slow = await b.viewer(address="10.0.1.1")
        fast = await b.viewer(address="10.0.1.2")
        for viewer in (slow, fast):
            await viewer.send(Connect(1, device.device_id))
        slow_id, fast_id = await opened(device), await opened(device)
        # The slow viewer never reads: its TCP window and then its send queue on B fill up (or,
        # were Redis the slower part, its frames waiting on A to be published).
        big = os.urandom(MAX_FRAME_LEN)

        def overloaded() -> float:
            return a.server.metrics.drops["queue_full"] + b.server.metrics.drops["queue_full"]

        for _ in range(300):
            await device.send(Data(slow_id, big))
            await device.send(Data(fast_id, b"x"))
            assert await fast.recv() == Data(1, b"x")
            if overloaded():
                break
        assert overloaded() == 1
        while (envelope := await device.recv()) != Close(slow_id, CloseReason.OVERLOADED):
            raise AssertionError(f"unexpected {envelope!r}")
        await device.send(Data(fast_id, b"y"))
        assert await fast.recv() == Data(1, b"y")
        assert not device.ws.closed


@pytest.mark.timeout(60)
async def test_a_killed_instance_loses_only_its_own_connections(redis: RedisServer, tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nport = 0\npublic_origin = "{ORIGIN}"\ntrusted_proxies = ["127.0.0.1"]\n'
        f'[backplane]\nredis_url = "{redis.url}"\n'
    )
    async with (
        _relay_process(config) as (proc, port),
        running_relay(relay_config(backplane={"redis_url": redis.url})) as b,
        aiohttp.ClientSession() as session,
    ):
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}/device")
        device = DeviceClient(ws, key)
        await device.register()
        viewer = await b.viewer()
        await viewer.send(Connect(1, device.device_id))
        conn = await opened(device)
        await device.send(Data(conn, b"from A"))
        assert await viewer.recv() == Data(1, b"from A")
        # A session that lives on B alone.
        other = await b.device(address="10.0.0.2")
        other_viewer = await b.viewer(address="10.0.1.2")
        await other_viewer.send(Connect(1, other.device_id))
        other_conn = await opened(other)

        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert await viewer.recv() == Close(1, CloseReason.DEVICE_UNAVAILABLE)
        with pytest.raises(ClosedError):
            await device.recv()

        # The device reconnects, to B this time, and the viewer reaches it there.
        moved = await b.device(key, address="10.0.0.1")
        await viewer.send(Connect(2, moved.device_id))
        moved_conn = await opened(moved)
        await viewer.send(Data(2, b"again"))
        assert await moved.recv() == Data(moved_conn, b"again")
        # B's own session never noticed.
        await other_viewer.send(Data(1, b"unaffected"))
        assert await other.recv() == Data(other_conn, b"unaffected")
        assert b.server.router.backplane_up


async def test_a_stopped_instance_ends_its_sessions_and_removes_its_registrations(redis: RedisServer) -> None:
    async with two_relays(redis.url) as (a, b):
        device_a = await a.device()
        device_b = await b.device(address="10.0.0.2")
        viewer_a = await a.viewer(address="10.0.1.1")
        viewer_b = await b.viewer(address="10.0.1.2")
        await viewer_b.send(Connect(1, device_a.device_id))
        await opened(device_a)
        await viewer_a.send(Connect(1, device_b.device_id))
        conn_b = await opened(device_b)

        await a.server.stop()
        assert await viewer_b.recv() == Close(1, CloseReason.DEVICE_UNAVAILABLE)
        assert await device_b.recv() == Close(conn_b, CloseReason.CLOSED)
        assert list(await _keys(redis.port)) == [f"petcam-relay:v1:device:{device_b.device_id}".encode()]
        await viewer_b.send(Connect(2, device_a.device_id))
        assert await viewer_b.recv() == Close(2, CloseReason.DEVICE_UNAVAILABLE)


@pytest.mark.timeout(60)
async def test_without_redis_an_instance_serves_its_own_devices(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="petcamd.relay.backplane")
    async with two_relays(redis.url) as (a, b):
        device = await a.device()
        local_viewer = await a.viewer(address="10.0.1.1")
        remote_viewer = await b.viewer(address="10.0.1.2")
        await local_viewer.send(Connect(1, device.device_id))
        local_conn = await opened(device)
        await remote_viewer.send(Connect(1, device.device_id))
        remote_conn = await opened(device)

        redis.kill()
        # The session across instances ends at both ends; the one within A goes on.
        assert await remote_viewer.recv() == Close(1, CloseReason.DEVICE_UNAVAILABLE)
        assert await device.recv() == Close(remote_conn, CloseReason.CLOSED)
        await local_viewer.send(Data(1, b"still here"))
        assert await device.recv() == Data(local_conn, b"still here")
        await device.send(Data(local_conn, b"me too"))
        assert await local_viewer.recv() == Data(1, b"me too")
        # Across instances: refused at once, not left hanging.
        await remote_viewer.send(Connect(2, device.device_id))
        assert await remote_viewer.recv(within=2) == Close(2, CloseReason.DEVICE_UNAVAILABLE)
        # A device may still register; viewers on its instance reach it.
        late = await a.device(address="10.0.0.3")
        await local_viewer.send(Connect(2, late.device_id))
        await opened(late)
        async with a.session.get(a.url("/healthz")) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok", "backplane": "down"}
        assert metric(await a.metrics(), "backplane_up") == 0
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(f"Redis backplane at {redis.url} is unavailable" in m for m in errors), errors

        # Redis comes back, empty: both instances reconnect and A announces its devices again.
        redis.start()
        await wait_for(lambda: bool(a.server.router.backplane_up and b.server.router.backplane_up), 10)
        for target, conn_id in ((device, 3), (late, 4)):
            await _connect_when_announced(remote_viewer, conn_id, target.device_id)
            await opened(target)
        assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_registrations_made_during_an_outage_resolve_to_the_newest(redis: RedisServer) -> None:
    """Both instances took the same device while Redis was down: the newer one keeps it."""
    key = X25519PrivateKey.generate()
    async with two_relays(redis.url) as (a, b):
        redis.kill()
        await wait_for(
            lambda: a.server.router.backplane_up is False and b.server.router.backplane_up is False
        )
        older = await a.device(key)
        await asyncio.sleep(0.01)
        newer = await b.device(key, address="10.0.0.9")
        redis.start()
        assert (await older.closed(within=10))[0] == CloseCode.REPLACED
        viewer = await a.viewer()
        await _connect_when_announced(viewer, 1, newer.device_id)
        await opened(newer)
        assert not newer.ws.closed


def test_installing_redis_server_left_no_system_redis_running(redis: RedisServer) -> None:
    assert redis.ping()
    assert not system_redis_running(), "the redis-server package's own service is running"


def test_redis_urls_are_checked_and_never_logged_with_secrets() -> None:
    assert check_redis_url("redis://127.0.0.1:6379/0") == []
    assert check_redis_url("rediss://:secret@redis.internal/3") == []
    assert check_redis_url("unix:///run/redis/redis-server.sock") == []
    assert "must start with redis://" in check_redis_url("http://127.0.0.1:6379")[0]
    assert "needs a host" in check_redis_url("redis:///0")[0]
    assert "database number" in check_redis_url("redis://127.0.0.1/zero")[0]
    assert "not a valid URL" in check_redis_url("redis://127.0.0.1:99999/0")[0]
    problems = check_redis_url("redis://user:hunter2@[::1")
    assert problems
    assert all("hunter2" not in p for p in problems)
    assert redacted_url("redis://user:hunter2@redis.internal:6380/1?password=x") == (
        "redis://***@redis.internal:6380/1"
    )
    assert redacted_url("redis://[::1]:6379/0") == "redis://[::1]:6379/0"


def _check_config(path: Path, *, hide_redis: bool = False) -> subprocess.CompletedProcess[str]:
    code = "import sys\n"
    if hide_redis:
        code += "sys.modules['redis'] = None\n"  # as if python3-redis were not installed
    code += "from petcamd.relay.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_check_config_validates_the_backplane(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    base = '[server]\npublic_origin = "https://r.example"\n[backplane]\n'
    path.write_text(base + 'redis_url = "redis://:hunter2@127.0.0.1:6379/0"\n')
    ok = _check_config(path)
    assert ok.returncode == 0, ok.stderr
    missing = _check_config(path, hide_redis=True)
    assert missing.returncode == 2
    assert "Python package 'redis'" in missing.stderr
    assert "python3-redis" in missing.stderr
    assert "Traceback" not in missing.stderr
    path.write_text(base + 'redis_url = "http://:hunter2@127.0.0.1:6379/0"\n')
    bad = _check_config(path)
    assert bad.returncode == 2
    assert "[backplane] redis_url: must start with redis://" in bad.stderr
    assert "hunter2" not in bad.stderr
    # An empty redis_url (the default) is a relay that routes alone and never loads redis.
    path.write_text(base + 'redis_url = ""\n')
    assert _check_config(path, hide_redis=True).returncode == 0


# --- helpers ------------------------------------------------------------------------------------


async def _connect_when_announced(viewer: Any, conn_id: int, device_id: str, within: float = 10.0) -> None:
    """CONNECT until the device's instance has announced it again after an outage."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        await viewer.send(Connect(conn_id, device_id))
        try:
            reply = await viewer.recv(within=0.3)
        except TimeoutError:
            return  # no refusal: the device got OPEN
        assert reply == Close(conn_id, CloseReason.DEVICE_UNAVAILABLE), reply
        if loop.time() > deadline:
            raise AssertionError(f"device {device_id} was not announced again within {within} s")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _relay_process(config: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """A real petcam-relay process, once it listens, and its port; killed afterwards."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "petcamd.relay.cli",
        "--config",
        str(config),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    drain: asyncio.Future[bytes] | None = None
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        match = None
        while match is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 15)).decode()
            seen.append(line)
            assert line, f"relay exited before listening: {''.join(seen)}"
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        assert any("connected to the Redis backplane" in s for s in seen), seen
        drain = asyncio.ensure_future(proc.stderr.read())  # so that its log never fills the pipe
        yield proc, int(match.group(1))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if drain is not None:
            await drain


async def _keys(port: int) -> dict[bytes, tuple[bytes, bytes]]:
    """Every key in Redis with its type and (for strings) value."""
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    try:
        found: dict[bytes, tuple[bytes, bytes]] = {}
        async for key in client.scan_iter(count=1000):
            kind = await client.type(key)
            value = await client.get(key) if kind == b"string" else b""
            assert isinstance(kind, bytes)
            assert isinstance(value, bytes)
            found[key] = (kind, value)
        return found
    finally:
        closer = getattr(client, "aclose", None) or client.close
        await closer()


class _Monitor:
    """A raw MONITOR connection: every command Redis executes, one line each."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lines: list[bytes] = []
        self._task = asyncio.ensure_future(self._read(reader))

    @classmethod
    async def start(cls, port: int) -> _Monitor:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"MONITOR\r\n")
        assert await reader.readline() == b"+OK\r\n"
        return cls(reader, writer)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                self._lines.append(line)

    async def stop(self) -> list[bytes]:
        await asyncio.sleep(0.2)  # the last commands' lines
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        await asyncio.wait_for(self._task, 5)
        return self._lines
