"""The one wire format shared by the daemon, the relay and every viewer (docs/protocol.md).

Two layers. Outer *frames* are what a relay or the LAN server sees: one WebSocket binary message
each, a type byte and a body (a Noise handshake or transport message, or a plaintext error code).
Inner *messages* travel only inside Noise transport payloads: UTF-8 JSON objects with a ``t``
field, chosen because a browser viewer can produce and check them with nothing but JSON.parse.

Parsing is strict (sizes first, then exact lengths, UTF-8, no duplicate keys, no NaN, exact field
types) and every malformed input raises :class:`ProtocolError`. Error messages never quote what the
peer sent, and reprs never show SDP, ICE candidates or key material.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, Self

__all__ = [
    "HANDSHAKE_REPLY_LEN",
    "HELLO_LEN",
    "MAX_CANDIDATE_LEN",
    "MAX_FRAME_LEN",
    "MAX_INNER_LEN",
    "MAX_MID_LEN",
    "MAX_MLINE_INDEX",
    "MAX_NAME_LEN",
    "MAX_REASON_LEN",
    "MAX_SDP_LEN",
    "MAX_SEQ",
    "MAX_TRANSPORT_LEN",
    "MESSAGE_TYPES",
    "MIN_TRANSPORT_LEN",
    "PROLOGUE_PREFIX",
    "PROTOCOL_VERSION",
    "Answer",
    "Bye",
    "ErrorCode",
    "ErrorMessage",
    "Frame",
    "FrameType",
    "Ice",
    "Keyframe",
    "Message",
    "Offer",
    "Pair",
    "Paired",
    "Ping",
    "Pong",
    "ProtocolError",
    "Role",
    "decode_message",
    "encode_message",
    "prologue",
]

PROTOCOL_VERSION = 1
PROLOGUE_PREFIX = b"petcamd/1"

_NOISE_TAG_LEN = 16
_NOISE_KEY_LEN = 32
# Message 1 of IK / IKpsk2 with an empty payload: e, encrypted s (+tag), empty payload's tag.
HELLO_LEN = _NOISE_KEY_LEN + (_NOISE_KEY_LEN + _NOISE_TAG_LEN) + _NOISE_TAG_LEN
# Message 2 with an empty payload: e, empty payload's tag.
HANDSHAKE_REPLY_LEN = _NOISE_KEY_LEN + _NOISE_TAG_LEN

MAX_FRAME_LEN = 65535
"""Largest frame (type byte included): a relay can cap WebSocket messages at this."""
MAX_TRANSPORT_LEN = MAX_FRAME_LEN - 1
MAX_INNER_LEN = MAX_TRANSPORT_LEN - _NOISE_TAG_LEN
"""Largest encoded inner message, so that its transport frame fits in MAX_FRAME_LEN."""
MIN_TRANSPORT_LEN = _NOISE_TAG_LEN + 2  # the shortest JSON object, "{}", plus the tag

MAX_SDP_LEN = 32 * 1024
"""In UTF-8 bytes. The encoded message must also fit in MAX_INNER_LEN (escapes count)."""
MAX_NAME_LEN = 64
MAX_CANDIDATE_LEN = 1024
MAX_MID_LEN = 64
MAX_MLINE_INDEX = 65535
MAX_REASON_LEN = 128
MAX_SEQ = 2**53 - 1
"""Largest integer a JavaScript number holds exactly."""

_PEER_ID = re.compile(r"[a-z2-7]{16}")
_ASCII_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# SDP is CRLF-separated text: no C0 or C1 control characters but tab, CR and LF.
_SDP_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class ProtocolError(ValueError):
    """A frame or message is malformed or breaks a limit; the message never quotes the input."""


class ErrorCode(enum.IntEnum):
    """Why a channel ended. Sent as a 16-bit number; receivers map unknown numbers to UNKNOWN."""

    UNKNOWN = 0
    BAD_MESSAGE = 1
    NOT_PAIRED = 2
    PAIRING_CLOSED = 3
    PAIRING_FAILED = 4
    TOO_MANY_VIEWERS = 5
    DEVICE_UNAVAILABLE = 6
    REVOKED = 7
    RATE_LIMITED = 8
    INTERNAL = 9

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN

    @property
    def description(self) -> str:
        """Short owner-readable text; also the ``reason`` the daemon sends with the code."""
        return _ERROR_DESCRIPTIONS[self]


_ERROR_DESCRIPTIONS = {
    ErrorCode.UNKNOWN: "an error this version does not know",
    ErrorCode.BAD_MESSAGE: "malformed, out-of-order or undecryptable message",
    ErrorCode.NOT_PAIRED: "this viewer is not paired with the camera",
    ErrorCode.PAIRING_CLOSED: "no pairing window is open (expired, already used, locked or cancelled)",
    ErrorCode.PAIRING_FAILED: "pairing failed: wrong pairing code or camera key",
    ErrorCode.TOO_MANY_VIEWERS: "the camera serves as many viewers as it can",
    ErrorCode.DEVICE_UNAVAILABLE: "the camera is not reachable",
    ErrorCode.REVOKED: "this viewer's pairing was revoked",
    ErrorCode.RATE_LIMITED: "too many attempts; try again later",
    ErrorCode.INTERNAL: "internal error on the camera",
}


class FrameType(enum.IntEnum):
    """The first byte of every frame. New protocol versions use new numbers."""

    PAIR_HELLO = 0x01
    """Noise_IKpsk2 message 1, viewer to device."""
    SESSION_HELLO = 0x02
    """Noise_IK message 1, viewer to device."""
    HANDSHAKE_REPLY = 0x03
    """Noise message 2 of either handshake, device to viewer."""
    TRANSPORT = 0x04
    """A Noise transport message carrying one inner message, either direction."""
    ERROR = 0x05
    """Plaintext, unauthenticated: a 16-bit big-endian error code and nothing else."""


_BODY_LENGTHS: dict[FrameType, tuple[int, int]] = {
    FrameType.PAIR_HELLO: (HELLO_LEN, HELLO_LEN),
    FrameType.SESSION_HELLO: (HELLO_LEN, HELLO_LEN),
    FrameType.HANDSHAKE_REPLY: (HANDSHAKE_REPLY_LEN, HANDSHAKE_REPLY_LEN),
    FrameType.TRANSPORT: (MIN_TRANSPORT_LEN, MAX_TRANSPORT_LEN),
    FrameType.ERROR: (2, 2),
}


def prologue(hello: FrameType) -> bytes:
    """Noise prologue of a handshake: binds the version and the hello type into the keys."""
    if hello not in (FrameType.PAIR_HELLO, FrameType.SESSION_HELLO):
        raise ValueError("only hello frames start a handshake")
    return PROLOGUE_PREFIX + bytes((hello,))


@dataclass(frozen=True, slots=True, repr=False)
class Frame:
    type: FrameType
    body: bytes

    def __post_init__(self) -> None:
        low, high = _BODY_LENGTHS[self.type]
        if not low <= len(self.body) <= high:
            if low == high:
                raise ProtocolError(f"{self.type.name} body must be {low} bytes, not {len(self.body)}")
            raise ProtocolError(f"{self.type.name} body must be {low} to {high} bytes, not {len(self.body)}")

    @classmethod
    def error(cls, code: ErrorCode) -> Frame:
        return cls(FrameType.ERROR, int(code).to_bytes(2, "big"))

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        if not data:
            raise ProtocolError("empty frame")
        if len(data) > MAX_FRAME_LEN:
            raise ProtocolError(f"frame larger than {MAX_FRAME_LEN} bytes")
        try:
            frame_type = FrameType(data[0])
        except ValueError:
            raise ProtocolError(f"unknown frame type 0x{data[0]:02x}") from None
        return cls(frame_type, bytes(data[1:]))

    def encode(self) -> bytes:
        return bytes((self.type,)) + self.body

    @property
    def error_code(self) -> ErrorCode:
        if self.type is not FrameType.ERROR:
            raise ValueError("not an ERROR frame")
        return ErrorCode.from_wire(int.from_bytes(self.body, "big"))

    def __repr__(self) -> str:
        if self.type is FrameType.ERROR:
            return f"Frame(ERROR, {self.error_code.name})"
        return f"Frame({self.type.name}, {len(self.body)} bytes)"


class Role(enum.Flag):
    """Which end may send a message type; a channel rejects messages from the wrong end."""

    VIEWER = enum.auto()
    DEVICE = enum.auto()
    EITHER = VIEWER | DEVICE


class Message:
    """Base of the inner message types; ``TYPE`` is the ``t`` field on the wire."""

    __slots__ = ()
    TYPE: ClassVar[str]
    SENT_BY: ClassVar[Role]

    def _fields(self) -> dict[str, object]:
        return {}

    @classmethod
    def _from_fields(cls, _values: _Fields) -> Self:
        """Types with no fields need nothing from the document."""
        return cls()


class _Fields:
    """Typed access to a decoded JSON object; missing or mistyped fields raise ProtocolError."""

    def __init__(self, kind: str, obj: dict[str, Any]) -> None:
        self._kind = kind
        self._obj = obj

    def _fail(self, key: str, expected: str) -> NoReturn:
        raise ProtocolError(f"{self._kind}: field {key!r} must be {expected}")

    def text(self, key: str) -> str:
        value = self._obj.get(key)
        if not isinstance(value, str):
            self._fail(key, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self._obj.get(key) is None else self.text(key)

    def integer(self, key: str) -> int:
        value = self._obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            self._fail(key, "an integer")
        return value

    def optional_integer(self, key: str) -> int | None:
        return None if self._obj.get(key) is None else self.integer(key)


def _check_unicode(kind: str, key: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{kind}: {key} is not valid Unicode") from None


def _check_name(kind: str, key: str, value: str) -> None:
    _check_unicode(kind, key, value)
    if not value.strip():
        raise ProtocolError(f"{kind}: {key} must not be empty")
    if len(value) > MAX_NAME_LEN:
        raise ProtocolError(f"{kind}: {key} longer than {MAX_NAME_LEN} characters")
    if not value.isprintable():
        raise ProtocolError(f"{kind}: {key} contains control or formatting characters")


def _check_sdp(kind: str, sdp: str) -> None:
    _check_unicode(kind, "sdp", sdp)
    if not sdp:
        raise ProtocolError(f"{kind}: empty SDP")
    if len(sdp.encode("utf-8")) > MAX_SDP_LEN:
        raise ProtocolError(f"{kind}: SDP larger than {MAX_SDP_LEN} bytes")
    if _SDP_FORBIDDEN.search(sdp):
        raise ProtocolError(f"{kind}: SDP contains control characters")


def _check_seq(kind: str, seq: int) -> None:
    if not 0 <= seq <= MAX_SEQ:
        raise ProtocolError(f"{kind}: seq out of range")


@dataclass(frozen=True, slots=True)
class Pair(Message):
    """Viewer's first transport message when pairing: the name the owner will see in `peers`."""

    TYPE: ClassVar[str] = "pair"
    SENT_BY: ClassVar[Role] = Role.VIEWER
    name: str

    def __post_init__(self) -> None:
        _check_name(self.TYPE, "name", self.name)

    def _fields(self) -> dict[str, object]:
        return {"name": self.name}

    @classmethod
    def _from_fields(cls, fields: _Fields) -> Self:
        return cls(fields.text("name"))


