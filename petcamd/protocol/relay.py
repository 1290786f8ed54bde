"""The relay's envelope: how devices and viewers talk to petcam-relay (docs/relay.md).

One WebSocket binary message is one envelope: a type byte and a body. The relay reads envelopes
and nothing else: the petcamd frame inside ``DATA`` (docs/protocol.md) is opaque to it, checked for
length only and forwarded byte for byte. Connection ids let one device WebSocket carry many viewer
sessions, and one viewer WebSocket reach several devices.

A device proves to the relay that it holds the private key behind its routing id with a
challenge-response (:func:`prove_registration`, :func:`check_registration`): X25519 is not a
signature scheme, so the proof is a MAC keyed by a Diffie-Hellman between the device key and an
ephemeral key the relay makes for that one connection, bound to the relay's origin.

Parsing is strict (exact lengths, known types, ids in range) and every malformed envelope raises
:class:`EnvelopeError`, a :class:`ProtocolError`. Reprs never show frame bytes or key material.
"""

from __future__ import annotations

import enum
import hmac
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from petcamd.protocol.messages import MAX_FRAME_LEN, ProtocolError

__all__ = [
    "CONN_ID_LEN",
    "DATA_HEADER_LEN",
    "DEVICE_ID_LEN",
    "KEY_LEN",
    "MAX_CONN_ID",
    "MAX_ENVELOPE_LEN",
    "MAX_ORIGIN_LEN",
    "NONCE_LEN",
    "PROOF_LEN",
    "Challenge",
    "Close",
    "CloseCode",
    "CloseReason",
    "Connect",
    "Data",
    "Envelope",
    "EnvelopeError",
    "EnvelopeType",
    "IceServerEntry",
    "IceServers",
    "Open",
    "Register",
    "Registered",
    "RelayOriginError",
    "check_registration",
    "decode_envelope",
    "prove_registration",
    "relay_origin",
    "websocket_origin",
]

KEY_LEN = 32
NONCE_LEN = 32
PROOF_LEN = 32
CONN_ID_LEN = 4
DEVICE_ID_LEN = 16
MAX_CONN_ID = 2**32 - 1
MAX_ORIGIN_LEN = 255
DATA_HEADER_LEN = 1 + CONN_ID_LEN
MAX_ENVELOPE_LEN = DATA_HEADER_LEN + MAX_FRAME_LEN
"""Largest envelope: a DATA carrying the largest frame. A relay caps WebSocket messages at this."""

_DEVICE_ID = re.compile(rb"[a-z2-7]{16}")
_ORIGIN_CHARS = re.compile(rb"[!-~]+")  # printable ASCII, no space
_PROOF_LABEL = b"petcamd relay registration v1"


class EnvelopeError(ProtocolError):
    """A malformed envelope; the message never quotes the peer's bytes."""


class RelayOriginError(ProtocolError):
    """The relay's challenge names another origin than the one the device connected to."""


class EnvelopeType(enum.IntEnum):
    """The first byte of an envelope; distinct from petcamd frame types (0x01-0x05) on purpose."""

    CHALLENGE = 0x10
    """Relay to device, first message on /device: nonce, relay ephemeral key, relay origin."""
    REGISTER = 0x11
    """Device to relay: the device's public key and its proof of the private key."""
    REGISTERED = 0x12
    """Relay to device: the id is routed to this connection now."""
    CONNECT = 0x20
    """Viewer to relay: open a session with a device, under a connection id the viewer picks."""
    OPEN = 0x21
    """Relay to device: a viewer session opened, under a connection id the relay picked."""
    DATA = 0x30
    """Either way: one opaque petcamd frame of a session."""
    CLOSE = 0x31
    """Either way: a session ended (or ends), with a reason."""
    ICE_SERVERS = 0x40
    """Relay to device or viewer: STUN/TURN servers with short-lived TURN credentials."""


