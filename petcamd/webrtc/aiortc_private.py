"""The only module that reaches into aiortc's and aioice's private parts.

aiortc has no public hook for what a passthrough sender needs: it swallows a viewer's PLI/FIR and
REMB (they only ever reach its own encoder), hides the selected candidate pair and the SRTP
profile, and lets an unreachable STUN/TURN server stall `setLocalDescription` for 5 s or more.
Everything here is checked against aiortc 1.4 (Debian bookworm), 1.11 (trixie) and the newest
PyPI release; `check_supported()` and tests/test_webrtc_private.py fail loudly when an upgrade
moves something, rather than letting viewers silently wait for the next periodic keyframe.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import aioice
import aioice.ice
import aiortc
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc import rtp as aiortc_rtp

log = logging.getLogger(__name__)

RTCP_PSFB_FIR = 4
"""Full Intra Request (RFC 5104 section 4.3.1); aiortc 1.4 has no name for it and ignores it."""

SRTP_AES128_CM_SHA1_80 = "SRTP_AES128_CM_SHA1_80"

_HOOK_MARK = "_petcamd_feedback_hook"


class PrivateApiError(RuntimeError):
    """The installed aiortc/aioice no longer has what this module relies on."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} (aiortc {aiortc.__version__}, aioice {aioice.__version__}): "
            "petcamd.webrtc.aiortc_private needs updating for this version"
        )


class RtcpFeedbackSink(Protocol):
    """Receives what a viewer's RTCP says about our stream; called on the event loop."""

    def keyframe_requested(self) -> None: ...

    def bitrate_estimated(self, bps: int) -> None: ...

    def feedback_received(self) -> None:
        """Any RTCP about our stream arrived: the viewer is still there."""


def check_supported() -> None:
    """Raise PrivateApiError unless every private name used below exists with the expected shape."""
    handler = getattr(RTCRtpSender, "_handle_rtcp_packet", None)
    if handler is None or not inspect.iscoroutinefunction(handler):
        raise PrivateApiError("RTCRtpSender._handle_rtcp_packet is gone or no longer a coroutine")
    for name in ("RtcpPsfbPacket", "RtcpRrPacket", "RtcpSrPacket", "RTCP_PSFB_PLI", "RTCP_PSFB_APP"):
        if not hasattr(aiortc_rtp, name):
            raise PrivateApiError(f"aiortc.rtp.{name} is gone")
    if not callable(getattr(aiortc_rtp, "unpack_remb_fci", None)):
        raise PrivateApiError("aiortc.rtp.unpack_remb_fci is gone")
    if "_remote_candidates_end" not in aioice.ice.Connection.__init__.__code__.co_names:
        raise PrivateApiError("aioice Connection._remote_candidates_end is gone")
    gatherer = getattr(aioice.ice.Connection, "get_component_candidates", None)
    if gatherer is None or "timeout" not in inspect.signature(gatherer).parameters:
        raise PrivateApiError("aioice Connection.get_component_candidates(timeout=) is gone")


# --- keyframe requests and bandwidth estimates -------------------------------------------------


def install_feedback_hook(sender: RTCRtpSender, sink: RtcpFeedbackSink) -> None:
    """Show `sink` every RTCP packet the transport routes to `sender`, then let aiortc handle it."""
    original = getattr(sender, "_handle_rtcp_packet", None)
    ssrc = getattr(sender, "_ssrc", None)
    if original is None or not isinstance(ssrc, int):
        raise PrivateApiError("RTCRtpSender has no _handle_rtcp_packet/_ssrc to hook")
    if getattr(sender, _HOOK_MARK, False):
        raise RuntimeError("feedback hook already installed on this sender")

    async def handle_rtcp_packet(packet: Any) -> None:
        try:
            _dispatch(packet, ssrc, sink)
        except Exception:
            log.exception("RTCP feedback handler failed")
        await original(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]
    setattr(sender, _HOOK_MARK, True)


