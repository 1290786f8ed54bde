"""The relay end to end: registration, routing, multiplexing, replacement, shutdown."""

from __future__ import annotations

import asyncio
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.messages import MAX_FRAME_LEN
from petcamd.protocol.relay import (
    Close,
    CloseCode,
    CloseReason,
    Connect,
    Data,
    Open,
    Register,
    prove_registration,
)
from petcamd.secure.noise import public_bytes
from tests.test_relay_harness import ORIGIN, metric, running_relay, wait_for


async def test_viewer_and_device_exchange_frames_byte_for_byte() -> None:
    async with running_relay() as relay:
        device = await relay.device()
        viewer = await relay.viewer()
        await viewer.send(Connect(7, device.device_id))
        opened = await device.recv()
        assert isinstance(opened, Open)
        frames = [b"\x02" + os.urandom(96), os.urandom(1), os.urandom(MAX_FRAME_LEN)]
        for frame in frames:
            await viewer.send(Data(7, frame))
        for frame in frames:
            assert await device.recv() == Data(opened.conn_id, frame)
        for frame in reversed(frames):
            await device.send(Data(opened.conn_id, frame))
        for frame in reversed(frames):
            assert await viewer.recv() == Data(7, frame)

        await viewer.send(Close(7))
        assert await device.recv() == Close(opened.conn_id, CloseReason.CLOSED)
        text = await relay.metrics()
        assert metric(text, "messages_forwarded_total", direction="viewer_to_device") == 3
        assert metric(text, "messages_forwarded_total", direction="device_to_viewer") == 3
        assert metric(text, "bytes_forwarded_total", direction="viewer_to_device") == sum(map(len, frames))
        assert metric(text, "connections", role="device") == 1
        assert metric(text, "connections", role="viewer") == 1
        assert metric(text, "devices_registered") == 1
        assert metric(text, "sessions") == 0


async def test_one_device_multiplexes_many_viewers_and_one_viewer_many_devices() -> None:
    async with running_relay() as relay:
        devices = [await relay.device(address=f"10.0.0.{i}") for i in (1, 2)]
        viewers = [await relay.viewer(address=f"10.0.1.{i}") for i in range(5)]
        sessions: dict[tuple[int, int], int] = {}  # (viewer, device) -> device-side conn id
        for v, viewer in enumerate(viewers):
            for d, device in enumerate(devices):
                await viewer.send(Connect(10 + d, device.device_id))
                opened = await device.recv()
                assert isinstance(opened, Open)
                sessions[v, d] = opened.conn_id
        assert len({(d, conn) for (_, d), conn in sessions.items()}) == 10

        for v, d in sessions:
            await viewers[v].send(Data(10 + d, f"v{v}->d{d}".encode()))
        for d, device in enumerate(devices):
            received = {}
            for _ in viewers:
                data = await device.recv()
                assert isinstance(data, Data)
                received[data.conn_id] = data.frame
            assert received == {sessions[v, d]: f"v{v}->d{d}".encode() for v in range(5)}
            for v in range(5):
                await device.send(Data(sessions[v, d], f"d{d}->v{v}".encode()))
        for v, viewer in enumerate(viewers):
            got = {}
            for _ in devices:
                data = await viewer.recv()
                assert isinstance(data, Data)
                got[data.conn_id] = data.frame
            assert got == {10: f"d0->v{v}".encode(), 11: f"d1->v{v}".encode()}

        # The device ends one session: only that viewer hears of it.
        await devices[0].send(Close(sessions[3, 0]))
        assert await viewers[3].recv() == Close(10, CloseReason.CLOSED)
        await viewers[2].send(Data(10, b"still here"))
        assert await devices[0].recv() == Data(sessions[2, 0], b"still here")


