"""The secure channel end to end: two real channel ends joined by a recording "relay"."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from petcamd.protocol.messages import (
    Answer,
    ErrorCode,
    Frame,
    FrameType,
    Ice,
    Keyframe,
    Offer,
    Pair,
    Paired,
    Ping,
    Pong,
    ProtocolError,
)
from petcamd.protocol.pairing_url import PairingPayload
from petcamd.secure.channel import (
    Authenticated,
    ChannelClosedError,
    Closed,
    DeviceChannel,
    DeviceReady,
    LiveChannels,
    Output,
    Received,
    SendFrame,
    ViewerChannel,
)
from petcamd.secure.identity import key_id
from petcamd.secure.keystore import Keystore, Peer, PeerEvent
from petcamd.secure.noise import public_bytes
from petcamd.secure.pairing import PairingWindow, WindowState, psk_from_secret

DEVICE_NAME = "Kitchen cam"
SDP_OFFER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\n"
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43\r\n"
    "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\na=mid:0\r\na=recvonly\r\n"
    "a=rtpmap:102 H264/90000\r\n"
)
SDP_ANSWER = SDP_OFFER.replace("recvonly", "sendonly").replace("EsAw", "Zq9k")
CANDIDATE = "candidate:842163049 1 udp 1677729535 198.51.100.7 46154 typ srflx raddr 10.0.0.5 rport 46154"


@dataclass(frozen=True)
class MemoryPeer:
    peer_id: str
    name: str
    public_key: bytes = field(repr=False)


class MemoryDirectory:
    """In-memory paired-viewer set with the keystore's contract (find_by_key, add, revoke)."""

    def __init__(self) -> None:
        self.peers: dict[bytes, MemoryPeer] = {}

    def find_by_key(self, public_key: bytes) -> MemoryPeer | None:
        return self.peers.get(public_key)

    def add(self, name: str, public_key: bytes) -> MemoryPeer:
        peer = MemoryPeer(key_id(public_key), name, public_key)
        self.peers[public_key] = peer
        return peer

    def revoke(self, peer_id: str) -> None:
        self.peers = {k: p for k, p in self.peers.items() if p.peer_id != peer_id}


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Device:
    """One device: its key, directory and current pairing window; makes a channel per connection."""

    def __init__(self, directory: MemoryDirectory | Keystore | None = None) -> None:
        self.key = X25519PrivateKey.generate()
        self.public_key = public_bytes(self.key)
        self.directory = directory if directory is not None else MemoryDirectory()
        self.clock = Clock()
        self.window: PairingWindow | None = None

    @property
    def memory(self) -> MemoryDirectory:
        assert isinstance(self.directory, MemoryDirectory)
        return self.directory

    def open_window(self, lifetime_s: float = 300.0, max_failures: int = 3) -> PairingWindow:
        self.window = PairingWindow(lifetime_s, max_failures, clock=self.clock)
        return self.window

    def channel(self) -> DeviceChannel:
        return DeviceChannel(self.key, self.directory, lambda: self.window, DEVICE_NAME)

    def payload(self, secret: bytes | None = None) -> PairingPayload:
        assert self.window is not None
        return PairingPayload(
            device_id=key_id(self.public_key),
            device_key=self.public_key,
            secret=self.window.secret if secret is None else secret,
            expires_at=self.window.expires_at_wall,
            addresses=("192.168.1.20",),
            port=8080,
        )


