"""A raw fuzzer against a live LAN server and a live relay, each in a process of its own, while a
real viewer streams: no crash, no unhandled exception in the logs, the viewer keeps streaming and
the process's memory stays bounded.

The unit-level properties (test_channel_properties, test_relay_protocol, ...) feed parsers in
process; this throws the same kinds of input over real sockets, where aiohttp's WebSocket parser,
the connection limits, the negotiator, aiortc's SDP parser (junk offers from a paired viewer) and
the relay's routing all sit in the path. Inputs are random bytes and mutations of valid frames
(bit flips, cuts, splices, type swaps), WebSocket-level junk (reserved opcodes and bits, unmasked,
fragmented or overlong frames, bad close codes, invalid UTF-8) and raw bytes instead of HTTP.
Each connection comes from its own loopback address (127.x.y.z) a few times, so the per-address
limits let the flood through to the parsers; the rate limits have their own tests.

`make test` sends a few thousand frames to each; `make soak` (PETCAMD_SOAK=1) 50,000. The seed is
printed; FUZZ_SEED=N replays a run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import os
import random
import string
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.messages import ErrorCode, Frame, FrameType, Ice, Keyframe, Offer, Ping, ProtocolError
from petcamd.protocol.pairing_url import decode_pairing_url
from petcamd.protocol.relay import Close, Connect, Data, EnvelopeType, Register, encode_data
from petcamd.secure.channel import DeviceReady, ViewerChannel
from petcamd.viewer.client import DeviceBusyError, pair, watch
from petcamd.viewer.state import ViewerState
from tests.notify_socket import NotifySocket
from tests.ports import free_port
from tests.processes import DaemonProcess, daemon_config
from tests.reliability import (
    SOAK,
    ChannelViewer,
    log_records,
    malformed_request_record,
    measured,
    report,
    rss_kib,
    scaled,
    time_limit,
    unhandled,
)
from tests.test_relay_mode import RelayProcess
from tests.test_webrtc_harness import Viewer

pytestmark = pytest.mark.usefixtures("loopback_ice")

FRAMES = scaled(4000, 50_000)
WORKERS = 8
STREAM_GAP_LIMIT_S = 1.5
"""The streaming viewer's longest pause while the flood keeps the daemon's one core busy."""
RSS_GROWTH_LIMIT_MIB = 32.0
"""Memory may rise to a high-water mark (connections in flight, allocator pools)..."""
RSS_LATE_GROWTH_LIMIT_MIB = 4.0
"""...but must level off: growth over the second half of the run, where a leak would keep climbing."""
FPS = 15


# --- a WebSocket client written by hand -------------------------------------------------------------


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame; `length` lies about the payload's length when given."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode & 0xF])
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """TCP to the server from a chosen loopback address; the upgrade and the frames are by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def upgrade(self, path: str) -> bool:
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        return head.startswith(b"HTTP/1.1 101")

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def send_binary(self, payload: bytes) -> None:
        self.writer.write(ws_frame(0x2, payload))

    async def message(self, within: float = 3.0) -> bytes | None:
        """The next binary message from the server (control frames skipped); None once it closed."""
        try:
            async with asyncio.timeout(within):
                while True:
                    first, second = await self.reader.readexactly(2)
                    size = second & 0x7F
                    if size == 126:
                        (size,) = struct.unpack("!H", await self.reader.readexactly(2))
                    elif size == 127:
                        (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
                    payload = await self.reader.readexactly(size)
                    opcode = first & 0xF
                    if opcode == 0x8:
                        return None
                    if opcode == 0x2:
                        return payload
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        except TimeoutError:
            return b""  # nothing yet; the connection is still open

    async def until_closed(self, within: float = 3.0) -> None:
        """Read until the server closes (answering its close frame) or `within` has passed."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            if await self.message(left) is None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    self.writer.write(ws_frame(0x8, struct.pack("!H", 1000)))
                return

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# --- mutations ----------------------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:  # flip bits
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:  # any byte
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 2:  # insert
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:  # delete
            del out[pos : pos + rng.randint(1, 16)]
        elif op == 4:  # truncate
            del out[pos:]
        elif op == 5:  # extend
            out += rng.randbytes(rng.choice((1, 16, 200, 2000)))
        elif op == 6 and out:  # another type byte
            out[0] = rng.randrange(256)
        elif op == 7:  # splice with another seed
            other = rng.choice(others)
            out = out[:pos] + other[rng.randrange(len(other) + 1) :]
        elif op == 8:  # duplicate a slice
            out[pos:pos] = out[pos : pos + rng.randint(1, 64)]
    return bytes(out[:70_000])


def mutate_sdp(rng: random.Random, sdp: str) -> str:
    """A real offer, damaged line by line, still a legal `offer` message (printable, CRLF)."""
    lines = sdp.split("\r\n")
    printable = string.ascii_letters + string.digits + " :=/.-+*#"
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(lines))
        op = rng.randrange(7)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif op == 3:
            lines[i] = "".join(rng.choice(printable) for _ in range(rng.randint(0, 40)))
        elif op == 4:
            lines[i] = "".join(str(rng.choice((0, -1, 65536, 2**40))) if c.isdigit() else c for c in lines[i])
        elif op == 5:
            lines.insert(
                i, rng.choice(("m=video", "a=rtpmap:", "a=fmtp:102", "a=ssrc:x", "c=IN IP9 ::", "a=mid:"))
            )
        elif op == 6:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
    return "\r\n".join(lines)


def ws_junk(rng: random.Random) -> list[bytes]:
    """WebSocket frames no well-behaved client sends."""
    payload = rng.randbytes(rng.randint(0, 40))
    return rng.choice(
        [
            [ws_frame(rng.choice((3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)), payload)],  # reserved opcodes
            [ws_frame(0x2, payload, rsv=rng.randint(1, 7))],  # reserved bits, no extension agreed
            [ws_frame(0x2, payload, mask=False)],  # clients must mask
            [ws_frame(0x2, payload, fin=False), ws_frame(0x0, payload)],  # a fragmented message
            [ws_frame(0x0, payload)],  # a continuation of nothing
            [ws_frame(0x9, rng.randbytes(200))],  # a control frame too long
            [ws_frame(0x9, payload, fin=False)],  # a fragmented control frame
            [ws_frame(0x1, b"\xff\xfe" + payload)],  # text, not even UTF-8
            [ws_frame(0x8, rng.randbytes(1))],  # a close with half a code
            [ws_frame(0x8, struct.pack("!H", rng.choice((0, 999, 1004, 1005, 1006, 5000))))],
            [ws_frame(0x2, payload, length=2**62)],  # an impossible length
            [ws_frame(0x2, payload, length=len(payload) + 100)[: 10 + len(payload)]],  # cut short
            [ws_frame(0x9, payload)] * rng.randint(5, 50),  # ping flood
            [rng.randbytes(rng.randint(1, 64))],  # not a frame at all
        ]
    )


HTTP_JUNK = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on a plain port
    b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",  # no key, no version
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 99\r\n\r\n",
    b"POST /ws HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 100,
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
]


# --- the fuzzer ----------------------------------------------------------------------------------------


class Fuzzer:
    """Counts frames; rotates the source address so each one makes only a few connections."""

    def __init__(self, rng: random.Random, port: int, per_address: int, pid: int) -> None:
        self.rng = rng
        self.port = port
        self.per_address = per_address
        self.pid = pid
        self.rss_mib: list[float] = []
        """The target's memory after every tenth of the frames: a leak climbs, a high-water mark levels."""
        self.sent = 0
        self.connections = 0
        self.refused = 0
        self.outcomes: dict[str, int] = {}
        self._numbers = itertools.count()

    def source(self) -> str:
        n = next(self._numbers) // self.per_address
        return f"127.{1 + n // 62500}.{n // 250 % 250 + 1}.{n % 250 + 1}"

    def count(self, outcome: str, frames: int = 1) -> None:
        self.sent += frames
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    # The cases both servers get alike; the rest of each case is the server's own.

    async def http_junk(self, sock: RawSocket) -> None:
        """Something that is no HTTP request, or none the server serves."""
        rng = self.rng
        sock.send(rng.choice(HTTP_JUNK) if rng.random() < 0.6 else rng.randbytes(rng.randint(1, 300)))
        self.count("http junk")
        await sock.until_closed(2)

    async def upgraded(self, sock: RawSocket, path: str) -> bool:
        """The WebSocket upgrade; False (counted) when the server refused it."""
        if await sock.upgrade(path):
            return True
        self.refused += 1
        self.count("refused before upgrade", 0)
        return False

    def websocket_junk(self, sock: RawSocket) -> None:
        frames = ws_junk(self.rng)
        for data in frames:
            sock.send(data)
        self.count("websocket junk", len(frames))

    async def run(self, case: Callable[[RawSocket], Awaitable[None]], budget: int) -> None:
        start = self.sent
        step = max(1, (budget - start) // 10)
        self.rss_mib = []

        async def worker() -> None:
            while self.sent < budget:
                if self.sent - start >= step * (len(self.rss_mib) + 1):
                    self.rss_mib.append(round(rss_kib(self.pid) / 1024, 1))
                self.connections += 1
                sock = await RawSocket.open(self.port, self.source())
                try:
                    await case(sock)
                except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                    self.count("connection reset")
                finally:
                    await sock.close()

        await asyncio.gather(*(worker() for _ in range(WORKERS)))


def assert_bounded(base_kib: int, end_kib: int, samples_mib: list[float], figures: dict[str, Any]) -> None:
    """A ceiling at any scale; at the soak's scale, long enough to pass the high-water mark, also
    that memory levelled off."""
    assert (end_kib - base_kib) / 1024 <= RSS_GROWTH_LIMIT_MIB, figures
    if SOAK:
        assert len(samples_mib) >= 4, samples_mib
        middle = samples_mib[len(samples_mib) // 2 - 1]
        assert end_kib / 1024 - middle <= RSS_LATE_GROWTH_LIMIT_MIB, figures


# --- the LAN server -----------------------------------------------------------------------------------


@pytest.mark.timeout(time_limit(150, 3600))
async def test_lan_server_takes_random_and_mutated_frames_while_a_viewer_streams(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    figures: dict[str, Any] = {"seed": seed}
    daemon = DaemonProcess(tmp_path, bus_address, daemon_config(tmp_path))
    await daemon.start(notify_socket)
    try:
        port = await daemon.lan_port()
        streamer_state = ViewerState(tmp_path / "streamer")
        streamer = await pair(streamer_state, await daemon.pairing_url(), "Streamer")
        fuzz_state = ViewerState(tmp_path / "fuzzer")
        fuzz_device = await pair(fuzz_state, await daemon.pairing_url(), "Fuzzer")
        fuzz_key = fuzz_state.identity().private_key
        stranger = X25519PrivateKey.generate()
        pairing = decode_pairing_url(await daemon.pairing_url())  # a live window the fuzzer has no secret for
        wrong = dataclasses.replace(pairing, secret=os.urandom(16))
        offer_sdp = await Viewer().offer()

        seeds = [
            ViewerChannel.for_session(fuzz_key, streamer.device_key).start(),
            ViewerChannel.for_session(stranger, streamer.device_key).start(),
            ViewerChannel.for_pairing(stranger, wrong, "Fuzzer").start(),
            Frame.error(ErrorCode.BAD_MESSAGE).encode(),
            bytes([FrameType.TRANSPORT]) + os.urandom(60),
            bytes([FrameType.HANDSHAKE_REPLY]) + os.urandom(48),
        ]

        async def case(sock: RawSocket) -> None:
            roll = rng.random()
            if roll < 0.07:
                await fuzz.http_junk(sock)
                return
            if not await fuzz.upgraded(sock, "/ws"):
                return
            if roll < 0.3:
                fuzz.websocket_junk(sock)
            elif roll < 0.55:
                channel = ViewerChannel.for_session(fuzz_key, fuzz_device.device_key)
                sock.send_binary(channel.start())
                if not any(
                    isinstance(o, DeviceReady) for o in channel.feed(await sock.message() or b"\x05\x00\x08")
                ):
                    fuzz.count("session refused (rate limit)")
                    return
                for _ in range(rng.randint(1, 3)):
                    pick = rng.random()
                    if pick < 0.4:
                        with contextlib.suppress(ProtocolError):
                            sock.send_binary(channel.send(Offer(mutate_sdp(rng, offer_sdp))))
                    elif pick < 0.6:
                        message = rng.choice(
                            [
                                Ping(rng.randrange(2**53)),
                                Keyframe(),
                                Ice("candidate:x 1 udp 1 ::1 1 typ host"),
                            ]
                        )
                        sock.send_binary(mutate(rng, channel.send(message), seeds))
                    else:
                        sock.send_binary(mutate(rng, rng.choice(seeds), seeds))
                fuzz.count("authenticated junk", 2)
            else:
                sock.send_binary(
                    mutate(rng, rng.choice(seeds), seeds)
                    if rng.random() < 0.8
                    else rng.randbytes(rng.randint(0, 300))
                )
                fuzz.count("protocol junk")
            await sock.until_closed(0.5)

        tasks_before = (await daemon.probe())["tasks"]
        fuzz = Fuzzer(rng, port, per_address=5, pid=daemon.pid)
        await fuzz.run(case, 150)  # warm-up: code paths, caches and pools exist before the baseline
        base_rss = rss_kib(daemon.pid)

        viewer = await ChannelViewer.streaming(port, streamer_state.identity(), streamer.device_key)
        watched_from = time.monotonic()
        with measured(figures, "fuzz_s"):
            await fuzz.run(case, FRAMES)
        watched_until = time.monotonic()
        frames = [t for t, _, _ in viewer.media.frames if watched_from <= t <= watched_until]
        gaps = [b - a for a, b in itertools.pairwise([watched_from, *frames, watched_until])]
        assert viewer.closed is None, f"the streaming viewer's channel ended: {viewer.closed}"
        await viewer.bye()

        after = await watch(streamer_state, streamer, frames=10, via="lan")  # a new session works too
        end_rss = rss_kib(daemon.pid)
        # Sessions the junk offers opened end by their connect timeout (10 s); then nothing is left.
        deadline = time.monotonic() + 20
        snapshot = await daemon.probe()
        while snapshot["tasks"] > tasks_before and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            snapshot = await daemon.probe()
        code, _ = await daemon.stop()
    finally:
        daemon.kill()
    log = daemon.log()
    figures.update(
        frames_sent=fuzz.sent,
        connections=fuzz.connections,
        outcomes=dict(sorted(fuzz.outcomes.items())),
        viewer_fps=round(len(frames) / (watched_until - watched_from), 1),
        viewer_longest_gap_s=round(max(gaps), 3),
        rss_before_mib=round(base_rss / 1024, 1),
        rss_after_mib=round(end_rss / 1024, 1),
        rss_growth_mib=round((end_rss - base_rss) / 1024, 2),
        rss_during_mib=fuzz.rss_mib,
        tasks_before=tasks_before,
        tasks_after=snapshot["tasks"],
    )
    report(capsys, "fuzz_lan_server", figures)
    assert code == 0
    assert not unhandled(log), unhandled(log)[:5]
    assert fuzz.sent >= FRAMES
    assert max(gaps) < STREAM_GAP_LIMIT_S, figures
    assert snapshot["tasks"] <= tasks_before, snapshot["task_names"]
    assert len(frames) >= 0.8 * FPS * (watched_until - watched_from), figures
    assert after.frames_decoded >= 10
    assert_bounded(base_rss, end_rss, fuzz.rss_mib, figures)


# --- the relay -----------------------------------------------------------------------------------------


@pytest.mark.timeout(time_limit(150, 3600))
async def test_relay_takes_random_and_mutated_envelopes_while_a_viewer_streams_through_it(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    figures: dict[str, Any] = {"seed": seed}
    relay_port = free_port()
    relay = RelayProcess(tmp_path / "relay", relay_port, f"http://127.0.0.1:{relay_port}")
    await relay.start()
    network = f'mode = "internet"\nrelay_url = "ws://127.0.0.1:{relay_port}/"'
    daemon = DaemonProcess(tmp_path, bus_address, daemon_config(tmp_path, network=network))
    try:
        await daemon.start(notify_socket)
        deadline = time.monotonic() + 15
        while (await daemon.status())["relay"]["state"] != "registered":
            assert time.monotonic() < deadline, "the daemon did not register at the relay"
            await asyncio.sleep(0.1)
        state = ViewerState(tmp_path / "streamer")
        device = await pair(state, await daemon.pairing_url(), "Streamer", via="relay")
        fuzz_state = ViewerState(tmp_path / "fuzzer")
        await pair(fuzz_state, await daemon.pairing_url(), "Fuzzer", via="relay")
        fuzz_key = fuzz_state.identity().private_key
        device_id = device.device_id
        offer_sdp = await Viewer().offer()
        hello = ViewerChannel.for_session(fuzz_key, device.device_key).start()
        seeds = [
            Connect(1, device_id).encode(),
            Data(1, hello).encode(),
            Close(1).encode(),
            Register(os.urandom(32), os.urandom(32)).encode(),
            encode_data(7, bytes([FrameType.TRANSPORT]) + os.urandom(40)),
            bytes([EnvelopeType.OPEN]) + os.urandom(4),
        ]

        async def case(sock: RawSocket) -> None:
            roll = rng.random()
            if roll < 0.05:
                await fuzz.http_junk(sock)
                return
            path = "/device" if roll < 0.25 else "/viewer"
            if not await fuzz.upgraded(sock, path):
                return
            if path == "/device":
                await sock.message()  # the challenge
                data = (
                    mutate(rng, seeds[3], seeds) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 100))
                )
                sock.send_binary(data)
                fuzz.count("device junk")
            elif roll < 0.4:
                fuzz.websocket_junk(sock)
            elif roll < 0.65:
                # Through the relay to the daemon: a session, then junk inside it.
                conn_id = rng.randrange(1, 2**32)
                channel = ViewerChannel.for_session(fuzz_key, device.device_key)
                sock.send_binary(Connect(conn_id, device_id).encode())
                sock.send_binary(encode_data(conn_id, channel.start()))
                reply = await sock.message()
                ready = (
                    reply is not None
                    and reply[:1] == bytes([EnvelopeType.DATA])
                    and any(isinstance(o, DeviceReady) for o in channel.feed(reply[5:]))
                )
                for _ in range(rng.randint(1, 3)):
                    if ready and rng.random() < 0.4:
                        with contextlib.suppress(ProtocolError):
                            sock.send_binary(
                                encode_data(conn_id, channel.send(Offer(mutate_sdp(rng, offer_sdp))))
                            )
                    else:
                        frame = mutate(rng, hello if rng.random() < 0.5 else rng.choice(seeds), seeds)
                        sock.send_binary(encode_data(conn_id, frame[:65535] or b"\x00"))
                fuzz.count("junk to the device" if ready else "junk to an unready session", 4)
            else:
                sock.send_binary(mutate(rng, rng.choice(seeds), seeds))
                fuzz.count("envelope junk")
            await sock.until_closed(0.2)

        assert relay.proc is not None
        fuzz = Fuzzer(rng, relay_port, per_address=20, pid=relay.proc.pid)
        await fuzz.run(case, 150)
        relay_pid = relay.proc.pid
        base_rss = rss_kib(relay_pid)
        stop = asyncio.Event()
        watching = asyncio.create_task(watch(state, device, via="relay", stop=stop))
        await asyncio.sleep(2)
        with measured(figures, "fuzz_s"):
            await fuzz.run(case, FRAMES)
        assert not watching.done(), "the viewer's session ended during the fuzz"
        stop.set()
        result = await watching
        end_rss = rss_kib(relay_pid)
        status = await daemon.status()
        # Junk sessions hold the device's relay slots until its handshake timeout: then a new one works.
        deadline = time.monotonic() + 20
        while True:
            try:
                after = await watch(state, device, frames=10, via="relay")
                break
            except DeviceBusyError:
                assert time.monotonic() < deadline, "the relay still refuses new sessions"
                await asyncio.sleep(1)
        code, _ = await daemon.stop()
    finally:
        daemon.kill()
        await relay.stop()
    figures.update(
        frames_sent=fuzz.sent,
        connections=fuzz.connections,
        outcomes=dict(sorted(fuzz.outcomes.items())),
        viewer_fps=round(result.fps, 1),
        viewer_frames=result.frames_decoded,
        device_registrations=status["relay"]["registrations"],
        relay_rss_before_mib=round(base_rss / 1024, 1),
        relay_rss_after_mib=round(end_rss / 1024, 1),
        relay_rss_growth_mib=round((end_rss - base_rss) / 1024, 2),
        relay_rss_during_mib=fuzz.rss_mib,
        relay_malformed_request_tracebacks=sum(
            map(malformed_request_record, log_records("".join(relay.log)))
        ),
    )
    report(capsys, "fuzz_relay", figures)
    relay_log, daemon_log = "".join(relay.log), daemon.log()
    assert code == 0
    # Unparsable HTTP requests are answered 400 and not logged with a traceback (journal floods).
    assert figures["relay_malformed_request_tracebacks"] == 0
    assert not unhandled(relay_log), unhandled(relay_log)[:5]
    assert not unhandled(daemon_log), unhandled(daemon_log)[:5]
    assert fuzz.sent >= FRAMES
    assert status["relay"]["registrations"] == 1  # the device's connection was never dropped
    assert not result.ended_by_device
    assert result.fps >= 0.8 * FPS, figures
    assert after.signaling == "relay"
    assert after.frames_decoded >= 10
    assert_bounded(base_rss, end_rss, fuzz.rss_mib, figures)
