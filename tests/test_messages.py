"""The wire format: frames, inner messages, strict parsing and limits; and the doc's examples."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from petcamd.protocol.messages import (
    HANDSHAKE_REPLY_LEN,
    HELLO_LEN,
    MAX_CANDIDATE_LEN,
    MAX_FRAME_LEN,
    MAX_INNER_LEN,
    MAX_NAME_LEN,
    MAX_SDP_LEN,
    MAX_SEQ,
    MESSAGE_TYPES,
    Answer,
    Bye,
    ErrorCode,
    ErrorMessage,
    Frame,
    FrameType,
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
    prologue,
)
from tests.script_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n"

EXAMPLES: list[tuple[Message, str]] = [
    (Pair("Anna's phone"), '{"t":"pair","name":"Anna\'s phone"}'),
    (Paired("abcdefghijklmn23", "Kitchen"), '{"t":"paired","peerId":"abcdefghijklmn23","name":"Kitchen"}'),
    (Offer("v=0\r\n"), '{"t":"offer","sdp":"v=0\\r\\n"}'),
    (Answer("v=0\r\n"), '{"t":"answer","sdp":"v=0\\r\\n"}'),
    (
        Ice("candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host", "0", 0),
        '{"t":"ice","candidate":"candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host",'
        '"sdpMid":"0","sdpMLineIndex":0}',
    ),
    (Ice(""), '{"t":"ice","candidate":""}'),
    (Keyframe(), '{"t":"keyframe"}'),
    (Bye(), '{"t":"bye"}'),
    (ErrorMessage(ErrorCode.REVOKED, "revoked"), '{"t":"error","code":7,"reason":"revoked"}'),
    (Ping(9007199254740991), '{"t":"ping","seq":9007199254740991}'),
    (Pong(0), '{"t":"pong","seq":0}'),
    (Pair("Café ☕"), '{"t":"pair","name":"Café ☕"}'),
]


@pytest.mark.parametrize(("message", "wire"), EXAMPLES, ids=lambda value: repr(value)[:30])
def test_encoding_is_exact_and_round_trips(message: Message, wire: str) -> None:
    assert encode_message(message) == wire.encode("utf-8")
    assert decode_message(wire.encode("utf-8")) == message


def test_every_type_has_an_example_and_a_sender() -> None:
    assert {type(message).TYPE for message, _ in EXAMPLES} == set(MESSAGE_TYPES)
    assert Pair.SENT_BY is Role.VIEWER
    assert Keyframe.SENT_BY is Role.VIEWER
    assert Paired.SENT_BY is Role.DEVICE
    assert Offer.SENT_BY is Role.EITHER


def test_unknown_fields_are_ignored_and_null_optionals_accepted() -> None:
    data = b'{"t":"ice","candidate":"","sdpMid":null,"sdpMLineIndex":null,"future":[1,{"x":2}]}'
    assert decode_message(data) == Ice("")
    assert decode_message(b'{"zzz":1,"t":"bye"}') == Bye()
    assert decode_message(b'{"t":"error","code":3}') == ErrorMessage(ErrorCode.PAIRING_CLOSED)
    assert decode_message(b' \n{"t" : "keyframe"}\t') == Keyframe()


def test_unknown_error_codes_map_to_unknown() -> None:
    assert decode_message(b'{"t":"error","code":999,"reason":""}') == ErrorMessage(ErrorCode.UNKNOWN)
    assert Frame.decode(b"\x05\x03\xe7").error_code is ErrorCode.UNKNOWN


MALFORMED: list[tuple[bytes, str]] = [
    (b"", "JSON"),
    (b"\xff\xfe{}", "UTF-8"),
    (b'\xef\xbb\xbf{"t":"bye"}', "JSON"),  # a byte-order mark is not JSON
    (b'{"t":"bye"', "JSON"),
    (b'["bye"]', "object"),
    (b'"bye"', "object"),
    (b"{}", "type field"),
    (b'{"t":7}', "type field"),
    (b'{"t":"hello"}', "unknown message type"),
    (b'{"t":"Bye"}', "unknown message type"),
    (b'{"t":"bye","t":"bye"}', "duplicate"),
    (b'{"t":"ping","seq":NaN}', "NaN"),
    (b'{"t":"ping","seq":Infinity}', "NaN"),
    (b'{"t":"ping","seq":1.0}', "integer"),
    (b'{"t":"ping","seq":true}', "integer"),
    (b'{"t":"ping","seq":"1"}', "integer"),
    (b'{"t":"ping"}', "integer"),
    (b'{"t":"ping","seq":-1}', "range"),
    (b'{"t":"ping","seq":9007199254740992}', "range"),
    (b'{"t":"ping","seq":1' + b"0" * 5000 + b"}", "JSON"),
    (b'{"t":"pair"}', "string"),
    (b'{"t":"pair","name":null}', "string"),
    (b'{"t":"pair","name":""}', "empty"),
    (b'{"t":"pair","name":"   "}', "empty"),
    (b'{"t":"pair","name":"a\\u0007b"}', "control"),
    (b'{"t":"pair","name":"a\\u202eb"}', "control"),  # right-to-left override
    (b'{"t":"pair","name":"\\ud800"}', "Unicode"),
    (b'{"t":"pair","name":"' + b"x" * (MAX_NAME_LEN + 1) + b'"}', "longer"),
    (b'{"t":"paired","peerId":"ABCDEFGHIJKLMNOP","name":"x"}', "peerId"),
    (b'{"t":"paired","peerId":"abcdefghijklmno1","name":"x"}', "peerId"),
    (b'{"t":"offer","sdp":""}', "empty"),
    (b'{"t":"offer","sdp":"v=0\\u0000"}', "control"),
    (b'{"t":"answer","sdp":"v=0\\u001b[2J"}', "control"),
    (b'{"t":"offer"}', "string"),
    (b'{"t":"ice","candidate":"a\\r\\na=evil"}', "ASCII"),
    (b'{"t":"ice","candidate":"caf\xc3\xa9"}', "ASCII"),
    (b'{"t":"ice","candidate":"' + b"c" * (MAX_CANDIDATE_LEN + 1) + b'"}', "ASCII"),
    (b'{"t":"ice"}', "string"),
    (b'{"t":"ice","candidate":"","sdpMid":0}', "string"),
    (b'{"t":"ice","candidate":"","sdpMLineIndex":-1}', "range"),
    (b'{"t":"ice","candidate":"","sdpMLineIndex":"0"}', "integer"),
    (b'{"t":"error","code":65536}', "range"),
    (b'{"t":"error","code":-1}', "range"),
    (b'{"t":"error","code":1,"reason":"a\\nb"}', "printable"),
    (b'{"t":"error","code":1,"reason":"' + b"r" * 129 + b'"}', "printable"),
    (b"[" * 100_000, "larger"),
    (b"[" * 50_000 + b"]" * 50, "JSON"),
    (b"[" * 30_000 + b"]" * 30_000, "JSON"),  # deep nesting, within the size limit
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED, ids=lambda value: repr(value)[:40])
def test_malformed_messages_raise_protocol_error(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason) as info:
        decode_message(data)
    assert isinstance(info.value, ValueError)
    # The reason never quotes the input (beyond a field name we chose).
    assert "evil" not in str(info.value)
    assert "2J" not in str(info.value)


def test_sdp_limit_is_in_bytes() -> None:
    Offer("é" * (MAX_SDP_LEN // 2))
    with pytest.raises(ProtocolError, match="larger"):
        Offer("é" * (MAX_SDP_LEN // 2 + 1))
    near_limit = "v" * MAX_SDP_LEN
    assert decode_message(encode_message(Answer(near_limit))) == Answer(near_limit)


def test_the_encoded_message_must_fit_a_frame() -> None:
    # Escaping can double an SDP's size: the encoder refuses rather than build an oversized frame.
    with pytest.raises(ProtocolError, match="encoded message larger"):
        encode_message(Offer('"' * MAX_SDP_LEN))
    with pytest.raises(ProtocolError, match="larger"):
        decode_message(b" " * (MAX_INNER_LEN + 1))


def test_constructors_validate_too() -> None:
    with pytest.raises(ProtocolError):
        Ping(-1)
    with pytest.raises(ProtocolError):
        Pong(MAX_SEQ + 1)
    with pytest.raises(ProtocolError):
        ErrorMessage(ErrorCode.INTERNAL, "x" * 200)
    with pytest.raises(ProtocolError):
        Ice("", sdp_mid="\n")
    with pytest.raises(ProtocolError):
        Paired("short", "x")


def test_reprs_hide_sdp_and_candidates() -> None:
    sdp = SDP + "a=fingerprint:sha-256 AB:CD\r\n"
    shown = repr([Offer(sdp), Answer(sdp), Ice("candidate:1 1 udp 1 192.0.2.77 5000 typ host", "0", 0)])
    assert "fingerprint" not in shown
    assert "192.0.2.77" not in shown
    assert "end-of-candidates" in repr(Ice(""))


def test_frames() -> None:
    hello = bytes(range(HELLO_LEN))
    for frame_type in (FrameType.PAIR_HELLO, FrameType.SESSION_HELLO):
        frame = Frame(frame_type, hello)
        assert frame.encode() == bytes((frame_type,)) + hello
        assert Frame.decode(frame.encode()) == frame
    reply = Frame(FrameType.HANDSHAKE_REPLY, bytes(HANDSHAKE_REPLY_LEN))
    assert Frame.decode(reply.encode()) == reply
    largest = Frame(FrameType.TRANSPORT, bytes(MAX_FRAME_LEN - 1))
    assert len(largest.encode()) == MAX_FRAME_LEN
    assert Frame.error(ErrorCode.NOT_PAIRED).encode() == b"\x05\x00\x02"
    assert Frame.decode(b"\x05\x00\x08").error_code is ErrorCode.RATE_LIMITED
    assert "NOT_PAIRED" in repr(Frame.error(ErrorCode.NOT_PAIRED))
    assert repr(reply) == "Frame(HANDSHAKE_REPLY, 48 bytes)"
    with pytest.raises(ValueError, match="ERROR"):
        _ = reply.error_code


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x00" + bytes(96), "unknown frame type 0x00"),
        (b"\x06" + bytes(96), "unknown frame type 0x06"),
        (b"\x01" + bytes(95), "96 bytes"),
        (b"\x02" + bytes(97), "96 bytes"),
        (b"\x03" + bytes(49), "48 bytes"),
        (b"\x04" + bytes(17), "18 to 65534"),
        (b"\x04" + bytes(MAX_FRAME_LEN), "larger"),
        (b"\x05", "2 bytes"),
        (b"\x05\x00\x01\x00", "2 bytes"),
    ],
)
def test_malformed_frames(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Frame.decode(data)


def test_prologue_binds_version_and_hello_type() -> None:
    assert prologue(FrameType.PAIR_HELLO) == b"petcamd/1\x01"
    assert prologue(FrameType.SESSION_HELLO) == b"petcamd/1\x02"
    with pytest.raises(ValueError, match="hello"):
        prologue(FrameType.TRANSPORT)


def test_error_codes_are_stable_and_described() -> None:
    assert {code.name: int(code) for code in ErrorCode} == {
        "UNKNOWN": 0,
        "BAD_MESSAGE": 1,
        "NOT_PAIRED": 2,
        "PAIRING_CLOSED": 3,
        "PAIRING_FAILED": 4,
        "TOO_MANY_VIEWERS": 5,
        "DEVICE_UNAVAILABLE": 6,
        "REVOKED": 7,
        "RATE_LIMITED": 8,
        "INTERNAL": 9,
    }
    for code in ErrorCode:
        ErrorMessage(code, code.description)  # every description is a valid reason


def test_json_is_plain_enough_for_any_parser() -> None:
    for message, _ in EXAMPLES:
        document = json.loads(encode_message(message))
        assert next(iter(document)) == "t"
        assert all(isinstance(value, str | int) for value in document.values())


def load_example_generator() -> ModuleType:
    return load_script(REPO_ROOT / "scripts" / "gen-protocol-examples", "gen_protocol_examples")


def test_protocol_doc_examples_match_the_code() -> None:
    generator = load_example_generator()
    doc = (REPO_ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    generated = generator.generate()
    assert generator.extract(doc) == generated, "run scripts/gen-protocol-examples --write"
    assert generator.generate() == generated  # deterministic