class Wire:
    """Carries frames between one viewer and one device channel, as a relay would, recording them."""

    def __init__(
        self,
        viewer: ViewerChannel,
        device: DeviceChannel,
        log: list[bytes] | None = None,
        relay: Callable[[int, bytes, bool], bytes] | None = None,
    ) -> None:
        """``relay(n, frame, to_device)`` may alter the n-th frame carried (counting from 0)."""
        self.viewer = viewer
        self.device = device
        self.frames: list[bytes] = [] if log is None else log
        self.viewer_events: list[Output] = []
        self.device_events: list[Output] = []
        self._relay = relay
        self._carried = 0

    def start(self) -> None:
        self.to_device(self.viewer.start())

    def viewer_send(self, message: object) -> None:
        assert isinstance(message, Offer | Answer | Ice | Keyframe | Ping)
        self.to_device(self.viewer.send(message))

    def device_send(self, message: object) -> None:
        assert isinstance(message, Offer | Answer | Ice | Ping)
        self.to_viewer(self.device.send(message))

    def to_device(self, frame: bytes) -> None:
        self._pump([(True, frame)])

    def to_viewer(self, frame: bytes) -> None:
        self._pump([(False, frame)])

    def deliver_device_outputs(self, outputs: list[Output]) -> None:
        """Perform outputs the device produced outside feed() (e.g. close())."""
        self._pump(self._route(outputs, to_device=False))

    def _pump(self, queue: list[tuple[bool, bytes]]) -> None:
        # Each end handles all outputs of one feed before the next frame arrives, as over a socket.
        while queue:
            to_device, frame = queue.pop(0)
            if self._relay is not None:
                frame = self._relay(self._carried, frame, to_device)
            self._carried += 1
            self.frames.append(frame)
            receiver: DeviceChannel | ViewerChannel = self.device if to_device else self.viewer
            queue += self._route(receiver.feed(frame), to_device=not to_device)

    def _route(self, outputs: list[Output], *, to_device: bool) -> list[tuple[bool, bytes]]:
        """Record the events of the end that sent towards ``to_device``; return its frames."""
        events = self.viewer_events if to_device else self.device_events
        frames: list[tuple[bool, bytes]] = []
        for output in outputs:
            if isinstance(output, SendFrame):
                frames.append((to_device, output.data))
            else:
                events.append(output)
        return frames


def pair(device: Device, viewer_key: X25519PrivateKey, name: str = "Anna's phone", **kw: bytes) -> Wire:
    wire = Wire(ViewerChannel.for_pairing(viewer_key, device.payload(**kw), name), device.channel())
    wire.start()
    return wire


def session(device: Device, viewer_key: X25519PrivateKey, log: list[bytes] | None = None) -> Wire:
    wire = Wire(ViewerChannel.for_session(viewer_key, device.public_key), device.channel(), log)
    wire.start()
    return wire


def closed(events: list[Output]) -> Closed:
    assert events, "no events"
    last = events[-1]
    assert isinstance(last, Closed), events
    return last


def sent(output: Output) -> bytes:
    assert isinstance(output, SendFrame), output
    return output.data


def frame_types(frames: list[bytes]) -> list[FrameType]:
    return [Frame.decode(frame).type for frame in frames]


def test_pairing_then_session() -> None:
    device, viewer_key = Device(), X25519PrivateKey.generate()
    window = device.open_window()
    wire = pair(device, viewer_key)

    peer = device.directory.find_by_key(public_bytes(viewer_key))
    assert peer is not None
    assert peer.name == "Anna's phone"
    assert wire.device_events == [Authenticated(peer, newly_paired=True)]
    assert wire.viewer_events == [DeviceReady(device.public_key, peer.peer_id, DEVICE_NAME)]
    assert window.state is WindowState.PAIRED
    assert frame_types(wire.frames) == [
        FrameType.PAIR_HELLO,
        FrameType.HANDSHAKE_REPLY,
        FrameType.TRANSPORT,
        FrameType.TRANSPORT,
    ]

    wire = session(device, viewer_key)
    assert wire.viewer_events == [DeviceReady(device.public_key)]
    assert wire.device_events == []  # nothing for the caller until the viewer's first message
    wire.viewer_send(Offer(SDP_OFFER))
    assert wire.device_events == [Authenticated(peer, newly_paired=False), Received(Offer(SDP_OFFER))]
    assert wire.device.peer == peer
    wire.device_send(Answer(SDP_ANSWER))
    wire.viewer_send(Ice(CANDIDATE, "0", 0))
    wire.viewer_send(Ice(""))
    wire.viewer_send(Keyframe())
    assert wire.viewer_events[-1] == Received(Answer(SDP_ANSWER))
    assert wire.device_events[-3:] == [
        Received(Ice(CANDIDATE, "0", 0)),
        Received(Ice("")),
        Received(Keyframe()),
    ]