@dataclass(frozen=True, slots=True)
class Paired(Message):
    """Device's answer to ``pair``: the viewer's id in the keystore and the device's name."""

    TYPE: ClassVar[str] = "paired"
    SENT_BY: ClassVar[Role] = Role.DEVICE
    peer_id: str
    name: str

    def __post_init__(self) -> None:
        if not _PEER_ID.fullmatch(self.peer_id):
            raise ProtocolError("paired: peerId must be 16 lowercase base32 characters")
        _check_name(self.TYPE, "name", self.name)

    def _fields(self) -> dict[str, object]:
        return {"peerId": self.peer_id, "name": self.name}

    @classmethod
    def _from_fields(cls, fields: _Fields) -> Self:
        return cls(fields.text("peerId"), fields.text("name"))


@dataclass(frozen=True, slots=True, repr=False)
class Offer(Message):
    TYPE: ClassVar[str] = "offer"
    SENT_BY: ClassVar[Role] = Role.EITHER
    sdp: str

    def __post_init__(self) -> None:
        _check_sdp(self.TYPE, self.sdp)

    def __repr__(self) -> str:  # SDP holds addresses and DTLS fingerprints: never in logs
        return f"Offer(<{len(self.sdp)} characters of SDP>)"

    def _fields(self) -> dict[str, object]:
        return {"sdp": self.sdp}

    @classmethod
    def _from_fields(cls, fields: _Fields) -> Self:
        return cls(fields.text("sdp"))