async def test_unknown_device_and_limits_on_sessions() -> None:
    async with running_relay(limits={"max_viewers_per_device": 2, "max_sessions_per_viewer": 2}) as relay:
        viewer = await relay.viewer()
        await viewer.send(Connect(1, "a" * 16))
        assert await viewer.recv() == Close(1, CloseReason.DEVICE_UNAVAILABLE)

        device = await relay.device()
        for conn in (1, 2):
            await viewer.send(Connect(conn, device.device_id))
            assert isinstance(await device.recv(), Open)
        await viewer.send(Connect(3, device.device_id))
        assert await viewer.recv() == Close(3, CloseReason.TOO_MANY_SESSIONS)

        other = await relay.viewer(address="10.0.1.2")
        await other.send(Connect(1, device.device_id))
        assert await other.recv() == Close(1, CloseReason.TOO_MANY_VIEWERS)

        # Frames for sessions that do not exist are dropped, not fatal.
        await other.send(Data(1, b"nobody"))
        await device.send(Data(999, b"nobody"))
        await viewer.send(Data(1, b"hello"))
        assert isinstance(await device.recv(), Data)
        text = await relay.metrics()
        assert metric(text, "dropped_messages_total", reason="unknown_connection") == 2
        assert metric(text, "dropped_messages_total", reason="device_unavailable") == 1
        assert metric(text, "dropped_messages_total", reason="too_many_viewers") == 1
        assert metric(text, "dropped_messages_total", reason="too_many_sessions") == 1


async def test_device_going_away_ends_its_sessions() -> None:
    async with running_relay() as relay:
        device = await relay.device()
        viewer = await relay.viewer()
        await viewer.send(Connect(5, device.device_id))
        assert isinstance(await device.recv(), Open)
        await device.close()
        assert await viewer.recv() == Close(5, CloseReason.DEVICE_UNAVAILABLE)
        await viewer.send(Connect(6, device.device_id))
        assert await viewer.recv() == Close(6, CloseReason.DEVICE_UNAVAILABLE)
        await wait_for(lambda: relay.server.router.devices == 0)


async def test_viewer_going_away_closes_its_sessions_on_the_device() -> None:
    async with running_relay() as relay:
        device = await relay.device()
        viewer = await relay.viewer()
        await viewer.send(Connect(5, device.device_id))
        opened = await device.recv()
        assert isinstance(opened, Open)
        await viewer.close()
        assert await device.recv() == Close(opened.conn_id, CloseReason.CLOSED)


async def test_forged_registration_is_refused() -> None:
    victim = X25519PrivateKey.generate()
    attacker = X25519PrivateKey.generate()
    async with running_relay() as relay:
        genuine = await relay.device(victim)
        forger = await relay.device(attacker, address="10.6.6.6", register=False)
        challenge = await forger.read_challenge()
        # The attacker claims the victim's key (so the victim's id) with a proof made with its own key.
        proof = prove_registration(attacker, challenge, ORIGIN).proof
        await forger.send(Register(public_bytes(victim), proof))
        assert await forger.closed() == (CloseCode.REGISTRATION_REFUSED, "registration refused")

        # The victim's registration and routing are untouched.
        viewer = await relay.viewer()
        await viewer.send(Connect(1, genuine.device_id))
        assert isinstance(await genuine.recv(), Open)
        text = await relay.metrics()
        assert metric(text, "registrations_total", result="refused") == 1
        assert metric(text, "closed_connections_total", reason="registration_refused") == 1


async def test_replayed_registration_is_refused() -> None:
    key = X25519PrivateKey.generate()
    async with running_relay() as relay:
        first = await relay.device(key, register=False)
        challenge = await first.read_challenge()
        recorded = prove_registration(key, challenge, ORIGIN)
        await first.send(recorded)
        await first.recv()  # REGISTERED
        await first.close()

        replayer = await relay.device(X25519PrivateKey.generate(), address="10.6.6.6", register=False)
        await replayer.read_challenge()
        await replayer.send(recorded)
        assert (await replayer.closed())[0] == CloseCode.REGISTRATION_REFUSED
        assert relay.server.router.devices == 0


async def test_proof_for_another_relay_origin_is_refused() -> None:
    key = X25519PrivateKey.generate()
    async with running_relay() as relay:
        device = await relay.device(key, register=False)
        challenge = await device.read_challenge()
        # A relay at another origin that passed this relay's challenge on to the device, after
        # rewriting the origin so the device would answer, gets a proof that does not verify here.
        forwarded = type(challenge)(challenge.nonce, challenge.relay_key, "https://evil.test")
        await device.send(prove_registration(key, forwarded, "https://evil.test"))
        assert (await device.closed())[0] == CloseCode.REGISTRATION_REFUSED


