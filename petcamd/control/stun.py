"""The few STUN/TURN messages the connection test sends and reads (RFC 5389, 5766, 5780).

Written here rather than borrowed from aioice: aioice's ``stun`` module changed its parse and
integrity API between 0.8 (Debian bookworm) and 0.13, and its TURN client of 0.8 has no TLS. A
Binding, an Allocate and a Refresh need a header, a handful of attributes and MESSAGE-INTEGRITY,
which fit in one small module that reads the same on every dependency set.

Decoding is strict about the framing (cookie, lengths, padding, FINGERPRINT) and lenient about
attributes: unknown ones are kept as bytes and only the first of each type counts.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "HEADER_LEN",
    "REQUESTED_UDP",
    "Attr",
    "Endpoint",
    "Kind",
    "Message",
    "Method",
    "StunError",
    "decode",
    "encode",
    "long_term_key",
    "message_length",
    "pack_address",
]

COOKIE = 0x2112A442
HEADER_LEN = 20
_COOKIE_BYTES = COOKIE.to_bytes(4, "big")
_FINGERPRINT_XOR = 0x5354554E
_INTEGRITY_LEN = 20
REQUESTED_UDP = bytes((17, 0, 0, 0))
"""REQUESTED-TRANSPORT for a UDP relay, the only kind TURN for WebRTC asks for."""

Endpoint = tuple[str, int]
"""An IP address (text form) and a port."""


class StunError(ValueError):
    """Bytes that are not a well-formed STUN message."""


class Method(enum.IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004


class Kind(enum.IntEnum):
    """The message class (RFC 5389 section 6); "class" is taken in Python."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(enum.IntEnum):
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    LIFETIME = 0x000D
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_TRANSPORT = 0x0019
    XOR_MAPPED_ADDRESS = 0x0020
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


_XOR_ATTRS = frozenset({Attr.XOR_MAPPED_ADDRESS, Attr.XOR_RELAYED_ADDRESS})


def _message_type(method: int, kind: Kind) -> int:
    # The class bits sit at positions 4 and 8, between the method's bits (RFC 5389 figure 3).
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((kind & 0b01) << 4)
        | ((kind & 0b10) << 7)
    )


def _split_type(value: int) -> tuple[int, Kind]:
    method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2)
    kind = Kind(((value >> 4) & 0b01) | ((value >> 7) & 0b10))
    return method, kind


def _pad(length: int) -> int:
    return -length % 4