@dataclass(frozen=True, slots=True, repr=False)
class Answer(Message):
    TYPE: ClassVar[str] = "answer"
    SENT_BY: ClassVar[Role] = Role.EITHER
    sdp: str

    def __post_init__(self) -> None:
        _check_sdp(self.TYPE, self.sdp)

    def __repr__(self) -> str:
        return f"Answer(<{len(self.sdp)} characters of SDP>)"

    def _fields(self) -> dict[str, object]:
        return {"sdp": self.sdp}

    @classmethod
    def _from_fields(cls, fields: _Fields) -> Self:
        return cls(fields.text("sdp"))


@dataclass(frozen=True, slots=True, repr=False)
class Ice(Message):
    """A trickled ICE candidate (RTCIceCandidateInit); an empty candidate means end-of-candidates."""

    TYPE: ClassVar[str] = "ice"
    SENT_BY: ClassVar[Role] = Role.EITHER
    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None

    def __post_init__(self) -> None:
        # Printable ASCII only: no line break can smuggle extra lines into the SDP it joins.
        if len(self.candidate) > MAX_CANDIDATE_LEN or not _ASCII_PRINTABLE.fullmatch(self.candidate):
            raise ProtocolError(f"ice: candidate must be printable ASCII, at most {MAX_CANDIDATE_LEN}")
        if self.sdp_mid is not None and (
            len(self.sdp_mid) > MAX_MID_LEN or not _ASCII_PRINTABLE.fullmatch(self.sdp_mid)
        ):
            raise ProtocolError(f"ice: sdpMid must be printable ASCII, at most {MAX_MID_LEN}")
        if self.sdp_mline_index is not None and not 0 <= self.sdp_mline_index <= MAX_MLINE_INDEX:
            raise ProtocolError("ice: sdpMLineIndex out of range")

    @property
    def end_of_candidates(self) -> bool:
        return not self.candidate

    def __repr__(self) -> str:  # candidates hold the viewer's addresses
        what = "end-of-candidates" if self.end_of_candidates else f"<{len(self.candidate)} characters>"
        return f"Ice({what}, sdp_mid={self.sdp_mid!r}, sdp_mline_index={self.sdp_mline_index!r})"

    def _fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"candidate": self.candidate}
        if self.sdp_mid is not None:
            fields["sdpMid"] = self.sdp_mid
        if self.sdp_mline_index is not None:
            fields["sdpMLineIndex"] = self.sdp_mline_index
        return fields

    @classmethod
    def _from_fields(cls, fields: _Fields) -> Self:
        return cls(
            fields.text("candidate"), fields.optional_text("sdpMid"), fields.optional_integer("sdpMLineIndex")
        )