async def test_anything_but_register_first_is_a_bad_envelope() -> None:
    async with running_relay() as relay:
        device = await relay.device(register=False)
        await device.read_challenge()
        await device.send(Data(1, b"early"))
        assert await device.closed() == (CloseCode.BAD_ENVELOPE, "bad envelope")


async def test_registration_times_out() -> None:
    async with running_relay(timeouts={"register_s": 0.2}) as relay:
        device = await relay.device(register=False)
        await device.read_challenge()
        assert await device.closed() == (CloseCode.REGISTRATION_TIMEOUT, "registration timeout")


async def test_second_registration_replaces_the_first() -> None:
    key = X25519PrivateKey.generate()
    async with running_relay() as relay:
        old = await relay.device(key)
        viewer = await relay.viewer()
        await viewer.send(Connect(1, old.device_id))
        assert isinstance(await old.recv(), Open)

        new = await relay.device(key, address="10.0.0.9")
        assert await old.closed() == (CloseCode.REPLACED, "replaced by a newer registration")
        assert await viewer.recv() == Close(1, CloseReason.DEVICE_UNAVAILABLE)

        await viewer.send(Connect(2, new.device_id))
        opened = await new.recv()
        assert isinstance(opened, Open)
        await viewer.send(Data(2, b"to the new one"))
        assert await new.recv() == Data(opened.conn_id, b"to the new one")
        await wait_for(lambda: relay.server.metrics.connections["device"] == 1)
        assert relay.server.router.devices == 1
        assert metric(await relay.metrics(), "closed_connections_total", reason="replaced") == 1


async def test_stopping_the_relay_tells_clients_it_is_going_away() -> None:
    async with running_relay() as relay:
        device = await relay.device()
        viewer = await relay.viewer()
        await viewer.send(Connect(1, device.device_id))
        await device.recv()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await relay.server.stop()
        assert loop.time() - started < 2.0
        for client in (device, viewer):
            code, reason = await client.closed()
            assert (code, reason) == (CloseCode.GOING_AWAY, "relay shutting down")


async def test_plain_http_endpoints() -> None:
    async with running_relay() as relay:
        async with relay.session.get(relay.url("/healthz")) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
            assert response.headers["Cache-Control"] == "no-store"
        async with relay.session.get(relay.url("/device")) as response:
            assert response.status == 426
        async with relay.session.get(relay.url("/metrics")) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        # Through a trusted proxy, the real client's address decides; it is not allowed.
        async with relay.session.get(relay.url("/metrics"), headers={"X-Forwarded-For": "203.0.113.9"}) as r:
            assert r.status == 403
        async with relay.session.get(relay.url("/")) as response:
            assert response.status == 404  # no static_dir configured


async def test_text_messages_are_refused() -> None:
    async with running_relay() as relay:
        viewer = await relay.viewer()
        await viewer.ws.send_str("hello")
        assert await viewer.closed() == (CloseCode.BAD_ENVELOPE, "bad envelope")


async def test_clients_that_stop_reading_lose_only_their_own_sessions() -> None:
    limits = {"send_queue_bytes": MAX_FRAME_LEN * 2, "bytes_per_s": 1e8, "byte_burst": 100_000_000}
    async with running_relay(limits=limits) as relay:
        device = await relay.device()
        slow = await relay.viewer(address="10.0.1.1")
        fast = await relay.viewer(address="10.0.1.2")
        for viewer in (slow, fast):
            await viewer.send(Connect(1, device.device_id))
        slow_id = (await device.recv()).conn_id  # type: ignore[union-attr]
        fast_id = (await device.recv()).conn_id  # type: ignore[union-attr]
        # The slow viewer never reads: its TCP window and then its send queue fill up.
        big = os.urandom(MAX_FRAME_LEN)
        closed_for_slow = False
        for _ in range(200):
            await device.send(Data(slow_id, big))
            await device.send(Data(fast_id, b"x"))
            assert await fast.recv() == Data(1, b"x")
            if relay.server.metrics.drops["queue_full"]:
                closed_for_slow = True
                break
        assert closed_for_slow
        assert await device.recv() == Close(slow_id, CloseReason.OVERLOADED)
        await device.send(Data(fast_id, b"y"))
        assert await fast.recv() == Data(1, b"y")
        assert not device.ws.closed