class CloseReason(enum.IntEnum):
    """Why a session ended, in a CLOSE envelope. Receivers map unknown numbers to UNKNOWN."""

    CLOSED = 0
    """The other end closed the session or went away. Clients always send this one."""
    DEVICE_UNAVAILABLE = 1
    """No device is registered under the id (or it just disconnected or was replaced)."""
    TOO_MANY_VIEWERS = 2
    """The device has as many relayed sessions as the relay allows."""
    TOO_MANY_SESSIONS = 3
    """This viewer connection has as many sessions as the relay allows."""
    OVERLOADED = 4
    """The other end could not take this session's messages fast enough; retry later."""
    UNKNOWN = 0xFFFF
    """Receiver side only: a reason this version does not know."""

    @classmethod
    def from_wire(cls, value: int) -> CloseReason:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class CloseCode(enum.IntEnum):
    """WebSocket close codes the relay uses when it ends a whole connection."""

    NORMAL = 1000
    GOING_AWAY = 1001
    """The relay is shutting down; reconnect with backoff."""
    MESSAGE_TOO_BIG = 1009
    """An envelope exceeded the relay's size limit."""
    INTERNAL_ERROR = 1011
    BAD_ENVELOPE = 4000
    """Malformed envelope, text message, or an envelope type not allowed on this endpoint."""
    REGISTRATION_REFUSED = 4001
    """The registration proof did not verify."""
    REGISTRATION_TIMEOUT = 4002
    """No REGISTER in time after the CHALLENGE."""
    REPLACED = 4003
    """A newer connection proved the same device key; this one is obsolete."""
    IDLE_TIMEOUT = 4004
    """A viewer connection had no session open for too long."""
    RATE_LIMITED = 4029
    """Too many messages or bytes, from this connection or its address; back off."""


def _conn_id(value: int) -> None:
    if isinstance(value, bool) or not 1 <= value <= MAX_CONN_ID:
        raise EnvelopeError("connection id must be 1 to 2^32-1")


def _device_id(value: str) -> None:
    if not _DEVICE_ID.fullmatch(value.encode("ascii", "replace")):
        raise EnvelopeError("device id must be 16 lowercase base32 characters")


@dataclass(frozen=True, slots=True, repr=False)
class Challenge:
    """Relay to device. ``relay_key`` is an X25519 public key made for this connection alone."""

    TYPE: ClassVar[EnvelopeType] = EnvelopeType.CHALLENGE
    nonce: bytes
    relay_key: bytes
    origin: str

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_LEN or len(self.relay_key) != KEY_LEN:
            raise EnvelopeError("CHALLENGE nonce and key must be 32 bytes each")
        raw = self.origin.encode("ascii", "replace")
        if not 1 <= len(raw) <= MAX_ORIGIN_LEN or not _ORIGIN_CHARS.fullmatch(raw):
            raise EnvelopeError(f"CHALLENGE origin must be 1 to {MAX_ORIGIN_LEN} printable ASCII characters")

    def encode(self) -> bytes:
        return bytes((self.TYPE,)) + self.nonce + self.relay_key + self.origin.encode("ascii")

    @classmethod
    def _decode(cls, body: bytes) -> Challenge:
        if len(body) < NONCE_LEN + KEY_LEN + 1:
            raise EnvelopeError("CHALLENGE too short")
        try:
            origin = body[NONCE_LEN + KEY_LEN :].decode("ascii")
        except UnicodeDecodeError:
            raise EnvelopeError("CHALLENGE origin is not ASCII") from None
        return cls(body[:NONCE_LEN], body[NONCE_LEN : NONCE_LEN + KEY_LEN], origin)

    def __repr__(self) -> str:
        return f"Challenge(origin={self.origin!r})"


