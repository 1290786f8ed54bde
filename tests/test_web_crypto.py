"""The web viewer's crypto and protocol code (petcamd/viewer/web/js/) against the Python daemon's.

- The node test suite (webtools/test/*.test.mjs: cacophony vectors, the wire format, the pairing
  URL, the viewer state machine, the worked examples of docs/protocol.md) must pass.
- The vendored @noble files must be exactly the ones petcamd/viewer/web/vendor/VERSIONS records.
- A JS ViewerChannel in a node process (webtools/interop/viewer-driver.mjs) pairs with and opens
  sessions on the Python DeviceChannel driven from here, frame by frame over stdin/stdout.
- The JS and Python parsers agree on a corpus of inner messages and pairing URLs.

Node is required, not optional: a missing node fails these tests with a message saying so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.messages import (
    MAX_SEQ,
    Answer,
    Bye,
    ErrorCode,
    ErrorMessage,
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
    decode_message,
    encode_message,
)
from petcamd.protocol.pairing_url import (
    PairingPayload,
    PairingUrlError,
    b64url,
    decode_pairing_url,
    encode_pairing_url,
)
from petcamd.secure.channel import Authenticated, Closed, DeviceChannel, Output, Received, SendFrame
from petcamd.secure.identity import key_id
from petcamd.secure.noise import public_bytes
from petcamd.secure.pairing import PairingWindow, WindowState

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "petcamd" / "viewer" / "web"
VENDOR = WEB / "vendor"
WEBTOOLS = REPO / "webtools"
DRIVER = WEBTOOLS / "interop" / "viewer-driver.mjs"
NODE_SUITE_TIMEOUT_S = 300
DRIVER_TIMEOUT_S = 120

DEVICE_NAME = "Kitchen cam"
VIEWER_NAME = "Anna's phone ☕"
SDP_OFFER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=Küche\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\n"
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43\r\n"
    "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\na=mid:0\r\na=recvonly\r\n"
    "a=rtpmap:102 H264/90000\r\n"
)
SDP_ANSWER = SDP_OFFER.replace("recvonly", "sendonly").replace("EsAw", "Zq9k")
CANDIDATE = "candidate:842163049 1 udp 1677729535 198.51.100.7 46154 typ srflx raddr 10.0.0.5 rport 46154"


MIN_NODE_MAJOR = 20  # globalThis.crypto without flags, and the @noble packages' own minimum


@functools.cache
def node_executable() -> str:
    """The node binary; fails the calling test (never skips it) if node is missing or too old."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            f"node is not installed: the web viewer's tests need Node.js {MIN_NODE_MAJOR} or newer "
            "(Debian package 'nodejs'); they are not optional",
            pytrace=False,
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(f"{node} is Node.js {version}; the web viewer's tests need {MIN_NODE_MAJOR} or newer")
    return node


# --- the node suite ----------------------------------------------------------------------------


