"""Conformance of petcamd.secure.noise against the cacophony test vectors.

Each role is played by our code alone against the recorded messages of the other side, so a
mistake shared by both ends of our own implementation cannot hide here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.secure.noise import HandshakeState, Pattern, public_bytes

VECTORS_PATH = Path(__file__).parent / "data" / "noise-cacophony-subset.json"
SUPPORTED = {pattern.value: pattern for pattern in Pattern}


@dataclass(frozen=True)
class Vector:
    pattern: Pattern
    raw: dict[str, Any]

    def key(self, name: str) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(bytes.fromhex(self.raw[name]))

    def hex(self, name: str) -> bytes:
        return bytes.fromhex(self.raw[name])

    def psk(self, side: str) -> bytes | None:
        psks: list[str] = self.raw.get(f"{side}_psks", [])
        assert len(psks) <= 1, "IKpsk2 takes exactly one psk"
        return bytes.fromhex(psks[0]) if psks else None

    @property
    def messages(self) -> list[tuple[bytes, bytes]]:
        return [(bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])) for m in self.raw["messages"]]


def load_vectors() -> list[Vector]:
    data = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return [
        Vector(SUPPORTED[raw["protocol_name"]], raw)
        for raw in data["vectors"]
        if raw["protocol_name"] in SUPPORTED
    ]


VECTORS = load_vectors()


def vector_id(vector: Vector) -> str:
    return str(vector.raw["protocol_name"])


def test_every_supported_protocol_has_vectors() -> None:
    assert {vector.pattern for vector in VECTORS} == set(Pattern)


def make_side(vector: Vector, role: str) -> HandshakeState:
    if role == "initiator":
        return HandshakeState.initiator(
            vector.pattern,
            vector.key("init_static"),
            vector.hex("init_remote_static"),
            prologue=vector.hex("init_prologue"),
            psk=vector.psk("init"),
            ephemeral=vector.key("init_ephemeral"),
        )
    # The responder gets its psk late, after checking message 1, as the pairing code does.
    return HandshakeState.responder(
        vector.pattern,
        vector.key("resp_static"),
        prologue=vector.hex("resp_prologue"),
        ephemeral=vector.key("resp_ephemeral"),
    )


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_vector(vector: Vector, role: str) -> None:
    side = make_side(vector, role)
    messages = vector.messages
    handshake_len = len(vector.pattern.messages)
    assert len(messages) > handshake_len, "vector must include transport messages"

    for index, (payload, ciphertext) in enumerate(messages[:handshake_len]):
        if side.is_my_turn:
            assert side.write_message(payload).hex() == ciphertext.hex(), f"handshake message {index}"
        else:
            assert side.read_message(ciphertext) == payload, f"handshake message {index}"
            if role == "responder" and index == 0:
                assert side.remote_static == public_bytes(vector.key("init_static"))
                psk = vector.psk("resp")
                if psk is not None:
                    side.set_psk(psk)

    assert side.complete
    assert side.handshake_hash.hex() == vector.raw["handshake_hash"]
    transport = side.transport()
    assert transport.handshake_hash == side.handshake_hash
    peer_static = "resp_static" if role == "initiator" else "init_static"
    assert transport.remote_static == public_bytes(vector.key(peer_static))

    # After the handshake the sides alternate, initiator first.
    for index, (payload, ciphertext) in enumerate(messages[handshake_len:], start=handshake_len):
        we_send = (index % 2 == 0) == (role == "initiator")
        if we_send:
            assert transport.encrypt(payload).hex() == ciphertext.hex(), f"transport message {index}"
        else:
            assert transport.decrypt(ciphertext) == payload, f"transport message {index}"
