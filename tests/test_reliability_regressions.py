"""Bugs the live fuzzer (test_fuzz_live.py) and the soak (test_soak.py) found, each pinned by the
smallest input that showed it.

The parsers of files on disk have theirs in test_state_file_properties.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from pathlib import Path

import pytest

from petcamd.protocol.messages import ErrorCode, FrameType, Offer, Ping
from petcamd.secure.channel import Closed, Received, ViewerChannel
from petcamd.webrtc.sessions import SessionManager, WebRtcSettings
from tests.reliability import without_candidates
from tests.test_fuzz_live import HTTP_JUNK, RawSocket, ws_frame
from tests.test_lan_signaling import lan_port, paired_viewer, raw_session, running_daemon
from tests.test_webrtc_harness import Viewer, running_hub, wait_for

pytestmark = pytest.mark.usefixtures("loopback_ice")


@pytest.mark.timeout(60)
async def test_a_channel_that_authenticates_and_breaks_in_one_burst_leaves_no_unawaited_coroutine(
    tmp_path: Path, bus_address: str
) -> None:
    """The first transport message authenticated the viewer, the next frame (in the same TCP read)
    ended the channel: the keepalive task was cancelled before it ever ran, and Python warned
    "coroutine 'Negotiator._keepalive' was never awaited" on the daemon's stderr."""
    async with running_daemon(tmp_path, bus_address) as daemon:
        state, device = await paired_viewer(daemon, tmp_path / "viewer")
        identity = await asyncio.to_thread(state.identity)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                channel = ViewerChannel.for_session(identity.private_key, device.device_key)
                sock = await RawSocket.open(lan_port(daemon), "127.0.0.1")
                assert await sock.upgrade("/ws")
                sock.send_binary(channel.start())
                reply = await sock.message()
                assert reply
                channel.feed(reply)
                broken = bytes([FrameType.TRANSPORT]) + bytes(40)  # does not decrypt
                sock.send(ws_frame(0x2, channel.send(Ping(1))) + ws_frame(0x2, broken))
                await sock.until_closed(3)
                await sock.close()
            await asyncio.sleep(0.2)
            gc.collect()
        assert not [w for w in caught if "never awaited" in str(w.message)]


DAMAGED_OFFERS = {
    # aiortc's parser raised StopIteration, which leaves a coroutine as a RuntimeError.
    "fmtp for a payload type the m= line lacks": ("a=mid:0\r\n", "a=mid:0\r\na=fmtp:77 x=y\r\n"),
    # Parsed, but aiortc's createAnswer raised ValueError on the missing direction.
    "no direction attribute": ("a=recvonly\r\n", ""),
    # Accepted by aiortc 1.4, whose connect task then failed an assertion ("Task exception was
    # never retrieved") once the viewer's ICE checks arrived.
    "no DTLS fingerprint": ("a=fingerprint:", "a=x-no-fingerprint:"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", DAMAGED_OFFERS.values(), ids=DAMAGED_OFFERS.keys())
async def test_an_offer_aiortc_cannot_use_is_a_bad_message_not_an_internal_error(
    tmp_path: Path, bus_address: str, caplog: pytest.LogCaptureFixture, damage: tuple[str, str]
) -> None:
    """Such offers were logged as "could not answer the offer" with a traceback, and the viewer
    was told INTERNAL, as if the device had failed."""
    caplog.set_level(logging.INFO)
    async with running_daemon(tmp_path, bus_address) as daemon:
        state, device = await paired_viewer(daemon, tmp_path / "viewer")
        identity = await asyncio.to_thread(state.identity)
        conn, channel = await raw_session(lan_port(daemon), identity, device.device_key)
        media = Viewer()
        original = await media.offer()
        assert damage[0] in original
        offer = original.replace(*damage)
        await conn.ws.send_bytes(channel.send(Offer(offer)))
        outputs = channel.feed((await conn.ws.receive(10)).data)
        await media.close()
        await conn.close()
    received = [o for o in outputs if isinstance(o, Received | Closed)]
    closed = [o for o in received if isinstance(o, Closed)]
    assert closed, received
    assert closed[0].code is ErrorCode.BAD_MESSAGE
    assert "Traceback" not in caplog.text
    assert "could not answer the offer" not in caplog.text


@pytest.mark.timeout(60)
async def test_unparsable_http_requests_are_not_logged_as_errors_with_tracebacks(
    tmp_path: Path, bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp logged each one at ERROR with a traceback, quoting the request's bytes, before any
    per-address limit applies: anyone on the LAN could flood the journal of a small SD card."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.set_level(logging.INFO)
    async with running_daemon(tmp_path, bus_address) as daemon:
        for junk in HTTP_JUNK:
            sock = await RawSocket.open(lan_port(daemon), "127.0.0.1")
            sock.send(junk + b"SECRET-REQUEST-MARKER")
            await sock.until_closed(2)
            await sock.close()
    errors = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.ERROR]
    assert errors == []
    assert "SECRET-REQUEST-MARKER" not in caplog.text


@pytest.mark.timeout(60)
async def test_a_session_whose_offer_had_no_candidates_leaves_no_ice_task_behind() -> None:
    """Found by the soak on Debian bookworm (aiortc 1.4, aioice 0.8): each such session that never
    connected left aiortc's connect task polling aioice every 20 ms forever, holding its peer
    connection, after the session was closed."""

    def connect_tasks() -> int:
        return sum("__connect" in getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks())

    async with running_hub() as (hub, _):
        manager = SessionManager(hub, WebRtcSettings())
        before = connect_tasks()
        ghost = Viewer()
        answer = await manager.answer("viewer", without_candidates(await ghost.offer()))
        assert answer
        await ghost.close()
        await asyncio.sleep(0.5)
        await manager.close_all("test")
        assert await wait_for(lambda: connect_tasks() <= before, 3), connect_tasks()
        await manager.stop()