def test_node_test_suite_passes() -> None:
    files = sorted(str(path.relative_to(REPO)) for path in (WEBTOOLS / "test").glob("*.test.mjs"))
    assert files, "no node tests found"
    result = subprocess.run(
        [node_executable(), "--test", "--test-reporter=tap", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=NODE_SUITE_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"node --test failed (exit {result.returncode}):\n{output}", pytrace=False)
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", result.stdout, re.MULTILINE)
    assert passed is not None, output
    assert failed is not None, output
    assert int(passed.group(1)) > 0
    assert int(failed.group(1)) == 0


# --- the vendored files --------------------------------------------------------------------------


@dataclass
class Versions:
    packages: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (version, integrity)
    files: dict[str, str] = field(default_factory=dict)  # path in vendor/ -> sha256


def read_versions() -> Versions:
    versions = Versions()
    for line in (VENDOR / "VERSIONS").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith(("#", "upstream ")):
            continue
        if line.startswith("package "):
            _, name, version, integrity = line.split(" ")
            versions.packages[name] = (version, integrity)
            continue
        digest, path = line.split("  ", 1)
        assert re.fullmatch(r"[0-9a-f]{64}", digest), line
        versions.files[path] = digest
    return versions


def test_vendored_files_match_versions() -> None:
    versions = read_versions()
    on_disk = {
        path.relative_to(VENDOR).as_posix()
        for path in VENDOR.rglob("*")
        if path.is_file() and path.name != "VERSIONS"
    }
    assert on_disk == set(versions.files), "vendor/ and VERSIONS list different files"
    for path, digest in versions.files.items():
        actual = hashlib.sha256((VENDOR / path).read_bytes()).hexdigest()
        assert actual == digest, f"vendor/{path} differs from VERSIONS: run webtools/vendor-noble"


def test_vendored_versions_are_the_pinned_ones() -> None:
    versions = read_versions()
    manifest = json.loads((WEBTOOLS / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((WEBTOOLS / "package-lock.json").read_text(encoding="utf-8"))
    assert (
        set(versions.packages)
        == set(manifest["dependencies"])
        == {
            "@noble/curves",
            "@noble/ciphers",
            "@noble/hashes",
        }
    )
    for name, (version, integrity) in versions.packages.items():
        assert manifest["dependencies"][name] == version, f"{name}: pin an exact version"
        locked = lock["packages"][f"node_modules/{name}"]
        assert (locked["version"], locked["integrity"]) == (version, integrity)
        assert f"{name.replace('@noble/', 'noble-')}/LICENSE" in versions.files


# Static imports and re-exports (what webtools/vendor-noble.mjs follows), at the start of a line.
IMPORT = re.compile(
    r"""^(?:import|export)\b[^;'"]*?\bfrom\s*(['"])([^'"\n]+)\1|^import\s*(['"])([^'"\n]+)\3""", re.M
)


def test_the_page_loads_only_its_own_files() -> None:
    """Every import is a relative path inside web/: no package names, no other origin."""
    scripts = [*sorted((WEB / "js").glob("*.js")), *sorted(VENDOR.rglob("*.js"))]
    assert scripts
    for script in scripts:
        source = script.read_text(encoding="utf-8")
        for match in IMPORT.finditer(source):
            specifier = match.group(2) or match.group(4)
            assert specifier.startswith(("./", "../")), f"{script.relative_to(REPO)} imports {specifier}"
            target = (script.parent / specifier).resolve()
            assert target.is_file(), f"{script.relative_to(REPO)}: {specifier} does not exist"
            assert target.is_relative_to(WEB)
        if script.parent.name == "js":
            # One code path on every origin: crypto.subtle does not exist on plain-http pages.
            code = re.sub(r"(^|\s)//.*$", "", re.sub(r"/\*.*?\*/", "", source, flags=re.S), flags=re.M)
            assert "subtle" not in code, f"{script.name} must not use crypto.subtle"


# --- the JS viewer against the Python device -------------------------------------------------


class DriverError(Exception):
    """The node driver reported an exception for a request."""


class ViewerDriver:
    """The JS ViewerChannel in a node process, one JSON request and answer per line."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [node_executable(), str(DRIVER)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        # A hung node process must not hang the suite.
        self._watchdog = threading.Timer(DRIVER_TIMEOUT_S, self._process.kill)
        self._watchdog.start()

    def call(self, op: str, **arguments: object) -> dict[str, Any]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            self._process.kill()
            _, stderr = self._process.communicate()
            pytest.fail(f"the node viewer driver exited:\n{stderr}", pytrace=False)
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok"):
            raise DriverError(f"{answer['error']}: {answer['message']}")
        return answer

    def outputs(self, op: str, **arguments: object) -> list[dict[str, Any]]:
        outputs: list[dict[str, Any]] = self.call(op, **arguments)["outputs"]
        return outputs

    def close(self) -> None:
        self._watchdog.cancel()
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def viewer() -> Iterator[ViewerDriver]:
    driver = ViewerDriver()
    try:
        yield driver
    finally:
        driver.close()


@dataclass(frozen=True)
class MemoryPeer:
    peer_id: str
    name: str
    public_key: bytes = field(repr=False)


class MemoryDirectory:
    def __init__(self) -> None:
        self.peers: dict[bytes, MemoryPeer] = {}

    def find_by_key(self, public_key: bytes) -> MemoryPeer | None:
        return self.peers.get(public_key)

    def add(self, name: str, public_key: bytes) -> MemoryPeer:
        peer = MemoryPeer(key_id(public_key), name, public_key)
        self.peers[public_key] = peer
        return peer


class Device:
    def __init__(self) -> None:
        self.key = X25519PrivateKey.generate()
        self.public_key = public_bytes(self.key)
        self.directory = MemoryDirectory()
        self.window: PairingWindow | None = None

    def open_window(self) -> PairingWindow:
        self.window = PairingWindow(300.0, 3)
        return self.window

    def pairing_url(self, secret: bytes | None = None) -> str:
        assert self.window is not None
        payload = PairingPayload(
            device_id=key_id(self.public_key),
            device_key=self.public_key,
            secret=self.window.secret if secret is None else secret,
            expires_at=self.window.expires_at_wall,
            addresses=("192.168.1.20", "fd00::20"),
            port=8080,
            relay_url="wss://relay.example.org/",
            name=DEVICE_NAME,
        )
        return encode_pairing_url("http://192.168.1.20:8080", payload)

    def channel(self) -> DeviceChannel:
        return DeviceChannel(self.key, self.directory, lambda: self.window, DEVICE_NAME)


def js_frames(outputs: list[dict[str, Any]]) -> list[bytes]:
    return [bytes.fromhex(output["data"]) for output in outputs if output["kind"] == "send"]


def js_frame(outputs: list[dict[str, Any]]) -> bytes:
    frames = js_frames(outputs)
    assert len(frames) == 1, outputs
    return frames[0]


def py_frame(outputs: list[Output]) -> bytes:
    frames = [output.data for output in outputs if isinstance(output, SendFrame)]
    assert len(frames) == 1, outputs
    return frames[0]


def js_send(viewer: ViewerDriver, message: dict[str, object]) -> bytes:
    return bytes.fromhex(viewer.call("send", message=message)["frame"])


def exchange_messages(viewer: ViewerDriver, channel: DeviceChannel) -> None:
    """Every message type a session uses, both ways, on an open channel."""
    assert channel.feed(
        js_send(viewer, {"t": "ice", "candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0})
    ) == [Received(Ice(CANDIDATE, "0", 0))]
    assert channel.feed(js_send(viewer, {"t": "ice", "candidate": ""})) == [Received(Ice(""))]
    assert channel.feed(js_send(viewer, {"t": "keyframe"})) == [Received(Keyframe())]
    assert viewer.outputs("feed", frame=channel.send(Answer(SDP_ANSWER)).hex()) == [
        {"kind": "received", "message": {"t": "answer", "sdp": SDP_ANSWER}}
    ]
    assert viewer.outputs("feed", frame=channel.send(Ice(CANDIDATE, None, 0)).hex()) == [
        {
            "kind": "received",
            "message": {"t": "ice", "candidate": CANDIDATE, "sdpMid": None, "sdpMLineIndex": 0},
        }
    ]
    # Pings are answered by the channel on either side.
    pong = js_frame(viewer.outputs("feed", frame=channel.send(Ping(7)).hex()))
    assert channel.feed(pong) == [Received(Pong(7))]
    reply = py_frame(channel.feed(js_send(viewer, {"t": "ping", "seq": MAX_SEQ})))
    assert viewer.outputs("feed", frame=reply.hex()) == [
        {"kind": "received", "message": {"t": "pong", "seq": MAX_SEQ}}
    ]


def test_js_viewer_pairs_with_the_python_device_and_opens_sessions(viewer: ViewerDriver) -> None:
    device = Device()
    window = device.open_window()
    identity = viewer.call("identity")
    viewer_key = bytes.fromhex(identity["publicKey"])
    assert identity["keyId"] == key_id(viewer_key)

    # Pairing: PAIR_HELLO, HANDSHAKE_REPLY, `pair`, `paired`.
    hello = js_frame(viewer.outputs("pair", url=device.pairing_url(), name=VIEWER_NAME))
    assert Frame.decode(hello).type is FrameType.PAIR_HELLO
    channel = device.channel()
    reply = py_frame(channel.feed(hello))
    pair = js_frame(viewer.outputs("feed", frame=reply.hex()))
    outputs = channel.feed(pair)
    peer = device.directory.find_by_key(viewer_key)
    assert peer is not None
    assert peer.name == VIEWER_NAME
    assert outputs[1:] == [Authenticated(peer, newly_paired=True)]
    assert window.state is WindowState.PAIRED
    assert viewer.outputs("feed", frame=py_frame(outputs).hex()) == [
        {
            "kind": "ready",
            "deviceKey": device.public_key.hex(),
            "peerId": key_id(viewer_key),
            "deviceName": DEVICE_NAME,
        }
    ]
    # The pairing channel goes straight on as a session: the viewer's offer, the device's answer.
    assert channel.feed(js_send(viewer, {"t": "offer", "sdp": SDP_OFFER})) == [Received(Offer(SDP_OFFER))]
    exchange_messages(viewer, channel)
    # The viewer hangs up: `bye`, which the device reads as an orderly, verified end.
    hangup = viewer.outputs("close", code=None)
    assert hangup[1:] == [
        {"kind": "closed", "code": None, "byPeer": False, "verified": True, "remoteReason": ""}
    ]
    assert channel.feed(js_frame(hangup)) == [Closed(None, by_peer=True, verified=True)]

    # A session with the stored device key: SESSION_HELLO, HANDSHAKE_REPLY, then the offer.
    hello = js_frame(viewer.outputs("session", deviceKey=device.public_key.hex()))
    assert Frame.decode(hello).type is FrameType.SESSION_HELLO
    channel = device.channel()
    ready = viewer.outputs("feed", frame=py_frame(channel.feed(hello)).hex())
    assert ready == [
        {"kind": "ready", "deviceKey": device.public_key.hex(), "peerId": None, "deviceName": None}
    ]
    outputs = channel.feed(js_send(viewer, {"t": "offer", "sdp": SDP_OFFER}))
    assert outputs == [Authenticated(peer, newly_paired=False), Received(Offer(SDP_OFFER))]
    exchange_messages(viewer, channel)
    # The device ends it with an authenticated error: verified, with the device's reason.
    outputs = channel.close(ErrorCode.REVOKED)
    assert viewer.outputs("feed", frame=py_frame(outputs).hex()) == [
        {
            "kind": "closed",
            "code": int(ErrorCode.REVOKED),
            "byPeer": True,
            "verified": True,
            "remoteReason": ErrorCode.REVOKED.description,
        }
    ]


def test_a_wrong_pairing_secret_fails_on_both_sides(viewer: ViewerDriver) -> None:
    device = Device()
    window = device.open_window()
    url = device.pairing_url(secret=bytes(16))
    hello = js_frame(viewer.outputs("pair", url=url, name="Phone"))
    channel = device.channel()
    reply = py_frame(channel.feed(hello))  # the device cannot tell yet: message 1 carries no psk
    outputs = viewer.outputs("feed", frame=reply.hex())
    error = js_frame(outputs)
    assert Frame.decode(error).error_code is ErrorCode.PAIRING_FAILED
    assert outputs[1:] == [
        {
            "kind": "closed",
            "code": int(ErrorCode.PAIRING_FAILED),
            "byPeer": False,
            "verified": True,
            "remoteReason": "",
        }
    ]
    assert channel.feed(error) == [Closed(ErrorCode.PAIRING_FAILED, by_peer=True, verified=False)]
    assert window.failures == 1
    assert device.directory.peers == {}


def test_an_unpaired_viewer_is_refused(viewer: ViewerDriver) -> None:
    device = Device()
    hello = js_frame(viewer.outputs("session", deviceKey=device.public_key.hex()))
    refusal = py_frame(device.channel().feed(hello))
    assert viewer.outputs("feed", frame=refusal.hex()) == [
        {
            "kind": "closed",
            "code": int(ErrorCode.NOT_PAIRED),
            "byPeer": True,
            "verified": False,
            "remoteReason": "",
        }
    ]


def test_the_device_rejects_what_the_js_viewer_refuses_to_send(viewer: ViewerDriver) -> None:
    """The JS sender enforces the same limits the Python receiver does."""
    device = Device()
    device.open_window()
    channel = device.channel()
    hello = js_frame(viewer.outputs("pair", url=device.pairing_url(), name="Phone"))
    pair = js_frame(viewer.outputs("feed", frame=py_frame(channel.feed(hello)).hex()))
    viewer.outputs("feed", frame=py_frame(channel.feed(pair)).hex())
    assert channel.is_open
    refused: list[dict[str, object]] = [
        {"t": "keyframe", "extra": 1},
        {"t": "offer", "sdp": '"' * 32768},  # escaping makes it too large for a frame
        {"t": "paired", "peerId": "aaaaaaaaaaaaaaaa", "name": "x"},
        {"t": "pair", "name": "x"},
        {"t": "ping", "seq": MAX_SEQ + 1},
    ]
    for message in refused:
        try:
            frame = js_send(viewer, message)
        except DriverError:
            continue
        assert message["t"] == "keyframe", message
        assert channel.feed(frame) == [Received(Keyframe())]


# --- parser agreement ------------------------------------------------------------------------------


def python_canonical(data: bytes) -> str | None:
    try:
        return encode_message(decode_message(data)).hex()
    except ProtocolError:
        return None


# Characters on both sides of the printable / not printable line, from Unicode versions old enough
# that Python's unicodedata and the JS engine agree on them.
TRICKY_CHARACTERS = [
    "\x00", "\x07", "\t", "\n", "\x1f", " ", "\x7f", "\x85", "\xa0", "\xad", "é", "\u0300", "\u061c",
    "\u200b", "\u200d", "\u2028", "\u2029", "\u202e", "\u3000", "\ue000", "\ufeff", "\ufffd", "\uffff",
    "\u0378", "☕", "😀", "\U0001f1e9", "\U000e0001", "\U0010ffff", "\\", '"', "/",
]  # fmt: skip


def message_corpus() -> list[bytes]:
    valid = [
        Pair("Anna's phone"),
        Paired("abcdefghijklmn23", "Kitchen"),
        Offer(SDP_OFFER),
        Answer("v=0\r\n"),
        Ice(CANDIDATE, "0", 0),
        Ice(""),
        Keyframe(),
        Bye(),
        ErrorMessage(ErrorCode.REVOKED, "revoked"),
        Ping(MAX_SEQ),
        Pong(0),
    ]
    corpus = [encode_message(message) for message in valid]
    # Each character raw and escaped, in every text member, alone and between other characters.
    members = [("pair", "name", ""), ("error", "reason", ',"code":1'), ("offer", "sdp", "")]
    members += [("ice", "candidate", ""), ("ice", "sdpMid", ',"candidate":"c"')]
    for char in TRICKY_CHARACTERS:
        escaped = json.dumps(char)[1:-1]
        for text in (f"a{char}b", char, f"{char} ", "x" * 63 + char):
            corpus.extend(
                f'{{"t":"{t}","{member}":"{value}"{extra}}}'.encode()
                for t, member, extra in members
                for value in (text, text.replace(char, escaped))
            )
    corpus += [b'{"t":"pair","name":"\\ud83d\\ude00"}', b'{"t":"pair","name":"\\ud83d"}', b"\xed\xa0\x80"]
    tokens = [
        " ", '"', "\\", "\\u0000", "\\ud800", "\\u00e9", "1", "1.0", "-0", "1e5", "-1", "65536", "null",
        "true", ",", ":", "{", "}", "[", "]", '"t"', '"seq"', '"code"', '"x"', "é", "\u2028", "NaN", "\ufeff",
    ]  # fmt: skip
    rng = random.Random(20240607)  # fixed: the same corpus on every run
    for _ in range(3000):
        text = rng.choice(corpus[: len(valid)]).decode("utf-8")
        for _ in range(rng.randint(1, 3)):
            position = rng.randint(0, len(text))
            cut = rng.choice((0, 0, 1, 2))
            text = text[:position] + rng.choice(tokens) + text[position + cut :]
        corpus.append(text.encode("utf-8"))
    return corpus


def test_js_and_python_decode_inner_messages_alike(viewer: ViewerDriver) -> None:
    corpus = message_corpus()
    results = viewer.call("decode", inputs=[data.hex() for data in corpus])["results"]
    disagreements = [
        (data, js, python)
        for data, js in zip(corpus, results, strict=True)
        if js != (python := python_canonical(data))
    ]
    accepted = sum(result is not None for result in results)
    assert 100 < accepted < len(corpus) - 100, "the corpus should hold plenty of both kinds"
    assert not disagreements, "\n".join(
        f"{data!r}: js={js and bytes.fromhex(js)!r} python={py and bytes.fromhex(py)!r}"
        for data, js, py in disagreements[:20]
    )


def test_js_decodes_pairing_urls_as_python_does(viewer: ViewerDriver) -> None:
    rng = random.Random(7)
    names = ["", "Kitchen cam", "Café & bar", "a=b#c+d%e/f?g", "😀 ☕", "x" * 64, "ümlaut,:;"]
    relays = ["", "wss://relay.example.org/", "wss://r.example.org:8443/p?x=1&y=2#f"]
    addresses = [(), ("192.168.1.20",), ("192.168.1.20", "fd00::20"), ("::1", "10.0.0.1", "2001:db8::1:2")]
    for index in range(40):
        payload = PairingPayload(
            device_id=key_id(rng.randbytes(32)),
            device_key=rng.randbytes(32),
            secret=rng.randbytes(16 + index % 3),
            expires_at=rng.randrange(0, 2**40),
            addresses=addresses[index % len(addresses)],
            port=rng.randrange(1, 65536),
            relay_url=relays[index % len(relays)],
            name=names[index % len(names)],
        )
        url = encode_pairing_url("http://192.168.1.20:8080", payload)
        assert decode_pairing_url(url) == payload
        decoded = viewer.call("url", url=url)["payload"]
        assert decoded == {
            "deviceId": payload.device_id,
            "deviceKey": payload.device_key.hex(),
            "secret": payload.secret.hex(),
            "expiresAt": payload.expires_at,
            "addresses": list(payload.addresses),
            "port": payload.port,
            "relayUrl": payload.relay_url,
            "name": payload.name,
        }, url


@pytest.mark.parametrize(
    "fragment",
    [
        "v=2&id=aaaaaaaaaaaaaaaa&k={k}&s={s}&e=1&p=1",
        "v=1&id=aaaaaaaaaaaaaaaa&k={k}&s={s}&e=1",
        "v=1&id=aaaaaaaaaaaaaaaa&k={k}&s={s}&e=1&p=65536",
        "v=1&id=AAAAAAAAAAAAAAAA&k={k}&s={s}&e=1&p=1",
        "v=1&id=aaaaaaaaaaaaaaaa&k={k}&s={s}&e=1&p=1&p=2",
        "v=1&id=aaaaaaaaaaaaaaaa&k={k}&s={s}&e=1&p=1&a=not-an-ip",
        "v=1&id=aaaaaaaaaaaaaaaa&k={k}&s=AAAA&e=1&p=1",
        "v=1&id=aaaaaaaaaaaaaaaa&k=AAAA&s={s}&e=1&p=1",
        "v=1&id=aaaaaaaaaaaaaaaa&k={k}&s={s}&e=1&p=1&n=" + "x" * 65,
        "v=1&id=aaaaaaaaaaaaaaaa&k={k}&s={s}&e=1&p=1&",
        "v=1&id=aaaaaaaaaaaaaaaa&k={k}&s={s}&e=1&p=1&x=" + "y" * 500,
    ],
)
def test_both_reject_the_same_malformed_pairing_urls(viewer: ViewerDriver, fragment: str) -> None:
    url = "http://h:1/#" + fragment.format(k=b64url(bytes(32)), s=b64url(bytes(16)))
    with pytest.raises(PairingUrlError):
        decode_pairing_url(url)
    with pytest.raises(DriverError, match="PairingUrlError"):
        viewer.call("url", url=url)


# --- the same vectors in a real browser, on an origin without crypto.subtle --------------------

BROWSER_VECTORS = """
(async () => {
  const [noise, bytes, check] = await Promise.all([
    import('/js/noise.js'), import('/js/bytes.js'), import('/test/noise-vector-check.mjs'),
  ]);
  const lib = { ...noise, ...bytes };
  const all = (await (await fetch('/test/vectors.json')).json()).vectors;
  const names = new Set(Object.values(noise.Pattern).map((p) => p.name));
  const vectors = all.filter((v) => names.has(v.protocol_name));
  const failures = [];
  let checked = 0;
  for (const vector of vectors) {
    for (const role of ['initiator', 'responder']) {
      try { check.checkVector(vector, role, lib); checked++; }
      catch (e) { failures.push(`${vector.protocol_name} ${role}: ${e.message}`); }
    }
  }
  // The control: a vector with one ciphertext bit flipped must fail, or the check checks nothing.
  const tampered = structuredClone(vectors[0]);
  const last = tampered.messages.at(-1);
  last.ciphertext = (parseInt(last.ciphertext[0], 16) ^ 1).toString(16) + last.ciphertext.slice(1);
  let controlFailed = false;
  try { check.checkVector(tampered, 'initiator', lib); } catch { controlFailed = true; }
  return { checked, failures, controlFailed, secure: isSecureContext, subtle: typeof crypto.subtle };
})()
"""


@pytest.mark.timeout(90)
async def test_cacophony_vectors_pass_in_chromium_without_webcrypto(tmp_path: Path) -> None:
    """The browser runs the very modules the page loads, where a phone on the LAN runs them."""
    from aiohttp import web

    from petcamd.web_static import StaticFiles, viewer_web_dir
    from tests.chromium import Chromium

    root = tmp_path / "site"
    shutil.copytree(viewer_web_dir(), root)
    (root / "test").mkdir()
    shutil.copy(REPO / "webtools" / "test" / "noise-vector-check.mjs", root / "test")
    shutil.copy(REPO / "tests" / "data" / "noise-cacophony-subset.json", root / "test" / "vectors.json")
    (root / "blank.html").write_text("<!doctype html><title>vectors</title>")
    app = web.Application()
    app.router.add_get("/{path:.*}", StaticFiles(root).handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with Chromium.launch(tmp_path, hosts=["petcam.test"]) as browser:
            page = await browser.new_page(init_scripts=["delete Crypto.prototype.subtle;"])
            await page.goto(f"http://petcam.test:{port}/blank.html")
            result = await page.evaluate(BROWSER_VECTORS, await_promise=True)
    finally:
        await runner.cleanup()
    expected = sum(
        2
        for v in json.loads((REPO / "tests" / "data" / "noise-cacophony-subset.json").read_text())["vectors"]
        if v["protocol_name"] in ("Noise_IK_25519_AESGCM_SHA256", "Noise_IKpsk2_25519_AESGCM_SHA256")
    )
    assert result["secure"] is False
    assert result["subtle"] == "undefined"
    assert result["failures"] == []
    assert result["checked"] == expected > 0
    assert result["controlFailed"] is True