@dataclass(frozen=True, slots=True, repr=False)
class Register:
    """Device to relay: its X25519 public key (the device id is that key's key id) and the proof."""

    TYPE: ClassVar[EnvelopeType] = EnvelopeType.REGISTER
    device_key: bytes
    proof: bytes

    def __post_init__(self) -> None:
        if len(self.device_key) != KEY_LEN or len(self.proof) != PROOF_LEN:
            raise EnvelopeError("REGISTER key and proof must be 32 bytes each")

    def encode(self) -> bytes:
        return bytes((self.TYPE,)) + self.device_key + self.proof

    @classmethod
    def _decode(cls, body: bytes) -> Register:
        if len(body) != KEY_LEN + PROOF_LEN:
            raise EnvelopeError(f"REGISTER body must be {KEY_LEN + PROOF_LEN} bytes")
        return cls(body[:KEY_LEN], body[KEY_LEN:])

    def __repr__(self) -> str:
        return "Register(...)"


@dataclass(frozen=True, slots=True)
class Registered:
    TYPE: ClassVar[EnvelopeType] = EnvelopeType.REGISTERED
    device_id: str

    def __post_init__(self) -> None:
        _device_id(self.device_id)

    def encode(self) -> bytes:
        return bytes((self.TYPE,)) + self.device_id.encode("ascii")

    @classmethod
    def _decode(cls, body: bytes) -> Registered:
        if len(body) != DEVICE_ID_LEN:
            raise EnvelopeError(f"REGISTERED body must be {DEVICE_ID_LEN} bytes")
        return cls(body.decode("ascii", "replace"))


@dataclass(frozen=True, slots=True)
class Connect:
    """Viewer to relay. ``conn_id`` is the viewer's own name for the session on this connection."""

    TYPE: ClassVar[EnvelopeType] = EnvelopeType.CONNECT
    conn_id: int
    device_id: str

    def __post_init__(self) -> None:
        _conn_id(self.conn_id)
        _device_id(self.device_id)

    def encode(self) -> bytes:
        return (
            bytes((self.TYPE,)) + self.conn_id.to_bytes(CONN_ID_LEN, "big") + self.device_id.encode("ascii")
        )

    @classmethod
    def _decode(cls, body: bytes) -> Connect:
        if len(body) != CONN_ID_LEN + DEVICE_ID_LEN:
            raise EnvelopeError(f"CONNECT body must be {CONN_ID_LEN + DEVICE_ID_LEN} bytes")
        return cls(int.from_bytes(body[:CONN_ID_LEN], "big"), body[CONN_ID_LEN:].decode("ascii", "replace"))


@dataclass(frozen=True, slots=True)
class Open:
    TYPE: ClassVar[EnvelopeType] = EnvelopeType.OPEN
    conn_id: int

    def __post_init__(self) -> None:
        _conn_id(self.conn_id)

    def encode(self) -> bytes:
        return bytes((self.TYPE,)) + self.conn_id.to_bytes(CONN_ID_LEN, "big")

    @classmethod
    def _decode(cls, body: bytes) -> Open:
        if len(body) != CONN_ID_LEN:
            raise EnvelopeError(f"OPEN body must be {CONN_ID_LEN} bytes")
        return cls(int.from_bytes(body, "big"))


@dataclass(frozen=True, slots=True, repr=False)
class Data:
    """One petcamd frame of session ``conn_id``; the relay never looks inside ``frame``."""

    TYPE: ClassVar[EnvelopeType] = EnvelopeType.DATA
    conn_id: int
    frame: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _conn_id(self.conn_id)
        if not 1 <= len(self.frame) <= MAX_FRAME_LEN:
            raise EnvelopeError(f"DATA frame must be 1 to {MAX_FRAME_LEN} bytes")

    def encode(self) -> bytes:
        return encode_data(self.conn_id, self.frame)

    @classmethod
    def _decode(cls, body: bytes) -> Data:
        if len(body) <= CONN_ID_LEN:
            raise EnvelopeError("DATA without a frame")
        return cls(int.from_bytes(body[:CONN_ID_LEN], "big"), body[CONN_ID_LEN:])

    def __repr__(self) -> str:
        return f"Data(conn_id={self.conn_id}, {len(self.frame)} bytes)"


