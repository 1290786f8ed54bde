"""Pairing and watching over the device's LAN WebSocket, with the real daemon on loopback.

The daemon is the real composition (synthetic camera, hub, session manager, keystore, controller,
LAN server, D-Bus on a private bus); the viewer is petcamd.viewer.client, a real aiortc peer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dbus_fast.aio import MessageBus
from yarl import URL

from petcamd.camera.health import HealthSettings
from petcamd.camera.source import Source, StreamSettings
from petcamd.camera.synthetic import SyntheticSource
from petcamd.config import parse_config
from petcamd.control.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH
from petcamd.notify import SystemdNotifier
from petcamd.protocol.messages import ErrorCode, Frame, FrameType, Ping
from petcamd.protocol.pairing_url import decode_pairing_url, encode_pairing_url
from petcamd.secure.channel import DeviceReady, ViewerChannel
from petcamd.secure.identity import Identity, load_or_create_identity
from petcamd.secure.pairing import psk_from_secret
from petcamd.signaling.lan_server import ConnectionLimits, LanServer, LanServerSettings, address_key
from petcamd.signaling.negotiator import NegotiatorSettings
from petcamd.signaling.relay_client import RelayClientSettings
from petcamd.supervisor import Daemon, RunOptions, webrtc_settings
from petcamd.viewer.client import (
    DeviceBusyError,
    NotPairedError,
    PairingRefusedError,
    pair,
    watch,
)
from petcamd.viewer.state import PairedDevice, ViewerState
from petcamd.web_static import viewer_web_dir
from tests.fakes.sources import RecordingSource
from tests.test_relay_harness import CaptureProxy, ws_frames
from tests.test_webrtc_harness import wait_for

pytestmark = pytest.mark.usefixtures("loopback_ice")


def small_camera() -> RecordingSource:
    return RecordingSource(SyntheticSource(StreamSettings(width=320, height=240, fps=15, bitrate=300_000)))


@contextlib.asynccontextmanager
async def running_daemon(
    tmp_path: Path,
    bus_address: str,
    *,
    signaling: NegotiatorSettings | None = None,
    limits: ConnectionLimits | None = None,
    max_viewers: int = 4,
    source: Source | None = None,
    network: dict[str, Any] | None = None,
    relay: RelayClientSettings | None = None,
    camera: dict[str, Any] | None = None,
    state_dir: Path | None = None,
    health: HealthSettings | None = None,
) -> AsyncIterator[Daemon]:
    """The daemon in this process on loopback, the camera always on unless `camera` says otherwise."""
    config = parse_config(
        {
            "camera": {"source": "test", "always_on": True, **(camera or {})},
            "network": {"lan_address": "127.0.0.1", "lan_port": 0, **(network or {})},
            "pairing": {"display": "none", "open_when_unpaired": False},
            "viewers": {"max_viewers": max_viewers},
            "state": {"directory": str(state_dir or tmp_path / "device-state")},
            "control": {"bus": "session"},
        }
    )
    options = RunOptions(
        bus_address=bus_address,
        install_signal_handlers=False,
        source=source or small_camera(),
        health=health,
        signaling=signaling,
        lan_limits=limits,
        relay=relay,
    )
    daemon = Daemon(config, SystemdNotifier({}), options)
    run = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 30)
        yield daemon
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(run, 10) == 0


def pairing_url(daemon: Daemon) -> str:
    assert daemon.controller is not None
    return daemon.controller.start_pairing().url


def lan_port(daemon: Daemon) -> int:
    assert daemon.lan is not None
    assert daemon.lan.port is not None
    return daemon.lan.port


async def paired_viewer(
    daemon: Daemon, directory: Path, name: str = "Test viewer"
) -> tuple[ViewerState, PairedDevice]:
    state = ViewerState(directory)
    device = await pair(state, pairing_url(daemon), name)
    return state, device


def live_sessions(daemon: Daemon) -> int:
    assert daemon.sessions is not None
    return len(daemon.sessions.sessions)


# --- raw protocol clients -----------------------------------------------------------------------


class RawConnection:
    """A WebSocket to /ws driven by hand, for what a well-behaved viewer never sends."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http = http
        self.ws = ws

    @classmethod
    async def open(cls, port: int, local_host: str | None = None) -> RawConnection:
        connector = aiohttp.TCPConnector(local_addr=(local_host, 0) if local_host else None)
        http = aiohttp.ClientSession(connector=connector)
        try:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws", max_msg_size=1 << 20)
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    async def receive_frame(self, within: float = 5.0) -> Frame | None:
        """The next frame, or None once the server closed the connection."""
        message = await self.ws.receive(within)
        if message.type == aiohttp.WSMsgType.BINARY:
            return Frame.decode(message.data)
        return None

    async def closed_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                while True:
                    message = await self.ws.receive()
                    if message.type in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def raw_session(
    port: int, identity: Identity, device_key: bytes
) -> tuple[RawConnection, ViewerChannel]:
    """An authenticated session channel (hello, reply) with nothing sent after it."""
    conn = await RawConnection.open(port)
    channel = ViewerChannel.for_session(identity.private_key, device_key)
    await conn.ws.send_bytes(channel.start())
    message = await conn.ws.receive(5)
    outputs = channel.feed(message.data)
    assert any(isinstance(o, DeviceReady) for o in outputs), outputs
    return conn, channel


