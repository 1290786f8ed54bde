"""Shared pieces of the reliability tests (test_fuzz_live, test_soak, test_faults, test_resource_limits;
this module holds no tests).

- One switch for scale: `PETCAMD_SOAK=1` (what `make soak` sets) runs the same test code with the
  issue's numbers instead of the short ones `make test` uses.
- `report()` prints a test's figures as one JSON line and a small table, even under pytest's output
  capture, and keeps both in out/soak/ (the Makefile prints them after a soak run).
- Process probes read /proc, so a daemon or relay process is measured from outside.
- `ChannelViewer` is a viewer driven frame by frame over the device's LAN WebSocket, for what
  petcam-view never does: drop the connection without a word, or offer media ICE cannot use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest

from petcamd.protocol.messages import Answer, Message, Offer
from petcamd.secure.channel import Closed, Received, SendFrame, ViewerChannel
from petcamd.secure.identity import Identity
from tests.test_lan_signaling import RawConnection, raw_session
from tests.test_webrtc_harness import Viewer

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "out" / "soak"

SOAK = os.environ.get("PETCAMD_SOAK") == "1"
"""Long runs with the issue's numbers (`make soak`); short ones otherwise (`make test`)."""


def scaled(short: int, long: int) -> int:
    return long if SOAK else short


def time_limit(short_s: float, long_s: float) -> float:
    """A test's timeout marker value for the current scale."""
    return long_s if SOAK else short_s


# --- figures --------------------------------------------------------------------------------------


def report(capsys: pytest.CaptureFixture[str], name: str, figures: Mapping[str, object]) -> None:
    """One JSON line and a two-column table on the terminal, and the same in out/soak/<name>.*."""
    document = {"test": name, "scale": "long" if SOAK else "short", **figures}
    line = json.dumps(document, sort_keys=False, default=str)
    width = max(len(key) for key in document)
    table = "\n".join(f"  {key:<{width}}  {_shown(value)}" for key, value in document.items())
    with capsys.disabled():
        print(f"\n{line}\n{table}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(line + "\n")
    (RESULTS_DIR / f"{name}.txt").write_text(f"{name}\n{table}\n")


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# --- processes, from outside ----------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS), KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None, "no VmRSS in /proc/PID/status"
    return int(match.group(1))


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


UNHANDLED = (
    "Traceback",
    "Task exception was never retrieved",
    "Exception in callback",
    "Error handling request",
    "Unhandled exception",
    "unhandled exception",
    "was never awaited",
)
"""What a log shows when an exception escaped the code that should have handled it."""

_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def log_records(log: str) -> list[str]:
    """A log as records: a timestamped line and the lines (a traceback, a warning) after it."""
    records: list[str] = []
    for line in log.splitlines():
        if _RECORD_START.match(line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    return records


def malformed_request_record(record: str) -> bool:
    """aiohttp's ERROR record, with traceback, of a request it could not parse (it answered 400)."""
    return "Error handling request" in record and "aiohttp.http_exceptions." in record


def unhandled(log: str, *, except_malformed_requests: bool = False) -> list[str]:
    """The records that show an escaped exception; optionally not aiohttp's malformed-request ones."""
    return [
        record
        for record in log_records(log)
        if any(mark in record for mark in UNHANDLED)
        and not (except_malformed_requests and malformed_request_record(record))
    ]


@contextlib.contextmanager
def measured(figures: dict[str, object], key: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        figures[key] = round(time.monotonic() - started, 3)


# --- a viewer driven by hand -------------------------------------------------------------------------


def without_candidates(sdp: str) -> str:
    """An offer that names no address at all: the device's ICE has nothing to check against."""
    return "".join(
        line for line in sdp.splitlines(keepends=True) if not line.startswith(("a=candidate", "a=end-of"))
    )


class ChannelViewer:
    """A session over the LAN WebSocket (Noise IK), with a real aiortc receiver for the media.

    Each decoded frame's arrival time is in `media.frames`; `closed` is set when the device ends
    the channel (its `bye` after an ICE failure, for instance).
    """

    def __init__(self, conn: RawConnection, channel: ViewerChannel) -> None:
        self.conn = conn
        self.channel = channel
        self.media = Viewer()
        self.closed: Closed | None = None
        self.ended = asyncio.Event()
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, identity: Identity, device_key: bytes) -> ChannelViewer:
        conn, channel = await raw_session(port, identity, device_key)
        viewer = cls(conn, channel)
        viewer._reader = asyncio.create_task(viewer._read(), name="channel-viewer-reader")
        return viewer

    @classmethod
    async def streaming(cls, port: int, identity: Identity, device_key: bytes) -> ChannelViewer:
        """Open a session and start video; returns once frames arrive (5 within 10 s)."""
        viewer = await cls.open(port, identity, device_key)
        await viewer.start_video()
        assert await viewer.wait_frames(5, 10), "no video"
        return viewer

    async def start_video(
        self, *, usable: bool = True, keep_candidates: bool = False, within: float = 10.0
    ) -> None:
        """Offer, apply the answer. When not `usable`, the peer connection closes right after the
        answer (and the offer names no candidates unless `keep_candidates`): ICE can only fail."""
        offer = await self.media.offer()
        if not usable and not keep_candidates:
            offer = without_candidates(offer)
        await self.conn.ws.send_bytes(self.channel.send(Offer(offer)))
        answer = await self._expect(Answer, within)
        if usable:
            await self.media.accept(answer.sdp)
        else:
            await self.media.close()

    async def wait_frames(self, count: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while len(self.media.frames) < count and time.monotonic() < deadline and not self.ended.is_set():  # noqa: ASYNC110 - polls a count
            await asyncio.sleep(0.02)
        return len(self.media.frames) >= count

    async def bye(self) -> None:
        """The orderly end: `bye`, WebSocket close, then the peer connection."""
        for output in self.channel.close():
            if isinstance(output, SendFrame):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.conn.ws.send_bytes(output.data)
        await self._finish()

    async def drop(self) -> None:
        """As if the viewer's process died: the TCP connection goes, no `bye`, no WebSocket close.
        The media stays up until the caller `release()`s it (a dead phone sends no DTLS alert)."""
        sock = self.conn.ws.get_extra_info("socket")  # asyncio's TransportSocket
        assert sock is not None, "the WebSocket has no socket"
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._reader), 5)

    async def release(self) -> None:
        await self._finish()

    async def _finish(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await self.conn.close()
        await self.media.close()

    async def _expect(self, kind: type[Answer], within: float) -> Answer:
        async with asyncio.timeout(within):
            while True:
                get = asyncio.ensure_future(self._inbox.get())
                ended = asyncio.ensure_future(self.ended.wait())
                await asyncio.wait({get, ended}, return_when=asyncio.FIRST_COMPLETED)
                ended.cancel()
                if not get.done():
                    get.cancel()
                    raise AssertionError(f"the device ended the channel before answering: {self.closed}")
                message = get.result()
                if isinstance(message, kind):
                    return message

    async def _read(self) -> None:
        try:
            while not self.channel.is_closed:
                message = await self.conn.ws.receive()
                if message.type == aiohttp.WSMsgType.BINARY:
                    outputs = self.channel.feed(message.data)
                else:
                    outputs = self.channel.connection_lost()
                for output in outputs:
                    if isinstance(output, SendFrame):  # pongs
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await self.conn.ws.send_bytes(output.data)
                    elif isinstance(output, Received):
                        self._inbox.put_nowait(output.message)
                    elif isinstance(output, Closed):
                        self.closed = output
        finally:
            self.ended.set()