@dataclass(frozen=True, slots=True)
class Close:
    TYPE: ClassVar[EnvelopeType] = EnvelopeType.CLOSE
    conn_id: int
    reason: CloseReason = CloseReason.CLOSED

    def __post_init__(self) -> None:
        _conn_id(self.conn_id)

    def encode(self) -> bytes:
        return (
            bytes((self.TYPE,))
            + self.conn_id.to_bytes(CONN_ID_LEN, "big")
            + int(self.reason).to_bytes(2, "big")
        )

    @classmethod
    def _decode(cls, body: bytes) -> Close:
        if len(body) != CONN_ID_LEN + 2:
            raise EnvelopeError(f"CLOSE body must be {CONN_ID_LEN + 2} bytes")
        reason = CloseReason.from_wire(int.from_bytes(body[CONN_ID_LEN:], "big"))
        return cls(int.from_bytes(body[:CONN_ID_LEN], "big"), reason)


@dataclass(frozen=True, slots=True)
class IceServerEntry:
    """One server of an ICE_SERVERS envelope, as RTCIceServer names its fields."""

    url: str
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


_ICE_URL = re.compile(r"(stun|stuns|turn|turns):\S+")


def is_ice_url(url: str) -> bool:
    """A STUN or TURN URL (RFC 7064, 7065) without whitespace: the one rule for every ICE server
    list (the daemon's config, the relay's, and what the relay sends)."""
    return _ICE_URL.fullmatch(url) is not None