def _dispatch(packet: Any, ssrc: int, sink: RtcpFeedbackSink) -> None:
    if isinstance(packet, aiortc_rtp.RtcpPsfbPacket):
        if packet.fmt in (aiortc_rtp.RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            sink.feedback_received()
            sink.keyframe_requested()
        elif packet.fmt == aiortc_rtp.RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = aiortc_rtp.unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if ssrc in ssrcs:
                sink.feedback_received()
                sink.bitrate_estimated(int(bitrate))
    elif isinstance(packet, aiortc_rtp.RtcpRrPacket | aiortc_rtp.RtcpSrPacket):
        if any(report.ssrc == ssrc for report in packet.reports):
            sink.feedback_received()
    else:
        # NACKs and anything else the router sent us are about our stream too.
        sink.feedback_received()


# --- bounded candidate gathering ---------------------------------------------------------------


def _ice_connections(pc: RTCPeerConnection) -> Iterator[Any]:
    seen: set[int] = set()
    transports = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        connection = getattr(dtls.transport.iceGatherer, "_connection", None)
        if connection is None:
            raise PrivateApiError("RTCIceGatherer._connection is gone")
        if id(connection) not in seen:
            seen.add(id(connection))
            yield connection


class GatheringGuard:
    """Bounds the STUN and TURN waits of every ICE agent of one peer connection.

    aioice waits 5 s for a STUN answer and, before 0.10, has no bound at all on a TURN allocation
    (an unreachable TURN server even fails the whole gathering). Each server gets `timeout_s`, so
    STUN and TURN both unreachable cost twice that. A TURN attempt still running then is abandoned
    rather than cancelled, because aioice up to at least 0.10.2 leaks the socket of a cancelled
    allocation: it ends on aioice's own retransmission timers (aioice 0.13 bounds it itself; 0.8
    and 0.9 hold one socket and one task for ~64 s), and whatever it opened is closed here if
    the session is gone by then.
    """

    def __init__(self, pc: RTCPeerConnection, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._closed = False
        self._stragglers: set[asyncio.Future[Any]] = set()
        for connection in _ice_connections(pc):
            self._wrap(connection)

    def _wrap(self, connection: Any) -> None:
        original: Callable[..., Coroutine[Any, Any, list[Any]]] = connection.get_component_candidates
        if not hasattr(connection, "stun_server") or not hasattr(connection, "turn_server"):
            raise PrivateApiError("aioice Connection has no stun_server/turn_server")

        async def get_component_candidates(component: int, addresses: list[str], **_: Any) -> list[Any]:
            return await self._gather(connection, original, component, addresses)

        connection.get_component_candidates = get_component_candidates

    async def _gather(
        self,
        connection: Any,
        original: Callable[..., Coroutine[Any, Any, list[Any]]],
        component: int,
        addresses: list[str],
    ) -> list[Any]:
        turn_server = connection.turn_server
        connection.turn_server = None
        try:
            candidates = list(
                await original(component=component, addresses=addresses, timeout=self._timeout_s)
            )
        finally:
            connection.turn_server = turn_server
        if turn_server is None:
            return candidates

        # The TURN part alone: no host addresses, no STUN, same component.
        stun_server = connection.stun_server
        connection.stun_server = None
        try:
            attempt = asyncio.create_task(
                original(component=component, addresses=[], timeout=self._timeout_s),
                name="webrtc-turn-allocation",
            )
            done, _ = await asyncio.wait({attempt}, timeout=self._timeout_s)
        finally:
            connection.stun_server = stun_server
        if not done:
            log.warning("TURN server %s:%s did not answer within %.2f s", *turn_server, self._timeout_s)
            self._stragglers.add(attempt)
            attempt.add_done_callback(lambda fut: self._straggler_done(connection, fut))
            return candidates
        if attempt.exception() is not None:
            log.warning("TURN server %s:%s failed: %s", *turn_server, attempt.exception())
            return candidates
        return candidates + list(attempt.result())

    def _straggler_done(self, connection: Any, attempt: asyncio.Future[Any]) -> None:
        self._stragglers.discard(attempt)
        if attempt.cancelled() or attempt.exception() is not None:
            return
        if self._closed:
            # The connection closed its protocols before this one was added: close it here.
            for protocol in list(getattr(connection, "_protocols", [])):
                closing = asyncio.create_task(protocol.close(), name="webrtc-turn-cleanup")
                self._stragglers.add(closing)
                closing.add_done_callback(self._stragglers.discard)

    def close(self) -> None:
        """Called once the peer connection is closed."""
        self._closed = True


def end_connectivity_checks(pc: RTCPeerConnection) -> None:
    """Let aioice's connectivity checks end with the (closed) peer connection.

    While no remote candidate has arrived (an offer without candidates, from a viewer that
    trickles them or from none at all), aioice up to 0.8 (Debian bookworm) polls every 20 ms
    until end-of-candidates, and its close() does not stop that loop: aiortc 1.4's connect task
    then runs forever, holding the peer connection. Declaring the remote candidates complete ends
    the loop (the checks fail, as they would have); later aioice versions stop on close anyway.
    """
    for connection in _ice_connections(pc):
        if not hasattr(connection, "_remote_candidates_end"):
            raise PrivateApiError("aioice Connection._remote_candidates_end is gone")
        connection._remote_candidates_end = True


# --- introspection for session stats ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SelectedPair:
    local_type: str
    remote_type: str
    local_address: tuple[str, int]
    remote_address: tuple[str, int]


def selected_pair(pc: RTCPeerConnection) -> SelectedPair | None:
    """The nominated candidate pair of the (bundled) media transport, if ICE has completed."""
    for connection in _ice_connections(pc):
        nominated = getattr(connection, "_nominated", None)
        if not isinstance(nominated, dict):
            raise PrivateApiError("aioice Connection._nominated is gone")
        pair = nominated.get(1)
        if pair is not None:
            local, remote = pair.local_candidate, pair.remote_candidate
            return SelectedPair(
                local_type=str(local.type),
                remote_type=str(remote.type),
                local_address=(str(local.host), int(local.port)),
                remote_address=(str(remote.host), int(remote.port)),
            )
    return None


def srtp_profile(pc: RTCPeerConnection) -> str | None:
    """The SRTP protection profile DTLS negotiated, e.g. "SRTP_AEAD_AES_128_GCM"."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        ssl = getattr(dtls, "_ssl", None) or getattr(dtls, "ssl", None)  # renamed in aiortc 1.5
        if ssl is None:
            if dtls.state == "connected":
                raise PrivateApiError("RTCDtlsTransport has no _ssl/ssl connection")
            continue
        getter = getattr(ssl, "get_selected_srtp_profile", None)
        if getter is None:
            # pyOpenSSL < 23.2 cannot tell, but aiortc < 1.7 offers exactly one profile.
            if hasattr(dtls, "_srtp_profiles"):
                raise PrivateApiError("cannot read the negotiated SRTP profile")
            return SRTP_AES128_CM_SHA1_80 if dtls.state == "connected" else None
        profile = getter()
        if profile:
            return profile.decode() if isinstance(profile, bytes) else str(profile)
    return None
