"""What the relay sees: real Noise channels over a real relay, every byte recorded on the way.

A device (DeviceChannel) and a viewer (ViewerChannel) pair and then open a session through the
relay, exchanging offers and answers with SDP and ICE candidates. A loopback proxy records the
TCP bytes between the clients and the relay (and unmasks the WebSocket payloads clients send);
neither that capture nor any log line may contain SDP, candidates, names or the viewer's key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.messages import Answer, Ice, Offer
from petcamd.protocol.pairing_url import PairingPayload
from petcamd.protocol.relay import Close, Connect, Data, Open
from petcamd.secure.channel import (
    Authenticated,
    Closed,
    DeviceChannel,
    DeviceReady,
    Output,
    Received,
    SendFrame,
    ViewerChannel,
)
from petcamd.secure.identity import key_id
from petcamd.secure.noise import public_bytes
from petcamd.secure.pairing import PairingWindow
from tests.test_relay_harness import CaptureProxy, Client, DeviceClient, Relay, running_relay

DEVICE_NAME = "Kitchen cam"
VIEWER_NAME = "Anna's phone"
FINGERPRINT = (
    "7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:9E:0D:11:4F:2C:88:A1:07"
)
OFFER_SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\n"
    f"a=fingerprint:sha-256 {FINGERPRINT}\r\n"
    "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\na=mid:0\r\na=recvonly\r\n"
    "a=rtpmap:102 H264/90000\r\n"
    "a=candidate:1467250027 1 udp 2122260223 192.168.1.47 53214 typ host\r\n"
)
ANSWER_SDP = (
    OFFER_SDP.replace("recvonly", "sendonly").replace("EsAw", "Zq9k").replace("192.168.1.47", "10.1.2.3")
)
CANDIDATE = "candidate:842163049 1 udp 1677729535 198.51.100.7 46154 typ srflx raddr 10.0.0.5 rport 46154"

SECRETS = [
    "v=0\r\no=-",
    "a=fingerprint",
    FINGERPRINT,
    FINGERPRINT.replace(":", ""),
    "ice-ufrag",
    "P2uYro0UCOQ4zxjKXaWCBui1",
    "H264/90000",
    "IN IP4",
    "candidate:",
    "typ host",
    "typ srflx",
    "198.51.100.7",
    "192.168.1.47",
    "10.1.2.3",
    '"sdp"',
    '"t":"offer"',
    DEVICE_NAME,
    VIEWER_NAME,
]


@dataclass(frozen=True)
class Peer:
    peer_id: str
    name: str
    public_key: bytes = field(repr=False)


class Directory:
    def __init__(self) -> None:
        self.peers: dict[bytes, Peer] = {}

    def find_by_key(self, public_key: bytes) -> Peer | None:
        return self.peers.get(public_key)

    def add(self, name: str, public_key: bytes) -> Peer:
        peer = Peer(key_id(public_key), name, public_key)
        self.peers[public_key] = peer
        return peer


class Device:
    """The device side: one DeviceChannel per OPEN, answering every offer."""

    def __init__(self, client: DeviceClient) -> None:
        self.client = client
        self.directory = Directory()
        self.window: PairingWindow | None = PairingWindow(300.0, 3)
        self.channels: dict[int, DeviceChannel] = {}
        self.received: list[object] = []

    async def serve(self, sessions: int) -> None:
        finished = 0
        while finished < sessions:
            envelope = await self.client.recv()
            if isinstance(envelope, Open):
                self.channels[envelope.conn_id] = DeviceChannel(
                    self.client.key, self.directory, lambda: self.window, DEVICE_NAME
                )
            elif isinstance(envelope, Data):
                channel = self.channels[envelope.conn_id]
                if await self._act(envelope.conn_id, channel, channel.feed(envelope.frame)):
                    finished += 1
            elif isinstance(envelope, Close):
                self.channels.pop(envelope.conn_id, None)

    async def _act(self, conn_id: int, channel: DeviceChannel, outputs: list[Output]) -> bool:
        for output in outputs:
            if isinstance(output, SendFrame):
                await self.client.send(Data(conn_id, output.data))
            elif isinstance(output, Received):
                self.received.append(output.message)
                if isinstance(output.message, Offer):
                    await self.client.send(Data(conn_id, channel.send(Answer(ANSWER_SDP))))
                    await self.client.send(Data(conn_id, channel.send(Ice(CANDIDATE, "0", 0))))
            elif isinstance(output, Authenticated) and output.newly_paired:
                self.window = None
            elif isinstance(output, Closed):
                assert output.code is None, output
                await self.client.send(Close(conn_id))
                return True
        return False


async def run_viewer(client: Client, channel: ViewerChannel, device_id: str, conn_id: int) -> list[object]:
    """Connect, handshake, send an offer and a candidate, wait for answer and candidate, say bye."""
    received: list[object] = []
    await client.send(Connect(conn_id, device_id))
    await client.send(Data(conn_id, channel.start()))
    while True:
        envelope = await client.recv()
        if isinstance(envelope, Close) and envelope.conn_id != conn_id:
            continue  # the end of the previous session
        assert isinstance(envelope, Data), envelope
        for output in channel.feed(envelope.frame):
            if isinstance(output, SendFrame):
                await client.send(Data(conn_id, output.data))
            elif isinstance(output, DeviceReady):
                received.append(output)
                await client.send(Data(conn_id, channel.send(Offer(OFFER_SDP))))
                await client.send(Data(conn_id, channel.send(Ice(CANDIDATE, "0", 0))))
            elif isinstance(output, Received):
                received.append(output.message)
            else:
                assert not isinstance(output, Closed), output
        if sum(isinstance(m, Answer | Ice) for m in received) == 2:
            for output in channel.close():
                assert isinstance(output, SendFrame | Closed)
                if isinstance(output, SendFrame):
                    await client.send(Data(conn_id, output.data))
            return received


async def pair_and_watch(relay: Relay) -> tuple[Device, list[object], bytes]:
    """A pairing and then a session, both through the relay; returns the viewer's public key."""
    import asyncio

    device = Device(await relay.device())
    viewer_key = X25519PrivateKey.generate()
    viewer = await relay.viewer()
    device_key = public_bytes(device.client.key)
    assert device.window is not None
    payload = PairingPayload(
        device_id=device.client.device_id,
        device_key=device_key,
        secret=device.window.secret,
        expires_at=device.window.expires_at_wall,
        addresses=("192.168.1.20",),
        port=8080,
        relay_url="wss://relay.test/",
        name=DEVICE_NAME,
    )
    serving = asyncio.ensure_future(device.serve(sessions=2))
    pairing = ViewerChannel.for_pairing(viewer_key, payload, VIEWER_NAME)
    paired = await run_viewer(viewer, pairing, device.client.device_id, 1)
    session = ViewerChannel.for_session(viewer_key, device_key)
    watched = await run_viewer(viewer, session, device.client.device_id, 2)
    await asyncio.wait_for(serving, 5)
    return device, paired + watched, public_bytes(viewer_key)