def test_pairing_channel_goes_straight_on_to_a_session() -> None:
    device, viewer_key = Device(), X25519PrivateKey.generate()
    device.open_window()
    wire = pair(device, viewer_key)
    wire.viewer_send(Offer(SDP_OFFER))
    wire.device_send(Answer(SDP_ANSWER))
    assert wire.device_events[-1] == Received(Offer(SDP_OFFER))
    assert wire.viewer_events[-1] == Received(Answer(SDP_ANSWER))


def test_unpaired_key_is_rejected_at_the_hello() -> None:
    device, stranger = Device(), X25519PrivateKey.generate()
    channel = device.channel()
    hello = ViewerChannel.for_session(stranger, device.public_key).start()
    outputs = channel.feed(hello)
    assert outputs == [
        SendFrame(Frame.error(ErrorCode.NOT_PAIRED).encode()),
        Closed(ErrorCode.NOT_PAIRED, by_peer=False, verified=True),
    ]
    assert channel.is_closed
    assert channel.feed(hello) == []

    wire = session(device, stranger)
    assert wire.device_events == [Closed(ErrorCode.NOT_PAIRED, by_peer=False, verified=True)]
    # The refusal is plaintext, so the viewer learns it is unverified (a relay could forge it).
    assert wire.viewer_events == [Closed(ErrorCode.NOT_PAIRED, by_peer=True, verified=False)]


def paired_device() -> tuple[Device, X25519PrivateKey, str]:
    device, viewer_key = Device(), X25519PrivateKey.generate()
    device.open_window()
    pair(device, viewer_key)
    return device, viewer_key, key_id(public_bytes(viewer_key))


def test_revoked_peer_is_closed_and_then_rejected() -> None:
    device, viewer_key, peer_id = paired_device()
    live = LiveChannels()
    wires = [session(device, viewer_key), session(device, viewer_key)]
    for wire in wires:
        wire.viewer_send(Offer(SDP_OFFER))
        live.add(wire.device, wire.deliver_device_outputs)
    other_key = X25519PrivateKey.generate()
    device.open_window()
    pair(device, other_key)
    bystander = session(device, other_key)
    bystander.viewer_send(Ping(1))
    live.add(bystander.device, bystander.deliver_device_outputs)
    assert live.channels(peer_id) == [wire.device for wire in wires]
    assert len(live) == 3

    device.memory.revoke(peer_id)
    assert live.close_peer(peer_id) == 2

    for wire in wires:
        assert wire.device.is_closed
        assert closed(wire.device_events) == Closed(ErrorCode.REVOKED, by_peer=False, verified=True)
        assert closed(wire.viewer_events) == Closed(
            ErrorCode.REVOKED, by_peer=True, verified=True, remote_reason=ErrorCode.REVOKED.description
        )
    assert live.channels(peer_id) == []
    assert len(live) == 1
    assert bystander.device.is_open

    again = session(device, viewer_key)
    assert closed(again.viewer_events).code is ErrorCode.NOT_PAIRED
    assert not any(isinstance(event, Authenticated) for event in again.device_events)


def test_revoked_between_hello_and_first_message() -> None:
    device, viewer_key, peer_id = paired_device()
    wire = session(device, viewer_key)
    device.memory.revoke(peer_id)
    wire.viewer_send(Offer(SDP_OFFER))
    assert wire.device_events == [Closed(ErrorCode.NOT_PAIRED, by_peer=False, verified=True)]
    assert closed(wire.viewer_events).code is ErrorCode.NOT_PAIRED