def _with_length(header: bytes, length: int) -> bytes:
    return header[:2] + length.to_bytes(2, "big") + header[4:]


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The long-term credential key, MD5(username ":" realm ":" password) as RFC 5389 fixes it.

    MD5 is the protocol's choice, not ours; SASLprep is left out (ASCII credentials pass through
    it unchanged, and TURN REST credentials are ASCII).
    """
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(text, usedforsecurity=False).digest()


def pack_address(endpoint: Endpoint, transaction_id: bytes | None = None) -> bytes:
    """A (XOR-)MAPPED-ADDRESS value; XORed when ``transaction_id`` is given."""
    ip = ipaddress.ip_address(endpoint[0])
    family = 1 if ip.version == 4 else 2
    port, raw = endpoint[1], ip.packed
    if transaction_id is not None:
        port ^= COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, _COOKIE_BYTES + transaction_id, strict=False))
    return struct.pack("!BBH", 0, family, port) + raw


def _unpack_address(value: bytes, transaction_id: bytes | None) -> Endpoint:
    if len(value) < 4:
        raise StunError("address attribute too short")
    _, family, port = struct.unpack("!BBH", value[:4])
    raw = value[4:]
    if (family, len(raw)) not in ((1, 4), (2, 16)):
        raise StunError("address attribute with an unknown family or a wrong length")
    if transaction_id is not None:
        port ^= COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, _COOKIE_BYTES + transaction_id, strict=False))
    return str(ipaddress.ip_address(raw)), port


def encode(
    method: int,
    kind: Kind,
    attributes: Sequence[tuple[int, bytes]] = (),
    *,
    transaction_id: bytes | None = None,
    integrity_key: bytes | None = None,
    fingerprint: bool = True,
) -> bytes:
    """One message; MESSAGE-INTEGRITY (when a key is given) and FINGERPRINT come last, as required."""
    tid = transaction_id if transaction_id is not None else os.urandom(12)
    if len(tid) != 12:
        raise ValueError("a transaction id is 12 bytes")
    body = b"".join(
        struct.pack("!HH", attr, len(value)) + value + bytes(_pad(len(value))) for attr, value in attributes
    )
    header = struct.pack("!HH", _message_type(method, kind), 0) + _COOKIE_BYTES + tid
    if integrity_key is not None:
        covered = _with_length(header, len(body) + 4 + _INTEGRITY_LEN) + body
        mac = hmac.digest(integrity_key, covered, "sha1")
        body += struct.pack("!HH", Attr.MESSAGE_INTEGRITY, _INTEGRITY_LEN) + mac
    if fingerprint:
        covered = _with_length(header, len(body) + 8) + body
        crc = (binascii.crc32(covered) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
        body += struct.pack("!HHI", Attr.FINGERPRINT, 4, crc)
    return _with_length(header, len(body)) + body


def message_length(header: bytes) -> int:
    """The whole length of the message whose first 20 bytes are ``header`` (framing over TCP)."""
    if len(header) < HEADER_LEN or header[0] & 0xC0 or header[4:8] != _COOKIE_BYTES:
        raise StunError("not a STUN header")
    return HEADER_LEN + int.from_bytes(header[2:4], "big")


@dataclass(frozen=True, slots=True)
class Message:
    method: int
    kind: Kind
    transaction_id: bytes
    attributes: dict[int, bytes] = field(default_factory=dict)
    _covered: bytes | None = field(default=None, repr=False)
    """The bytes MESSAGE-INTEGRITY covers, its length field already adjusted."""

    def address(self, attr: Attr) -> Endpoint | None:
        value = self.attributes.get(attr)
        if value is None:
            return None
        return _unpack_address(value, self.transaction_id if attr in _XOR_ATTRS else None)

    def mapped(self) -> Endpoint | None:
        """XOR-MAPPED-ADDRESS, or the old MAPPED-ADDRESS from a server that sends only that."""
        return self.address(Attr.XOR_MAPPED_ADDRESS) or self.address(Attr.MAPPED_ADDRESS)

    def text(self, attr: Attr) -> str | None:
        value = self.attributes.get(attr)
        return None if value is None else value.decode("utf-8", "replace")

    def uint(self, attr: Attr) -> int | None:
        value = self.attributes.get(attr)
        return None if value is None or len(value) != 4 else int.from_bytes(value, "big")

    def error(self) -> tuple[int, str] | None:
        """ERROR-CODE as (code, reason phrase)."""
        value = self.attributes.get(Attr.ERROR_CODE)
        if value is None or len(value) < 4:
            return None
        return (value[2] & 0x07) * 100 + value[3], value[4:].decode("utf-8", "replace")

    def integrity_ok(self, key: bytes) -> bool:
        if self._covered is None:
            return False
        expected = hmac.digest(key, self._covered, "sha1")
        return hmac.compare_digest(expected, self.attributes[Attr.MESSAGE_INTEGRITY])


def decode(data: bytes) -> Message:
    """Parse one message. Raises StunError when the bytes are not one well-formed STUN message."""
    length = message_length(data)
    if length != len(data) or length % 4:
        raise StunError("STUN length does not match the message")
    msg_type = int.from_bytes(data[:2], "big")
    method, kind = _split_type(msg_type)
    tid = data[8:HEADER_LEN]
    attributes: dict[int, bytes] = {}
    covered: bytes | None = None
    pos = HEADER_LEN
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated attribute header")
        attr, size = struct.unpack("!HH", data[pos : pos + 4])
        end = pos + 4 + size
        if end > len(data):
            raise StunError("attribute runs past the message")
        value = data[pos + 4 : end]
        prefix = _with_length(data[:HEADER_LEN], end - HEADER_LEN) + data[HEADER_LEN:pos]
        if attr == Attr.FINGERPRINT:
            crc = (binascii.crc32(prefix) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
            if size != 4 or int.from_bytes(value, "big") != crc:
                raise StunError("FINGERPRINT does not match")
        # Past MESSAGE-INTEGRITY only FINGERPRINT counts: nothing else there is authenticated.
        if covered is None or attr == Attr.FINGERPRINT:
            attributes.setdefault(attr, value)
        if attr == Attr.MESSAGE_INTEGRITY and covered is None:
            if size != _INTEGRITY_LEN:
                raise StunError("MESSAGE-INTEGRITY must be 20 bytes")
            covered = prefix
        pos = end + _pad(size)
    return Message(method, kind, tid, attributes, covered)