@dataclass(frozen=True, slots=True, repr=False)
class IceServers:
    """Relay to device (after REGISTERED, and again before an OPEN once half their life is over)
    and to viewer (first message on /viewer, and again before a session when stale).

    The body is a small JSON document: ``{"servers": [{"urls", "username", "credential"}],
    "expires_at": unix seconds}``; TURN credentials follow coturn's REST scheme and are useless
    after ``expires_at``. Nothing in it is secret beyond that lifetime, and it tells the relay's
    clients only what the relay's operator chose to offer.
    """

    TYPE: ClassVar[EnvelopeType] = EnvelopeType.ICE_SERVERS
    servers: tuple[IceServerEntry, ...]
    expires_at: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.servers) <= _MAX_ICE_SERVERS:
            raise EnvelopeError(f"ICE_SERVERS must name 1 to {_MAX_ICE_SERVERS} servers")
        for server in self.servers:
            for text in (server.url, server.username or "", server.credential or ""):
                if len(text) > _MAX_ICE_TEXT or not _ICE_TEXT.fullmatch(
                    text.encode("ascii", "replace") or b"x"
                ):
                    raise EnvelopeError("ICE_SERVERS entries must be short printable ASCII")
            if not is_ice_url(server.url):
                raise EnvelopeError("ICE_SERVERS urls must be stun:, stuns:, turn: or turns: URLs")
            if server.url.startswith("turn") and (server.username is None or server.credential is None):
                raise EnvelopeError("a TURN server needs a username and a credential")

    def encode(self) -> bytes:
        servers = [{"urls": s.url, "username": s.username, "credential": s.credential} for s in self.servers]
        body = json.dumps({"servers": servers, "expires_at": self.expires_at}, separators=(",", ":"))
        return bytes((self.TYPE,)) + body.encode("ascii")

    @classmethod
    def _decode(cls, body: bytes) -> IceServers:
        try:
            document = json.loads(body.decode("ascii"))
            entries = tuple(
                IceServerEntry(
                    str(e["urls"]), _optional_text(e.get("username")), _optional_text(e.get("credential"))
                )
                for e in document["servers"]
            )
            expires_at = document["expires_at"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
            raise EnvelopeError("ICE_SERVERS body is not the expected JSON document") from None
        if isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise EnvelopeError("ICE_SERVERS expires_at must be an integer")
        return cls(entries, expires_at)

    def __repr__(self) -> str:
        return f"IceServers({[s.url for s in self.servers]}, expires_at={self.expires_at})"


_MAX_ICE_SERVERS = 8
_MAX_ICE_TEXT = 512
_ICE_TEXT = re.compile(rb"[ -~]+")


def _optional_text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


Envelope = Challenge | Register | Registered | Connect | Open | Data | Close | IceServers

_DECODERS: dict[int, Callable[[bytes], Envelope]] = {
    cls.TYPE: cls._decode for cls in (Challenge, Register, Registered, Connect, Open, Data, Close, IceServers)
}


def encode_data(conn_id: int, frame: bytes) -> bytes:
    """A DATA envelope without building the dataclass: the relay's hot path."""
    return bytes((EnvelopeType.DATA,)) + conn_id.to_bytes(CONN_ID_LEN, "big") + frame


def decode_envelope(data: bytes) -> Envelope:
    """Parse one WebSocket binary message. Raises EnvelopeError for anything malformed."""
    if not data:
        raise EnvelopeError("empty envelope")
    if len(data) > MAX_ENVELOPE_LEN:
        raise EnvelopeError(f"envelope larger than {MAX_ENVELOPE_LEN} bytes")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise EnvelopeError(f"unknown envelope type 0x{data[0]:02x}")
    return decoder(bytes(data[1:]))


def relay_origin(url: str) -> str:
    """The origin a relay URL names, as both ends write it into the registration proof.

    ``wss://Relay.Example.org:443/device`` and ``https://relay.example.org/`` both give
    ``https://relay.example.org``: scheme (ws becomes http, wss https), lowercase host, and the
    port only when it is not the scheme's default. Raises ValueError for anything else.
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL") from None
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError("the scheme must be https, wss, http or ws")
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None or parts.password is not None:
        raise ValueError("the URL needs a host and no user name or password")
    if ":" in host:
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    origin = f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"
    if len(origin) > MAX_ORIGIN_LEN:
        raise ValueError("origin too long")
    return origin


def websocket_origin(url: str) -> str:
    """The ws(s) origin of a relay or page URL (https → wss): where its WebSockets live."""
    origin = relay_origin(url)
    return "wss" + origin[len("https") :] if origin.startswith("https:") else "ws" + origin[len("http") :]


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _proof(shared: bytes, challenge: Challenge, device_key: bytes) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=challenge.nonce, info=_PROOF_LABEL).derive(shared)
    origin = challenge.origin.encode("ascii")
    transcript = (
        _PROOF_LABEL + challenge.nonce + challenge.relay_key + device_key + bytes((len(origin),)) + origin
    )
    return hmac.digest(key, transcript, "sha256")


def prove_registration(
    device_private: X25519PrivateKey, challenge: Challenge, expected_origin: str
) -> Register:
    """The device's answer to a CHALLENGE.

    ``expected_origin`` is ``relay_origin(<the relay URL the device connected to>)``. Raises
    RelayOriginError when the challenge names another origin (a relay passing on another relay's
    challenge, or a relay whose public_origin is misconfigured), and EnvelopeError when the relay
    key is unusable.
    """
    if challenge.origin != expected_origin:
        raise RelayOriginError(
            f"the relay says it is {challenge.origin!r}, but the device connected to {expected_origin!r}"
        )
    try:
        shared = device_private.exchange(X25519PublicKey.from_public_bytes(challenge.relay_key))
    except ValueError:
        raise EnvelopeError("CHALLENGE relay key is not a usable X25519 key") from None
    device_key = _raw_public(device_private)
    return Register(device_key, _proof(shared, challenge, device_key))


def check_registration(relay_private: X25519PrivateKey, challenge: Challenge, register: Register) -> bool:
    """Whether ``register`` proves possession of the private key of ``register.device_key``.

    ``relay_private`` and ``challenge`` belong to this connection alone, so an answer recorded
    elsewhere never verifies here.
    """
    try:
        shared = relay_private.exchange(X25519PublicKey.from_public_bytes(register.device_key))
    except ValueError:  # low-order point: the shared secret would be all zeros
        return False
    return hmac.compare_digest(_proof(shared, challenge, register.device_key), register.proof)