def test_replayed_handshake_authenticates_nothing() -> None:
    device, viewer_key, _ = paired_device()
    recorded: list[bytes] = []
    wire = session(device, viewer_key, recorded)
    wire.viewer_send(Offer(SDP_OFFER))
    hello, _reply, first_message = recorded
    assert any(isinstance(event, Authenticated) for event in wire.device_events)

    # An attacker replays the hello to a fresh channel: it is answered (the device cannot tell)...
    replayed = device.channel()
    outputs = replayed.feed(hello)
    assert [type(output) for output in outputs] == [SendFrame]
    assert Frame.decode(sent(outputs[0])).type is FrameType.HANDSHAKE_REPLY
    # ...but the device's new ephemeral key makes the recorded first message undecryptable.
    outputs = replayed.feed(first_message)
    assert outputs == [
        SendFrame(Frame.error(ErrorCode.BAD_MESSAGE).encode()),
        Closed(ErrorCode.BAD_MESSAGE, by_peer=False, verified=True),
    ]
    assert replayed.peer is None

    # Without any follow-up, a replayed hello leaves the channel waiting and unauthenticated.
    idle = device.channel()
    assert [type(output) for output in idle.feed(hello)] == [SendFrame]
    assert idle.connection_lost() == [Closed(None, by_peer=True, verified=False)]
    assert idle.peer is None


def test_pairing_secret_works_once() -> None:
    device = Device()
    device.open_window()
    payload = device.payload()
    pair(device, X25519PrivateKey.generate())
    late = Wire(ViewerChannel.for_pairing(X25519PrivateKey.generate(), payload, "Bob"), device.channel())
    late.start()
    assert late.device_events == [Closed(ErrorCode.PAIRING_CLOSED, by_peer=False, verified=True)]
    assert late.viewer_events == [Closed(ErrorCode.PAIRING_CLOSED, by_peer=True, verified=False)]
    assert len(device.memory.peers) == 1


def test_pairing_secret_expires() -> None:
    device = Device()
    device.open_window(lifetime_s=60)
    device.clock.now += 61
    wire = pair(device, X25519PrivateKey.generate())
    assert closed(wire.viewer_events).code is ErrorCode.PAIRING_CLOSED
    assert device.memory.peers == {}


def test_no_window_means_pairing_closed() -> None:
    device = Device()
    device.open_window()
    payload = device.payload()
    device.window = None
    wire = Wire(ViewerChannel.for_pairing(X25519PrivateKey.generate(), payload, "Bob"), device.channel())
    wire.start()
    assert closed(wire.viewer_events).code is ErrorCode.PAIRING_CLOSED


def test_window_expiring_mid_handshake_refuses_inside_the_channel() -> None:
    device = Device()
    window = device.open_window(lifetime_s=60)
    viewer = ViewerChannel.for_pairing(X25519PrivateKey.generate(), device.payload(), "Bob")
    channel = device.channel()
    reply = channel.feed(viewer.start())
    device.clock.now += 61
    (send_pair,) = viewer.feed(sent(reply[0]))
    assert isinstance(send_pair, SendFrame)
    outputs = channel.feed(send_pair.data)
    assert outputs[-1] == Closed(ErrorCode.PAIRING_CLOSED, by_peer=False, verified=True)
    assert isinstance(outputs[0], SendFrame)
    assert viewer.feed(outputs[0].data) == [
        Closed(
            ErrorCode.PAIRING_CLOSED,
            by_peer=True,
            verified=True,
            remote_reason=ErrorCode.PAIRING_CLOSED.description,
        )
    ]
    assert window.failures == 0  # the viewer had the right code


def test_wrong_secret_fails_and_locks_the_window() -> None:
    device = Device()
    window = device.open_window(max_failures=3)
    good = device.payload()
    for attempt in range(1, 4):
        wire = pair(device, X25519PrivateKey.generate(), secret=bytes(16))
        # The viewer finds out from the reply and tells the device, which counts the failure.
        assert wire.viewer_events == [Closed(ErrorCode.PAIRING_FAILED, by_peer=False, verified=True)]
        assert wire.device_events == [Closed(ErrorCode.PAIRING_FAILED, by_peer=True, verified=False)]
        assert window.failures == attempt
    assert window.state is WindowState.LOCKED
    wire = Wire(ViewerChannel.for_pairing(X25519PrivateKey.generate(), good, "Bob"), device.channel())
    wire.start()
    assert closed(wire.viewer_events).code is ErrorCode.PAIRING_CLOSED
    assert device.memory.peers == {}