# --- the happy path -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_pair_through_ws_then_watch(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        assert daemon.controller is not None
        state = ViewerState(tmp_path / "viewer")
        url = pairing_url(daemon)
        started = time.monotonic()
        device = await pair(state, url, "Anna's laptop")
        pair_s = time.monotonic() - started
        assert daemon.controller.active_window is None  # single use: the window closed on success
        peers = daemon.controller.peers()
        assert [(p.peer_id, p.name) for p in peers] == [(device.peer_id, "Anna's laptop")]
        assert state.devices() == [device]
        assert device.name == "Pet camera"
        assert (state.devices_path.stat().st_mode & 0o777) == 0o600

        first_frames: list[float] = []
        for _ in range(3):
            result = await watch(state, device, frames=30)
            assert result.frames_decoded >= 30
            assert result.path == "host"
            assert (result.width, result.height) == (320, 240)
            assert result.first_frame_s is not None
            first_frames.append(result.first_frame_s)
            # The channel's end ends the session: nothing lingers on the device.
            assert await wait_for(lambda: live_sessions(daemon) == 0, 3)
            assert await wait_for(
                lambda: daemon.signaling is not None and daemon.signaling.connections == 0, 3
            )
        print(
            f"pair {pair_s * 1000:.0f} ms; watch start -> first frame median "
            f"{statistics.median(first_frames) * 1000:.0f} ms (max {max(first_frames) * 1000:.0f})"
        )
        assert pair_s < 2.0
        assert statistics.median(first_frames) < 1.5
        assert daemon.controller.peers()[0].last_seen is not None  # touched on authentication


