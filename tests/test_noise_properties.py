"""Property tests for petcamd.secure.noise: round trips, tampering, wrong keys, replay and limits."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from petcamd.secure.noise import (
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    MAX_PLAINTEXT_LEN,
    CipherState,
    HandshakeState,
    NoiseError,
    Pattern,
    Transport,
    public_bytes,
)

keys = st.binary(min_size=32, max_size=32).map(X25519PrivateKey.from_private_bytes)
psks = st.binary(min_size=32, max_size=32)
patterns = st.sampled_from(Pattern)
payloads = st.binary(max_size=256)
# (sent by the initiator?, payload)
exchanges = st.lists(st.tuples(st.booleans(), payloads), max_size=8)

MESSAGE_NAMES = ["handshake1", "handshake2", "transport_i2r", "transport_r2i"]


@dataclass
class Session:
    """Two ends that completed a handshake, plus the messages seen on the way."""

    initiator: HandshakeState
    responder: HandshakeState
    msg1: bytes
    msg2: bytes

    @property
    def to_responder(self) -> Transport:
        return self.initiator.transport()

    @property
    def to_initiator(self) -> Transport:
        return self.responder.transport()


def pair(
    pattern: Pattern,
    initiator_key: X25519PrivateKey,
    responder_key: X25519PrivateKey,
    *,
    psk: bytes = b"\x07" * 32,
    prologue: bytes = b"petcamd test",
) -> tuple[HandshakeState, HandshakeState]:
    use_psk = psk if pattern.uses_psk else None
    initiator = HandshakeState.initiator(
        pattern, initiator_key, public_bytes(responder_key), prologue=prologue, psk=use_psk
    )
    responder = HandshakeState.responder(pattern, responder_key, prologue=prologue, psk=use_psk)
    return initiator, responder


def handshake(pattern: Pattern, initiator_key: X25519PrivateKey, responder_key: X25519PrivateKey) -> Session:
    initiator, responder = pair(pattern, initiator_key, responder_key)
    msg1 = initiator.write_message(b"hello")
    assert responder.read_message(msg1) == b"hello"
    msg2 = responder.write_message(b"welcome")
    assert initiator.read_message(msg2) == b"welcome"
    return Session(initiator, responder, msg1, msg2)


@settings(max_examples=100, deadline=None)
@given(
    pattern=patterns,
    initiator_key=keys,
    responder_key=keys,
    psk=psks,
    prologue=st.binary(max_size=64),
    payload1=payloads,
    payload2=payloads,
    exchange=exchanges,
)
def test_round_trip(
    pattern: Pattern,
    initiator_key: X25519PrivateKey,
    responder_key: X25519PrivateKey,
    psk: bytes,
    prologue: bytes,
    payload1: bytes,
    payload2: bytes,
    exchange: list[tuple[bool, bytes]],
) -> None:
    initiator, responder = pair(pattern, initiator_key, responder_key, psk=psk, prologue=prologue)
    assert (initiator.is_my_turn, responder.is_my_turn) == (True, False)
    unknown_yet = responder.remote_static
    assert unknown_yet is None

    assert responder.read_message(initiator.write_message(payload1)) == payload1
    assert responder.remote_static == public_bytes(initiator_key)
    assert (responder.is_my_turn, responder.complete) == (True, False)
    assert initiator.read_message(responder.write_message(payload2)) == payload2

    assert initiator.complete
    assert responder.complete
    assert initiator.handshake_hash == responder.handshake_hash
    to_responder, to_initiator = initiator.transport(), responder.transport()
    assert to_responder.remote_static == public_bytes(responder_key)
    assert to_initiator.remote_static == public_bytes(initiator_key)

    for from_initiator, payload in exchange:
        sender, receiver = (to_responder, to_initiator) if from_initiator else (to_initiator, to_responder)
        ciphertext = sender.encrypt(payload)
        assert len(ciphertext) == len(payload) + 16
        assert receiver.decrypt(ciphertext) == payload


@settings(max_examples=50, deadline=None)
@given(pattern=patterns, initiator_key=keys, responder_key=keys, payload=payloads)
def test_directions_use_separate_keys(
    pattern: Pattern, initiator_key: X25519PrivateKey, responder_key: X25519PrivateKey, payload: bytes
) -> None:
    session = handshake(pattern, initiator_key, responder_key)
    # Same nonce (0) in both directions: the ciphertexts differ only if the keys do.
    assert session.to_responder.encrypt(payload) != session.to_initiator.encrypt(payload)
    # A message cannot be reflected back to its sender.
    reflected = session.to_responder.encrypt(payload)
    with pytest.raises(NoiseError):
        session.to_responder.decrypt(reflected)


def tamper(data: st.DataObject, message: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "append"]), label="kind")
    if kind == "flip":
        bit = data.draw(st.integers(0, len(message) * 8 - 1), label="bit")
        mutated = bytearray(message)
        mutated[bit // 8] ^= 1 << (bit % 8)
        return bytes(mutated)
    if kind == "truncate":
        return message[: data.draw(st.integers(0, len(message) - 1), label="length")]
    return message + data.draw(st.binary(min_size=1, max_size=32), label="extra")


@settings(max_examples=200, deadline=None)
@given(
    pattern=patterns,
    initiator_key=keys,
    responder_key=keys,
    which=st.sampled_from(MESSAGE_NAMES),
    data=st.data(),
)
def test_tampering_is_rejected(
    pattern: Pattern,
    initiator_key: X25519PrivateKey,
    responder_key: X25519PrivateKey,
    which: str,
    data: st.DataObject,
) -> None:
    initiator, responder = pair(pattern, initiator_key, responder_key)
    msg1 = initiator.write_message(b"first")
    if which == "handshake1":
        with pytest.raises(NoiseError):
            responder.read_message(tamper(data, msg1))
        # A rejected message leaves the handshake dead, not half-advanced.
        with pytest.raises(NoiseError):
            responder.read_message(msg1)
        return
    responder.read_message(msg1)
    msg2 = responder.write_message(b"second")
    if which == "handshake2":
        with pytest.raises(NoiseError):
            initiator.read_message(tamper(data, msg2))
        assert not initiator.complete
        return
    initiator.read_message(msg2)
    sender, receiver = initiator.transport(), responder.transport()
    if which == "transport_r2i":
        sender, receiver = receiver, sender
    ciphertext = sender.encrypt(data.draw(payloads, label="payload"))
    with pytest.raises(NoiseError):
        receiver.decrypt(tamper(data, ciphertext))
    # A failed decryption does not move the nonce: the genuine message still opens.
    receiver.decrypt(ciphertext)


@settings(max_examples=50, deadline=None)
@given(initiator_key=keys, responder_key=keys, psk=psks, wrong_psk=psks)
def test_wrong_psk_fails(
    initiator_key: X25519PrivateKey, responder_key: X25519PrivateKey, psk: bytes, wrong_psk: bytes
) -> None:
    assume(psk != wrong_psk)
    initiator = HandshakeState.initiator(Pattern.IK_PSK2, initiator_key, public_bytes(responder_key), psk=psk)
    responder = HandshakeState.responder(Pattern.IK_PSK2, responder_key)
    responder.read_message(initiator.write_message(b""))
    responder.set_psk(wrong_psk)
    with pytest.raises(NoiseError):
        initiator.read_message(responder.write_message(b""))


@settings(max_examples=50, deadline=None)
@given(pattern=patterns, initiator_key=keys, responder_key=keys, other_key=keys)
def test_wrong_responder_key_fails(
    pattern: Pattern,
    initiator_key: X25519PrivateKey,
    responder_key: X25519PrivateKey,
    other_key: X25519PrivateKey,
) -> None:
    assume(public_bytes(other_key) != public_bytes(responder_key))
    initiator, _ = pair(pattern, initiator_key, other_key)
    _, responder = pair(pattern, initiator_key, responder_key)
    with pytest.raises(NoiseError):
        responder.read_message(initiator.write_message(b"who is there"))


@settings(max_examples=50, deadline=None)
@given(pattern=patterns, initiator_key=keys, responder_key=keys, payloads=st.lists(payloads, min_size=1))
def test_replayed_transport_message_fails(
    pattern: Pattern,
    initiator_key: X25519PrivateKey,
    responder_key: X25519PrivateKey,
    payloads: list[bytes],
) -> None:
    session = handshake(pattern, initiator_key, responder_key)
    sent = [session.to_responder.encrypt(payload) for payload in payloads]
    for ciphertext, payload in zip(sent, payloads, strict=True):
        assert session.to_initiator.decrypt(ciphertext) == payload
    for ciphertext in sent:
        with pytest.raises(NoiseError):
            session.to_initiator.decrypt(ciphertext)


def test_prologue_mismatch_fails() -> None:
    initiator_key, responder_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    initiator, _ = pair(Pattern.IK, initiator_key, responder_key, prologue=b"a")
    _, responder = pair(Pattern.IK, initiator_key, responder_key, prologue=b"b")
    with pytest.raises(NoiseError):
        responder.read_message(initiator.write_message(b""))


def test_patterns_do_not_interoperate() -> None:
    initiator_key, responder_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    initiator, _ = pair(Pattern.IK, initiator_key, responder_key)
    _, responder = pair(Pattern.IK_PSK2, initiator_key, responder_key)
    with pytest.raises(NoiseError):
        responder.read_message(initiator.write_message(b""))


@pytest.mark.parametrize("pattern", list(Pattern))
def test_handshake_size_limits(pattern: Pattern) -> None:
    initiator_key, responder_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()

    initiator, responder = pair(pattern, initiator_key, responder_key)
    with pytest.raises(NoiseError):
        initiator.write_message(bytes(MAX_MESSAGE_LEN))
    with pytest.raises(NoiseError):
        responder.read_message(bytes(MAX_MESSAGE_LEN + 1))

    # The largest payload that fits is accepted, and one byte more is refused without harm.
    initiator, responder = pair(pattern, initiator_key, responder_key)
    msg1_overhead = 32 + 48 + 16
    with pytest.raises(NoiseError):
        initiator.write_message(bytes(MAX_MESSAGE_LEN - msg1_overhead + 1))
    msg1 = initiator.write_message(bytes(MAX_MESSAGE_LEN - msg1_overhead))
    assert len(msg1) == MAX_MESSAGE_LEN
    responder.read_message(msg1)
    msg2_overhead = 32 + 16
    with pytest.raises(NoiseError):
        responder.write_message(bytes(MAX_MESSAGE_LEN - msg2_overhead + 1))
    msg2 = responder.write_message(bytes(MAX_MESSAGE_LEN - msg2_overhead))
    assert len(msg2) == MAX_MESSAGE_LEN
    initiator.read_message(msg2)
    assert initiator.complete


def test_transport_size_limits() -> None:
    session = handshake(Pattern.IK, X25519PrivateKey.generate(), X25519PrivateKey.generate())
    with pytest.raises(NoiseError):
        session.to_responder.encrypt(bytes(MAX_PLAINTEXT_LEN + 1))
    with pytest.raises(NoiseError):
        session.to_initiator.decrypt(bytes(MAX_MESSAGE_LEN + 1))
    largest = session.to_responder.encrypt(bytes(MAX_PLAINTEXT_LEN))
    assert len(largest) == MAX_MESSAGE_LEN
    assert session.to_initiator.decrypt(largest) == bytes(MAX_PLAINTEXT_LEN)


def test_nonce_exhaustion() -> None:
    sender, receiver = CipherState(), CipherState()
    sender.initialize_key(bytes(32))
    receiver.initialize_key(bytes(32))
    sender.set_nonce(MAX_NONCE - 1)
    receiver.set_nonce(MAX_NONCE - 1)
    last = sender.encrypt_with_ad(b"", b"last")
    assert receiver.decrypt_with_ad(b"", last) == b"last"
    with pytest.raises(NoiseError):
        sender.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"", last)


def test_low_order_ephemeral_is_rejected() -> None:
    responder_key = X25519PrivateKey.generate()
    responder = HandshakeState.responder(Pattern.IK, responder_key)
    # u = 0 is a point of small order: the shared secret would be all zeros.
    with pytest.raises(NoiseError):
        responder.read_message(bytes(32) + bytes(64))


def test_misuse_is_not_a_noise_error() -> None:
    initiator_key, responder_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    with pytest.raises(ValueError, match="no pre-shared key"):
        HandshakeState.responder(Pattern.IK, responder_key, psk=bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        HandshakeState.responder(Pattern.IK_PSK2, responder_key, psk=bytes(16))
    with pytest.raises(ValueError, match="public key"):
        HandshakeState.initiator(Pattern.IK, initiator_key, bytes(31))

    initiator, responder = pair(Pattern.IK_PSK2, initiator_key, responder_key)
    with pytest.raises(RuntimeError, match="turn"):
        responder.write_message(b"")
    with pytest.raises(RuntimeError, match="not complete"):
        initiator.transport()

    late = HandshakeState.responder(Pattern.IK_PSK2, responder_key, prologue=b"petcamd test")
    late.read_message(initiator.write_message(b""))
    with pytest.raises(RuntimeError, match="pre-shared key not set"):
        late.write_message(b"")
    late.set_psk(b"\x07" * 32)
    initiator.read_message(late.write_message(b""))
    assert late.complete
    assert initiator.handshake_hash == late.handshake_hash
    with pytest.raises(RuntimeError, match="already complete"):
        late.write_message(b"")
    with pytest.raises(RuntimeError, match="already complete"):
        late.set_psk(b"\x07" * 32)
