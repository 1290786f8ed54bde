"""Property tests: every message survives encoding and the channel; no damaged frame gets through."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from petcamd.protocol.messages import (
    MAX_CANDIDATE_LEN,
    MAX_MID_LEN,
    MAX_MLINE_INDEX,
    MAX_NAME_LEN,
    MAX_REASON_LEN,
    MAX_SEQ,
    Answer,
    Bye,
    ErrorCode,
    ErrorMessage,
    Ice,
    Keyframe,
    Message,
    Offer,
    Pair,
    Paired,
    Ping,
    Pong,
    ProtocolError,
    Role,
    decode_message,
    encode_message,
)
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
from petcamd.secure.noise import public_bytes
from tests.test_channel import Device, Wire, pair, session

# str.isprintable: no "Other" characters, and no separators but the plain space.
printable = st.text(
    st.one_of(
        st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")), st.just(" ")
    )
)
names = printable.filter(lambda name: 0 < len(name) <= MAX_NAME_LEN and bool(name.strip()))
ascii_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E))
sdps = st.text(
    st.one_of(st.characters(blacklist_categories=("Cc", "Cs")), st.sampled_from("\r\n\t")),
    min_size=1,
    max_size=2000,
)
seqs = st.integers(0, MAX_SEQ)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Pair, names),
    st.builds(Paired, st.from_regex(r"[a-z2-7]{16}", fullmatch=True), names),
    st.builds(Offer, sdps),
    st.builds(Answer, sdps),
    st.builds(
        Ice,
        ascii_printable.filter(lambda c: len(c) <= MAX_CANDIDATE_LEN),
        st.none() | ascii_printable.filter(lambda m: len(m) <= MAX_MID_LEN),
        st.none() | st.integers(0, MAX_MLINE_INDEX),
    ),
    st.just(Keyframe()),
    st.just(Bye()),
    st.builds(ErrorMessage, st.sampled_from(ErrorCode), printable.filter(lambda r: len(r) <= MAX_REASON_LEN)),
    st.builds(Ping, seqs),
    st.builds(Pong, seqs),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    assert decode_message(encode_message(message)) == message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_message(data)


# One device with one paired viewer, shared by the channel properties.
DEVICE = Device()
VIEWER_KEY = X25519PrivateKey.generate()
DEVICE.open_window()
pair(DEVICE, VIEWER_KEY)


@settings(max_examples=60, deadline=None)
@given(messages, st.booleans())
def test_every_message_crosses_the_channel(message: Message, from_viewer: bool) -> None:
    wire = session(DEVICE, VIEWER_KEY)
    wire.viewer_send(Ping(0))  # authenticates the viewer
    sender, receiver = (wire.viewer, wire.device) if from_viewer else (wire.device, wire.viewer)
    role = Role.VIEWER if from_viewer else Role.DEVICE
    if not message.SENT_BY & role or isinstance(message, Pair | Paired):
        try:
            sender.send(message)
        except ValueError:
            return
        raise AssertionError("send accepted a message this end may not send")
    outputs = receiver.feed(sender.send(message))
    if isinstance(message, Ping):
        assert len(outputs) == 1
        assert isinstance(outputs[0], SendFrame)
        assert sender.feed(outputs[0].data) == [Received(Pong(message.seq))]
    elif isinstance(message, Bye):
        assert outputs == [Closed(None, by_peer=True, verified=True)]
    elif isinstance(message, ErrorMessage):
        assert outputs == [Closed(message.code, by_peer=True, verified=True, remote_reason=message.reason)]
    else:
        assert outputs == [Received(message)]


@dataclass
class Damage:
    """What the relay did to the chosen frame, and where the events stood at that moment."""

    index: int
    mutate: Callable[[bytes], bytes]
    to_device: bool | None = None
    original: bytes = b""
    events_before: int = 0


def tamper(data: st.DataObject) -> Callable[[bytes], bytes]:
    kind = data.draw(st.sampled_from(["flip", "truncate", "append"]), label="kind")
    position = data.draw(st.integers(0, 2**32), label="position")
    suffix = data.draw(st.binary(min_size=1, max_size=64), label="suffix")

    def mutate(frame: bytes) -> bytes:
        if kind == "flip":
            bit = position % (len(frame) * 8)
            mutated = bytearray(frame)
            mutated[bit // 8] ^= 1 << (bit % 8)
            return bytes(mutated)
        if kind == "truncate":
            return frame[: position % len(frame)]
        return frame + suffix

    return mutate


def run_exchange(pairing: bool, damage: Damage) -> Wire:
    """Pair or open a session and exchange a few messages through a relay that damages one frame."""
    device = Device()
    viewer_key = X25519PrivateKey.generate()
    device.open_window()
    if pairing:
        viewer = ViewerChannel.for_pairing(viewer_key, device.payload(), "Anna")
    else:
        device.memory.add("Anna", public_bytes(viewer_key))
        viewer = ViewerChannel.for_session(viewer_key, device.public_key)

    def relay(index: int, frame: bytes, to_device: bool) -> bytes:
        if index != damage.index:
            return frame
        damage.to_device, damage.original = to_device, frame
        damage.events_before = len(wire.device_events if to_device else wire.viewer_events)
        return damage.mutate(frame)

    wire = Wire(viewer, device.channel(), relay=relay)
    wire.start()
    steps: list[Callable[[], None]] = [
        lambda: wire.viewer_send(Offer("v=0\r\n")),
        lambda: wire.device_send(Answer("v=0\r\n")),
        lambda: wire.viewer_send(Ice("candidate:1 1 udp 1 192.0.2.1 9 typ host", "0", 0)),
        lambda: wire.viewer_send(Keyframe()),
    ]
    for step in steps:
        if wire.viewer.is_closed or wire.device.is_closed:
            break
        step()
    return wire


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.integers(0, 7), st.data())
def test_any_damaged_frame_closes_the_channel_cleanly(pairing: bool, index: int, data: st.DataObject) -> None:
    frames_in_full_exchange = 8 if pairing else 6
    damage = Damage(index % frames_in_full_exchange, tamper(data))
    wire = run_exchange(pairing, damage)
    assert damage.to_device is not None
    assert damage.mutate(damage.original) != damage.original
    receiver = wire.device if damage.to_device else wire.viewer
    events = wire.device_events if damage.to_device else wire.viewer_events
    after = events[damage.events_before :]
    # The damaged frame produced nothing but the end of the channel that received it...
    assert after, "the damaged frame was silently accepted"
    assert not any(isinstance(event, Authenticated | DeviceReady | Received) for event in after)
    assert isinstance(after[-1], Closed)
    assert not after[-1].by_peer
    assert after[-1].code in (ErrorCode.BAD_MESSAGE, ErrorCode.PAIRING_FAILED)
    assert receiver.is_closed
    # ...and the other end learned of it (the relay delivered the error).
    other_events = wire.viewer_events if damage.to_device else wire.device_events
    assert isinstance(other_events[-1], Closed)
    assert wire.viewer.is_closed
    assert wire.device.is_closed


frames_of_any_shape = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda kind, body: bytes((kind,)) + body,
        st.integers(0, 8),
        st.one_of(
            st.binary(min_size=96, max_size=96),
            st.binary(min_size=48, max_size=48),
            st.binary(min_size=2, max_size=2),
            st.binary(min_size=18, max_size=200),
        ),
    ),
)


def no_progress(outputs: list[Output]) -> None:
    assert outputs, "a frame must get a reaction"
    assert isinstance(outputs[-1], Closed)
    assert not any(isinstance(output, Authenticated | DeviceReady | Received) for output in outputs)
    for output in outputs[:-1]:
        assert isinstance(output, SendFrame)


@settings(max_examples=300, deadline=None)
@given(frames_of_any_shape, st.booleans())
def test_random_first_frames_never_crash(frame: bytes, window_open: bool) -> None:
    window = DEVICE.open_window() if window_open else None
    channel = DeviceChannel(DEVICE.key, DEVICE.directory, lambda: window, "Cam")
    no_progress(channel.feed(frame))
    assert channel.feed(frame) == []

    viewer = ViewerChannel.for_session(VIEWER_KEY, DEVICE.public_key)
    viewer.start()
    no_progress(viewer.feed(frame))


@settings(max_examples=150, deadline=None)
@given(frames_of_any_shape, st.booleans())
def test_random_frames_end_an_open_session(frame: bytes, to_device: bool) -> None:
    wire = session(DEVICE, VIEWER_KEY)
    wire.viewer_send(Ping(0))
    receiver = wire.device if to_device else wire.viewer
    no_progress(receiver.feed(frame))