def test_undecryptable_first_pairing_message_counts_as_a_failure() -> None:
    device = Device()
    window = device.open_window()
    viewer = ViewerChannel.for_pairing(X25519PrivateKey.generate(), device.payload(), "Mallory")
    channel = device.channel()
    channel.feed(viewer.start())
    outputs = channel.feed(Frame(FrameType.TRANSPORT, bytes(40)).encode())
    assert outputs == [
        SendFrame(Frame.error(ErrorCode.PAIRING_FAILED).encode()),
        Closed(ErrorCode.PAIRING_FAILED, by_peer=False, verified=True),
    ]
    assert window.failures == 1


def test_abandoned_pairing_handshake_counts_as_a_failure() -> None:
    # Each reply lets its recipient test guesses of the secret offline, so each one is counted.
    device = Device()
    window = device.open_window()
    channel = device.channel()
    channel.feed(ViewerChannel.for_pairing(X25519PrivateKey.generate(), device.payload(), "M").start())
    assert channel.connection_lost() == [Closed(None, by_peer=True, verified=False)]
    assert window.failures == 1
    assert channel.connection_lost() == []
    assert window.failures == 1


def test_a_failed_store_ends_the_pairing_with_internal() -> None:
    class FullDirectory(MemoryDirectory):
        def add(self, name: str, public_key: bytes) -> MemoryPeer:
            raise OSError(28, "No space left on device")

    device = Device(FullDirectory())
    window = device.open_window()
    wire = pair(device, X25519PrivateKey.generate())
    assert closed(wire.viewer_events).code is ErrorCode.INTERNAL
    assert window.state is WindowState.OPEN  # the owner can try again


def test_ping_is_answered_and_bye_closes_both_ends() -> None:
    device, viewer_key, _ = paired_device()
    wire = session(device, viewer_key)
    wire.viewer_send(Ping(41))
    assert wire.viewer_events[-1] == Received(Pong(41))
    assert isinstance(wire.device_events[0], Authenticated)
    wire.device_send(Ping(7))
    assert wire.device_events[-1] == Received(Pong(7))

    wire.to_device(sent(wire.viewer.close()[0]))
    assert wire.viewer.is_closed
    assert closed(wire.device_events) == Closed(None, by_peer=True, verified=True)
    with pytest.raises(ChannelClosedError):
        wire.device.send(Ping(1))


def test_send_checks_state_and_direction() -> None:
    device, viewer_key, _ = paired_device()
    viewer = ViewerChannel.for_session(viewer_key, device.public_key)
    with pytest.raises(RuntimeError, match="not authenticated"):
        viewer.send(Offer(SDP_OFFER))
    with pytest.raises(RuntimeError, match="start"):
        viewer.feed(Frame.error(ErrorCode.INTERNAL).encode())
    wire = session(device, viewer_key)
    with pytest.raises(ValueError, match="does not send"):
        wire.viewer.send(Paired("a" * 16, "x"))
    with pytest.raises(ValueError, match="does not send"):
        wire.viewer.send(Pair("x"))
    wire.viewer_send(Offer(SDP_OFFER))
    with pytest.raises(ValueError, match="does not send"):
        wire.device.send(Keyframe())
    with pytest.raises(RuntimeError, match="already"):
        wire.viewer.start()


def test_a_message_from_the_wrong_end_closes_the_channel() -> None:
    device, viewer_key, _ = paired_device()
    wire = session(device, viewer_key)
    wire.viewer_send(Offer(SDP_OFFER))
    forged = wire.device._encrypt(Keyframe())  # only a viewer asks for keyframes
    wire.to_viewer(forged)
    assert closed(wire.viewer_events).code is ErrorCode.BAD_MESSAGE