@dataclass(frozen=True, slots=True)
class Keyframe(Message):
    """The viewer wants a fresh IDR (aiortc does not forward RTCP PLI to a passthrough track)."""

    TYPE: ClassVar[str] = "keyframe"
    SENT_BY: ClassVar[Role] = Role.VIEWER


@dataclass(frozen=True, slots=True)
class Bye(Message):
    """Orderly end of the channel."""

    TYPE: ClassVar[str] = "bye"
    SENT_BY: ClassVar[Role] = Role.EITHER


@dataclass(frozen=True, slots=True)
class ErrorMessage(Message):
    """Authenticated end of the channel with a reason; the sender closes right after."""

    TYPE: ClassVar[str] = "error"
    SENT_BY: ClassVar[Role] = Role.EITHER
    code: ErrorCode
    reason: str = field(default="")

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFFFF:
            raise ProtocolError("error: code out of range")
        _check_unicode(self.TYPE, "reason", self.reason)
        if len(self.reason) > MAX_REASON_LEN or not self.reason.isprintable():
            raise ProtocolError(f"error: reason must be printable, at most {MAX_REASON_LEN} characters")

    def _fields(self) -> dict[str, object]:
        return {"code": int(self.code), "reason": self.reason}

    @classmethod
    def _from_fields(cls, fields: _Fields) -> Self:
        code = fields.integer("code")
        if not 0 <= code <= 0xFFFF:
            raise ProtocolError("error: code out of range")
        reason = fields.optional_text("reason")
        return cls(ErrorCode.from_wire(code), reason or "")


@dataclass(frozen=True, slots=True)
class _Sequenced(Message):
    """The shape ping and pong share: a sequence number, sent by either end."""

    SENT_BY: ClassVar[Role] = Role.EITHER
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.TYPE, self.seq)

    def _fields(self) -> dict[str, object]:
        return {"seq": self.seq}

    @classmethod
    def _from_fields(cls, fields: _Fields) -> Self:
        return cls(fields.integer("seq"))


@dataclass(frozen=True, slots=True)
class Ping(_Sequenced):
    """Liveness check; the other end answers with a ``pong`` carrying the same ``seq``."""

    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Pong(_Sequenced):
    TYPE: ClassVar[str] = "pong"


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Pair, Paired, Offer, Answer, Ice, Keyframe, Bye, ErrorMessage, Ping, Pong)
}


def encode_message(message: Message) -> bytes:
    """Compact UTF-8 JSON, ``t`` first. Raises ProtocolError if it exceeds MAX_INNER_LEN."""
    document: dict[str, object] = {"t": message.TYPE, **message._fields()}
    data = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(data) > MAX_INNER_LEN:
        raise ProtocolError(f"{message.TYPE}: encoded message larger than {MAX_INNER_LEN} bytes")
    return data


def decode_message(data: bytes) -> Message:
    """Parse one inner message; unknown fields are ignored, unknown types rejected."""
    if len(data) > MAX_INNER_LEN:
        raise ProtocolError(f"message larger than {MAX_INNER_LEN} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("message is not UTF-8") from None
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError):
        raise ProtocolError("message is not valid JSON") from None
    if not isinstance(document, dict):
        raise ProtocolError("message is not a JSON object")
    kind = document.get("t")
    if not isinstance(kind, str):
        raise ProtocolError("message has no type field 't'")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise ProtocolError("unknown message type")
    return cls._from_fields(_Fields(kind, document))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ProtocolError("duplicate key in message")
    return document


def _no_constant(_name: str) -> NoReturn:
    raise ProtocolError("NaN and Infinity are not allowed")