async def test_capture_and_logs_hold_no_sdp_candidates_names_or_viewer_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_relay() as relay, CaptureProxy(relay.server.port or 0) as proxy:
        relay.base_url = f"http://127.0.0.1:{proxy.port}"

        # Control: plaintext inside DATA is visible to the capture in both hops, so its silence
        # about the real traffic below means something.
        control_device = await relay.device(address="10.0.0.99")
        control_viewer = await relay.viewer(address="10.0.1.99")
        await control_viewer.send(Connect(1, control_device.device_id))
        opened = await control_device.recv()
        assert isinstance(opened, Open)
        await control_viewer.send(Data(1, b"\x04PLAINTEXT CONTROL v=0 candidate:"))
        assert isinstance(await control_device.recv(), Data)
        payloads = proxy.websocket_payloads()
        assert sum(b"PLAINTEXT CONTROL" in p for p in payloads) == 2  # masked upstream, clear downstream
        proxy.streams.clear()

        device, received, viewer_public = await pair_and_watch(relay)

        # The exchange really carried SDP and candidates, end to end.
        assert [type(m).__name__ for m in received] == ["DeviceReady", "Answer", "Ice"] * 2
        assert [type(m).__name__ for m in device.received] == ["Offer", "Ice"] * 2
        assert all(m.sdp == OFFER_SDP for m in device.received if isinstance(m, Offer))

        captured = [proxy.raw(), *proxy.websocket_payloads()]
        assert len(captured) > 20
    needles = [s.encode() for s in SECRETS] + [viewer_public, viewer_public.hex().encode()]
    for needle in needles:
        assert not any(needle in blob for blob in captured), needle
        assert not any(needle.lower() in blob.lower() for blob in captured if len(needle) > 8), needle

    log_text = "\n".join(record.getMessage() for record in caplog.records)
    relay_lines = [r.getMessage() for r in caplog.records if r.name.startswith("petcamd.relay")]
    assert any(device.client.device_id in line for line in relay_lines)  # it does log ids
    for secret in SECRETS:
        assert secret not in log_text, secret
    assert viewer_public.hex() not in log_text