def test_session_cannot_start_with_a_pair_message() -> None:
    device, viewer_key, _ = paired_device()
    wire = session(device, viewer_key)
    wire.to_device(wire.viewer._encrypt(Pair("again")))
    assert wire.device_events == [Closed(ErrorCode.BAD_MESSAGE, by_peer=False, verified=True)]


def test_tampering_ends_only_that_channel() -> None:
    device, viewer_key, _ = paired_device()
    first, second = session(device, viewer_key), session(device, viewer_key)
    first.viewer_send(Offer(SDP_OFFER))
    second.viewer_send(Offer(SDP_OFFER))
    frame = bytearray(first.viewer.send(Keyframe()))
    frame[-1] ^= 1
    first.to_device(bytes(frame))
    assert closed(first.device_events).code is ErrorCode.BAD_MESSAGE
    assert closed(first.viewer_events) == Closed(
        ErrorCode.BAD_MESSAGE, by_peer=True, verified=True, remote_reason=ErrorCode.BAD_MESSAGE.description
    )
    second.viewer_send(Keyframe())
    assert second.device_events[-1] == Received(Keyframe())


def test_plaintext_error_after_authentication_is_marked_unverified() -> None:
    device, viewer_key, _ = paired_device()
    wire = session(device, viewer_key)
    wire.to_viewer(Frame.error(ErrorCode.DEVICE_UNAVAILABLE).encode())
    assert closed(wire.viewer_events) == Closed(ErrorCode.DEVICE_UNAVAILABLE, by_peer=True, verified=False)


def test_viewer_rejects_a_reply_it_did_not_cause() -> None:
    device, viewer_key, _ = paired_device()
    # Without the device's private key an impostor cannot even read the hello.
    impostor = Device(device.directory)
    wire = Wire(ViewerChannel.for_session(viewer_key, device.public_key), impostor.channel())
    wire.start()
    assert wire.viewer_events == [Closed(ErrorCode.BAD_MESSAGE, by_peer=True, verified=False)]
    # A genuine reply to another handshake does not complete this one.
    viewer = ViewerChannel.for_session(viewer_key, device.public_key)
    viewer.start()
    other_reply = device.channel().feed(ViewerChannel.for_session(viewer_key, device.public_key).start())
    assert viewer.feed(sent(other_reply[0])) == [
        SendFrame(Frame.error(ErrorCode.BAD_MESSAGE).encode()),
        Closed(ErrorCode.BAD_MESSAGE, by_peer=False, verified=True),
    ]