@pytest.mark.timeout(60)
async def test_pairing_code_is_single_use(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        url = pairing_url(daemon)
        await pair(ViewerState(tmp_path / "first"), url, "First")
        with pytest.raises(PairingRefusedError) as refused:
            await pair(ViewerState(tmp_path / "second"), url, "Second")
        assert refused.value.code is ErrorCode.PAIRING_CLOSED
        assert "no longer valid" in str(refused.value)
        assert ViewerState(tmp_path / "second").devices() == []


@pytest.mark.timeout(60)
async def test_unpaired_key_gets_not_paired(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        url = pairing_url(daemon)  # a code exists, but this viewer never used it
        payload = decode_pairing_url(url)
        stranger = ViewerState(tmp_path / "stranger")
        device = PairedDevice(
            payload.device_id, payload.device_key, "a" * 16, "Pet camera", payload.addresses, payload.port
        )
        with pytest.raises(NotPairedError) as refused:
            await watch(stranger, device, frames=1)
        assert refused.value.code is ErrorCode.NOT_PAIRED
        assert live_sessions(daemon) == 0


@pytest.mark.timeout(90)
async def test_revoke_closes_the_live_session_and_refuses_the_next_hello(
    tmp_path: Path, bus_address: str
) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        assert daemon.controller is not None
        state, device = await paired_viewer(daemon, tmp_path / "viewer")
        watching = asyncio.create_task(watch(state, device, duration_s=30))
        assert await wait_for(lambda: live_sessions(daemon) == 1, 10)
        await asyncio.sleep(0.5)  # frames are flowing
        revoked_at = time.monotonic()
        daemon.controller.revoke_peer(device.peer_id)  # what `petcamctl revoke` does over D-Bus
        with pytest.raises(NotPairedError) as ended:
            await asyncio.wait_for(watching, 5)
        ended_in = time.monotonic() - revoked_at
        assert ended.value.code is ErrorCode.REVOKED
        assert await wait_for(lambda: live_sessions(daemon) == 0, 3)
        print(f"revoke -> viewer told and session gone in {ended_in * 1000:.0f} ms")
        assert ended_in < 2.0
        with pytest.raises(NotPairedError) as refused:
            await watch(state, device, frames=1)
        assert refused.value.code is ErrorCode.NOT_PAIRED


@pytest.mark.timeout(90)
async def test_too_many_viewers_is_a_clear_refusal(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address, max_viewers=1) as daemon:
        first_state, first = await paired_viewer(daemon, tmp_path / "one", "One")
        second_state, second = await paired_viewer(daemon, tmp_path / "two", "Two")
        watching = asyncio.create_task(watch(first_state, first, duration_s=20))
        assert await wait_for(lambda: live_sessions(daemon) == 1, 10)
        with pytest.raises(DeviceBusyError) as busy:
            await watch(second_state, second, frames=1)
        assert busy.value.code is ErrorCode.TOO_MANY_VIEWERS
        assert not watching.done()
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


@pytest.mark.timeout(60)
async def test_shutdown_says_bye_to_watching_viewers_within_budget(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        assert daemon.controller is not None
        state, device = await paired_viewer(daemon, tmp_path / "viewer")
        watching = asyncio.create_task(watch(state, device, duration_s=30))
        assert await wait_for(
            lambda: daemon.controller is not None and daemon.controller.status().viewers == 1, 10
        )
        assert "1 viewer(s)" in daemon.status_line()
        await asyncio.sleep(1.5)  # stats are sampled once a second
        (session,) = daemon.controller.status().sessions  # the per-viewer stats reach status
        assert session["peer_id"] == device.peer_id
        assert session["state"] == "connected"
        assert session["path"] == "host"  # a direct LAN path
        assert session["fps"] > 5
        assert session["srtp_profile"]
        daemon.request_stop()
        result = await asyncio.wait_for(watching, 5)
        assert result.ended_by_device
        assert result.frames_decoded > 0
    viewers = daemon.stage_results[0]
    assert viewers.name == "viewers"
    assert not viewers.timed_out
    assert viewers.elapsed_s < daemon.options.budgets.viewers
    assert not any(r.timed_out for r in daemon.stage_results)


@pytest.mark.timeout(60)
async def test_unauthenticated_endpoints_reveal_only_id_and_name(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        port = lan_port(daemon)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                body = await response.json()
                assert "Server" not in response.headers  # no software versions
            assert set(body) == {"status", "device_id", "name"}
            async with http.get(f"http://127.0.0.1:{port}/ws") as response:
                assert response.status == 400  # not a WebSocket upgrade
                assert "Server" not in response.headers
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            assert "Server" not in ws._response.headers
            await ws.close()


# --- abuse: one connection's problem stays its own ----------------------------------------------


@pytest.mark.timeout(120)
async def test_bad_frames_and_floods_leave_other_viewers_streaming(
    tmp_path: Path, bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limits = ConnectionLimits(max_connections=24, max_per_address=6, handshake_burst=8, handshakes_per_s=0.5)
    async with running_daemon(tmp_path, bus_address, limits=limits) as daemon:
        port = lan_port(daemon)
        state, device = await paired_viewer(daemon, tmp_path / "viewer")
        watching = asyncio.create_task(watch(state, device, duration_s=8))
        assert await wait_for(lambda: live_sessions(daemon) == 1, 10)
        assert daemon.hub is not None
        sub = daemon.hub.subscribers[0]
        await asyncio.sleep(1.0)
        before = sub.frames_delivered
        abuse_started = time.monotonic()

        marker = b"\x09SECRET-PAYLOAD-MARKER"
        conn = await RawConnection.open(port)  # unknown frame type
        await conn.ws.send_bytes(marker)
        reply = await conn.receive_frame()
        assert reply is not None
        assert reply.error_code is ErrorCode.BAD_MESSAGE
        assert await conn.closed_within(3)
        await conn.close()

        conn = await RawConnection.open(port)  # text instead of binary
        await conn.ws.send_str("SECRET-TEXT-MARKER")
        reply = await conn.receive_frame()
        assert reply is not None
        assert reply.error_code is ErrorCode.BAD_MESSAGE
        await conn.close()

        conn = await RawConnection.open(port)  # larger than any frame may be
        await conn.ws.send_bytes(bytes([FrameType.TRANSPORT]) + b"\xaa" * 70_000)
        assert await conn.closed_within(3)
        assert conn.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await conn.close()

        conn = await RawConnection.open(port)  # a hello of the wrong length
        await conn.ws.send_bytes(bytes([FrameType.SESSION_HELLO]) + b"\x01" * 40)
        reply = await conn.receive_frame()
        assert reply is not None
        assert reply.error_code is ErrorCode.BAD_MESSAGE
        await conn.close()

        # A flood from one address: past the burst, connections are refused at once.
        flood = await asyncio.gather(*(RawConnection.open(port) for _ in range(20)), return_exceptions=True)
        opened = [c for c in flood if isinstance(c, RawConnection)]
        refusals = 0
        for c in opened:
            with contextlib.suppress(TimeoutError):
                frame = await c.receive_frame(within=0.3)
                if frame is not None and frame.type is FrameType.ERROR:
                    assert frame.error_code is ErrorCode.RATE_LIMITED
                    refusals += 1
        assert refusals >= 20 - limits.handshake_burst
        assert daemon.lan is not None
        assert daemon.lan.connections <= limits.max_per_address + 1  # + the streaming viewer's

        # Another address on the LAN is not held back by the flood.
        other = await RawConnection.open(port, local_host="127.0.0.2")
        channel = ViewerChannel.for_session(Identity.generate().private_key, device.device_key)
        await other.ws.send_bytes(channel.start())
        answer = await other.receive_frame()
        assert answer is not None
        assert answer.type is FrameType.ERROR
        assert answer.error_code is ErrorCode.NOT_PAIRED  # refused on its merits, not rate-limited
        await other.close()
        for c in opened:
            await c.close()

        abuse_s = time.monotonic() - abuse_started
        delivered = sub.frames_delivered - before
        print(f"abuse took {abuse_s:.2f} s; the streaming viewer got {delivered} frames meanwhile")
        assert not watching.done()
        assert delivered >= 0.8 * 15 * abuse_s
        result = await watching
        assert result.frames_decoded >= 0.8 * 15 * 7
        assert not result.ended_by_device

    logged = caplog.text
    assert "malformed frame" in logged
    assert "text message" in logged
    assert "too many" in logged
    assert "SECRET" not in logged
    assert "aaaaaaaa" not in logged


@pytest.mark.timeout(60)
async def test_at_the_total_limit_the_oldest_unauthenticated_connection_makes_room(
    tmp_path: Path, bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections from many addresses that never authenticate fill the total limit; a paired
    viewer still gets in at once (not after the 10 s handshake timeout frees a slot), and the
    streaming viewer never notices."""
    caplog.set_level(logging.INFO)
    limits = ConnectionLimits(max_connections=4)
    async with running_daemon(tmp_path, bus_address, limits=limits) as daemon:
        port = lan_port(daemon)
        assert daemon.lan is not None
        state, device = await paired_viewer(daemon, tmp_path / "viewer")
        watching = asyncio.create_task(watch(state, device, duration_s=4))
        assert await wait_for(lambda: live_sessions(daemon) == 1, 10)
        idle = [await RawConnection.open(port, local_host=f"127.0.3.{n}") for n in range(1, 7)]
        # Four slots: the streaming viewer's and three idle ones; each newer idle one made room.
        assert daemon.lan.evicted == 3
        for conn in idle[:3]:  # the oldest, told why
            reply = await conn.receive_frame()
            assert reply is not None
            assert reply.error_code is ErrorCode.RATE_LIMITED
            assert await conn.closed_within(3)
        for conn in idle[3:]:
            with pytest.raises(TimeoutError):
                await conn.receive_frame(within=0.2)  # still open: nothing to say yet
        result = await watch(state, device, frames=5)
        assert result.frames_decoded >= 5
        assert daemon.lan.evicted == 4
        assert not watching.done()
        streamed = await watching
        assert streamed.frames_decoded >= 0.8 * 15 * 3
        assert not streamed.ended_by_device
        for conn in idle:
            await conn.close()
    assert "closing the oldest unauthenticated one" in caplog.text
    assert caplog.text.count("closing the oldest unauthenticated one") == 1  # then only counted


@pytest.mark.timeout(60)
async def test_idle_handshake_times_out_and_quiet_peers_are_pinged_then_dropped(
    tmp_path: Path, bus_address: str
) -> None:
    settings = NegotiatorSettings(handshake_timeout_s=0.5, ping_interval_s=0.3, idle_timeout_s=1.2)
    async with running_daemon(tmp_path, bus_address, signaling=settings) as daemon:
        port = lan_port(daemon)
        assert daemon.signaling is not None
        state, device = await paired_viewer(daemon, tmp_path / "viewer")

        idle = await RawConnection.open(port)  # says nothing at all
        started = time.monotonic()
        assert await idle.closed_within(3)
        assert 0.4 < time.monotonic() - started < 2.0
        await idle.close()

        # A pairing hello that never proves the code counts against the window.
        assert daemon.controller is not None
        payload = decode_pairing_url(pairing_url(daemon))
        window = daemon.controller.active_window
        assert window is not None
        prober = await RawConnection.open(port)
        pairing = ViewerChannel.for_pairing(Identity.generate().private_key, payload, "Prober")
        await prober.ws.send_bytes(pairing.start())
        reply = await prober.receive_frame()
        assert reply is not None
        assert reply.type is FrameType.HANDSHAKE_REPLY
        assert await prober.closed_within(3)
        await prober.close()
        assert window.failures == 1

        # Authenticated but deaf: pinged, never answers, dropped after idle_timeout_s.
        identity = await asyncio.to_thread(state.identity)
        deaf, deaf_channel = await raw_session(port, identity, device.device_key)
        await deaf.ws.send_bytes(deaf_channel.send(Ping(1)))  # its first message authenticates it
        started = time.monotonic()
        received = 0
        while True:
            message = await deaf.ws.receive(5)
            if message.type != aiohttp.WSMsgType.BINARY:
                break
            received += 1  # pong, pings, bye: never fed to the channel, so never answered
        dropped_after = time.monotonic() - started
        assert received >= 3
        assert 1.0 < dropped_after < 3.0
        await deaf.close()

        # A viewer that answers pings outlives the idle timeout several times over.
        result = await watch(state, device, duration_s=4)
        assert not result.ended_by_device
        assert result.frames_decoded >= 0.8 * 15 * 3.5
        assert await wait_for(lambda: daemon.signaling is not None and daemon.signaling.connections == 0, 3)


# --- what a LAN observer sees --------------------------------------------------------------------


def encodings(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


@pytest.mark.timeout(90)
async def test_plain_http_traffic_carries_no_sdp_candidates_or_keys(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon, CaptureProxy(lan_port(daemon)) as proxy:
        proxy_port = proxy.port
        payload = decode_pairing_url(pairing_url(daemon))
        # The same pairing URL, but pointing at the proxy.
        url = encode_pairing_url(
            f"http://127.0.0.1:{proxy_port}", dataclasses.replace(payload, port=proxy_port)
        )
        state = ViewerState(tmp_path / "viewer")
        device = await pair(state, url, "Observed viewer")
        result = await watch(state, device, frames=20)
        assert result.frames_decoded >= 20

    device_identity = load_or_create_identity(tmp_path / "device-state" / "device.key")
    viewer_identity = state.identity()
    secrets_seen: list[bytes] = []
    for identity in (device_identity, viewer_identity):
        secrets_seen += encodings(identity.public_key)
        secrets_seen += encodings(_private_bytes(identity))
    secrets_seen += encodings(payload.secret) + encodings(psk_from_secret(payload.secret))
    texts = [
        b"v=0",
        b"a=candidate",
        b"candidate",
        b"typ host",
        b"ice-ufrag",
        b"ice-pwd",
        b"fingerprint",
        b"sdp",
        b"H264",
        b"offer",
        b"answer",
        b"Observed viewer",
        b"peerId",
        b'"t"',
    ]

    assert len(proxy.streams) == 2  # the pairing connection and the session
    frame_types: list[FrameType] = []
    for up, down in proxy.streams:
        assert up.startswith(b"GET /ws ")
        for stream in (bytes(up), bytes(down)):
            views = [stream] + [p for _, p in ws_frames(stream)]
            for view in views:
                for needle in texts + secrets_seen:
                    assert needle not in view, needle[:12]
            for opcode, data in ws_frames(stream):
                if opcode == 0x2:
                    frame_types.append(Frame.decode(data).type)
    assert FrameType.PAIR_HELLO in frame_types
    assert FrameType.SESSION_HELLO in frame_types
    assert frame_types.count(FrameType.TRANSPORT) >= 4  # pair, paired, offer, answer


def _private_bytes(identity: Identity) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return identity.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


# --- pieces -------------------------------------------------------------------------------------


def test_limits_count_exact_addresses() -> None:
    assert address_key("192.168.1.7") == "192.168.1.7"
    assert address_key("::ffff:192.168.1.7") == "192.168.1.7"
    assert address_key("2001:db8:1:2:0::5") == "2001:db8:1:2::5"
    assert address_key("2001:db8:1:2::6") != address_key("2001:db8:1:2::5")  # one home /64, two phones
    assert address_key("fe80::1%eth0") == "fe80::1"


def test_webrtc_settings_follow_the_network_mode() -> None:
    local = webrtc_settings(
        parse_config(
            {"network": {"ice_servers": ["stun:stun.example.org:3478"]}, "viewers": {"max_viewers": 2}}
        )
    )
    assert local.local_network_mode
    assert local.ice_servers == ()
    assert local.max_viewers == 2
    internet = webrtc_settings(
        parse_config(
            {
                "network": {
                    "mode": "internet",
                    "ice_servers": ["stun:stun.example.org:3478"],
                    "ice_gather_timeout_s": 1,
                }
            }
        )
    )
    assert not internet.local_network_mode
    assert [s.url for s in internet.ice_servers] == ["stun:stun.example.org:3478"]
    assert internet.gather_timeout_s == 1.0
    with pytest.raises(ValueError, match="TURN"):
        webrtc_settings(
            parse_config({"network": {"mode": "internet", "ice_servers": ["turn:t.example.org"]}})
        )


async def test_static_directory_hook_keeps_the_api_routes(tmp_path: Path) -> None:
    web_root = tmp_path / "web"
    (web_root / "js").mkdir(parents=True)
    (web_root / "index.html").write_text("<!doctype html><title>viewer</title>")
    (web_root / "js" / "app.js").write_text("export {};\n")
    settings = LanServerSettings(
        "127.0.0.1", 0, "a" * 16, "Pet camera", static_dir=web_root, connect_sources=("wss://relay.test",)
    )
    server = LanServer(settings)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            for page in ("/", "/index.html"):
                async with http.get(f"{base}{page}") as response:
                    assert response.status == 200
                    assert "viewer" in await response.text()
                    assert response.headers["Cache-Control"] == "no-store"  # never cache the pairing page
                    csp = parse_csp(response.headers["Content-Security-Policy"])
                    assert csp["script-src"] == ["'self'"]  # no inline script, no other origin
                    assert csp["default-src"] == ["'none'"]
                    assert csp["connect-src"] == [
                        "'self'",
                        f"ws://127.0.0.1:{server.port}",
                        "wss://relay.test",
                    ]
                    assert response.headers["X-Frame-Options"] == "DENY"
                    assert "Strict-Transport-Security" not in response.headers  # plain http
                    assert "Server" not in response.headers
            async with http.get(f"{base}/js/app.js") as response:
                assert response.headers["Content-Type"].startswith("text/javascript")
                assert response.headers["Cache-Control"] == "no-cache"
                assert "Content-Security-Policy" in response.headers
            # A Host header that is not a plain host and port is not repeated into the policy.
            async with http.get(f"{base}/", headers={"Host": "evil.test; script-src *"}) as response:
                csp = parse_csp(response.headers["Content-Security-Policy"])
                assert csp["connect-src"] == ["'self'", "wss://relay.test"]
                assert csp["script-src"] == ["'self'"]
            async with http.get(f"{base}/healthz") as response:
                assert (await response.json())["device_id"] == "a" * 16
            (tmp_path / "secret.txt").write_text("outside the web root")
            for hidden in ("/js/", "/ws", "/%2E%2E/secret.txt", "/js/%2E%2E/%2E%2E/secret.txt"):
                async with http.get(URL(f"{base}{hidden}", encoded=True)) as response:
                    assert response.status in (403, 404), hidden
    finally:
        await server.stop()


def parse_csp(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *values = part.split()
        assert name not in directives, f"{name} given twice"
        directives[name] = values
    return directives


@pytest.mark.timeout(60)
async def test_daemon_serves_the_web_viewer_with_strict_headers(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        port = lan_port(daemon)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/js/noise.js") as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/javascript")
            source = await response.text()
            assert source == (viewer_web_dir() / "js" / "noise.js").read_text()
            assert parse_csp(response.headers["Content-Security-Policy"])["script-src"] == ["'self'"]


@pytest.mark.timeout(60)
async def test_dbus_signals_follow_viewers_and_the_camera(tmp_path: Path, bus_address: str) -> None:
    """ViewerConnected/Disconnected, CameraStateChanged and PropertiesChanged, on a real bus."""
    camera = {"always_on": False, "linger_s": 0.2}
    async with running_daemon(tmp_path, bus_address, camera=camera) as daemon:
        bus = await MessageBus(bus_address=bus_address).connect()
        try:
            introspection = await bus.introspect(BUS_NAME, OBJECT_PATH)
            proxy = bus.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection)
            iface: Any = proxy.get_interface(INTERFACE)
            seen: list[tuple[str, ...]] = []
            iface.on_viewer_connected(lambda peer, session: seen.append(("connected", peer, session)))
            iface.on_viewer_disconnected(
                lambda peer, session, why: seen.append(("disconnected", peer, session, why))
            )
            iface.on_camera_state_changed(lambda state: seen.append(("camera", state)))
            properties: Any = proxy.get_interface("org.freedesktop.DBus.Properties")
            properties.on_properties_changed(
                lambda _i, changed, _x: seen.extend(("property", k, str(v.value)) for k, v in changed.items())
            )
            assert daemon.hub is not None
            assert daemon.hub.state.value == "idle"  # on demand: nobody watches yet

            state, device = await paired_viewer(daemon, tmp_path / "viewer")
            result = await watch(state, device, frames=10)
            assert result.frames_decoded >= 10
            await wait_for(
                lambda: ("camera", "idle") in seen and any(e[0] == "disconnected" for e in seen), 10
            )
        finally:
            bus.disconnect()
    events = [e for e in seen if e[0] in ("connected", "disconnected")]
    assert [e[0] for e in events] == ["connected", "disconnected"]
    assert events[0][1] == device.peer_id
    assert events[0][2] == events[1][2]  # the same session
    cameras = [e[1] for e in seen if e[0] == "camera"]
    assert cameras[0] == "starting"
    assert "streaming" in cameras
    assert cameras[-1] == "idle"  # the camera stops once the last viewer left (and the linger)
    assert ("property", "ViewerCount", "1") in seen
    assert ("property", "ViewerCount", "0") in seen
    assert ("property", "CameraState", "streaming") in seen