def test_pairing_url_id_must_match_its_key() -> None:
    device = Device()
    device.open_window()
    payload = device.payload()
    forged = PairingPayload("a" * 16, payload.device_key, payload.secret, 0, (), 8080)
    with pytest.raises(ProtocolError, match="device id"):
        ViewerChannel.for_pairing(X25519PrivateKey.generate(), forged, "Bob")
    with pytest.raises(ProtocolError):
        ViewerChannel.for_pairing(X25519PrivateKey.generate(), payload, "\x1b[2J")
    with pytest.raises(ProtocolError):
        DeviceChannel(device.key, device.directory, lambda: None, "")


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def forms(secret: bytes) -> list[bytes]:
    """The ways a leaked value could appear in a frame."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def test_a_relay_never_sees_signaling_or_keys_in_clear(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    device, viewer_key = Device(), X25519PrivateKey.generate()
    window = device.open_window()
    relay_log: list[bytes] = []
    wire = pair(device, viewer_key)
    relay_log += wire.frames
    wire = session(device, viewer_key, relay_log)
    wire.viewer_send(Offer(SDP_OFFER))
    wire.device_send(Answer(SDP_ANSWER))
    wire.viewer_send(Ice(CANDIDATE, "0", 0))
    wire.device_send(Ice(CANDIDATE.replace("198.51.100.7", "203.0.113.9"), "0", 0))
    assert isinstance(wire.viewer_events[-1], Received)

    secrets = [
        window.secret,
        psk_from_secret(window.secret),
        private_bytes(viewer_key),
        private_bytes(device.key),
        public_bytes(viewer_key),  # IK encrypts the initiator's static key
    ]
    texts = [
        SDP_OFFER,
        SDP_ANSWER,
        CANDIDATE,
        "198.51.100.7",
        "203.0.113.9",
        "a=fingerprint",
        "ice-pwd",
        "Anna's phone",
    ]
    needles = [form for secret in secrets for form in forms(secret)] + [t.encode() for t in texts]
    assert len(relay_log) == 10
    for frame in relay_log:
        for needle in needles:
            assert needle not in frame
    logged = caplog.text
    for needle in needles[:-1]:
        assert needle.decode("latin-1") not in logged


def test_failures_log_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    device, viewer_key = Device(), X25519PrivateKey.generate()
    window = device.open_window()
    pair(device, X25519PrivateKey.generate(), secret=bytes(16))  # wrong secret
    attacker = device.channel()
    attacker.feed(ViewerChannel.for_pairing(viewer_key, device.payload(), "M").start())
    attacker.feed(Frame(FrameType.TRANSPORT, b"\x00" * 40).encode())
    pair(device, viewer_key)
    wire = session(device, viewer_key)
    damaged = bytearray(wire.viewer.send(Offer(SDP_OFFER)))
    damaged[-1] ^= 1
    wire.to_device(bytes(damaged))
    session(device, X25519PrivateKey.generate())  # not paired
    device.channel().feed(b"\x04{'t': 'offer', 'sdp': 'a=ice-pwd:x'}" + bytes(20))
    assert "failed" in caplog.text
    secrets = [window.secret, window.psk, private_bytes(viewer_key), private_bytes(device.key)]
    secrets += [public_bytes(viewer_key)]
    for secret in secrets:
        for form in forms(secret):
            assert form.decode("latin-1") not in caplog.text
    assert "ice-pwd" not in caplog.text
    assert "fingerprint" not in caplog.text


def test_reprs_hide_keys_and_content() -> None:
    device, viewer_key, _ = paired_device()
    wire = session(device, viewer_key)
    wire.viewer_send(Offer(SDP_OFFER))
    shown = repr([wire.viewer, wire.device, *wire.viewer_events, *wire.device_events])
    shown += repr(SendFrame(wire.viewer.send(Offer(SDP_OFFER))))
    for secret in (public_bytes(viewer_key), device.public_key, private_bytes(viewer_key)):
        assert secret.hex() not in shown
        assert repr(secret)[2:-1] not in shown
    assert "a=fingerprint" not in shown


def test_with_the_real_keystore(tmp_path: Path) -> None:
    keystore = Keystore.open(tmp_path / "keys")
    device, viewer_key = Device(keystore), X25519PrivateKey.generate()
    live = LiveChannels()
    keystore.add_listener(lambda event, peer: _on_keystore_event(live, event, peer))
    device.open_window()
    wire = pair(device, viewer_key, "Anna's  phone")
    (authenticated,) = wire.device_events
    assert isinstance(authenticated, Authenticated)
    assert isinstance(authenticated.peer, Peer)
    assert authenticated.peer.name == "Anna's phone"  # cleaned by the keystore
    assert Keystore.open(tmp_path / "keys").find_by_key(public_bytes(viewer_key)) is not None

    wire = session(device, viewer_key)
    wire.viewer_send(Offer(SDP_OFFER))
    assert wire.device.peer is not None
    live.add(wire.device, wire.deliver_device_outputs)
    keystore.revoke(wire.device.peer.peer_id)
    assert closed(wire.viewer_events).code is ErrorCode.REVOKED
    assert closed(session(device, viewer_key).viewer_events).code is ErrorCode.NOT_PAIRED


def _on_keystore_event(live: LiveChannels, event: PeerEvent, peer: Peer) -> None:
    if event == "revoked":
        live.close_peer(peer.peer_id)
