"""One viewer: an aiortc peer connection, its passthrough track and the watch that ends it.

A viewer that fails, hangs up or silently disappears must not keep a camera subscription, UDP
sockets or tasks alive: `_watch` closes the session on a failed/closed connection, when it stays
disconnected or never connects, and when the viewer's RTCP (receiver reports every ~1 s from
browsers and aiortc alike) stops arriving.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, OperationError

from petcamd.camera.source import FrameFeed
from petcamd.webrtc import aiortc_private
from petcamd.webrtc.codecs import NegotiationError, h264_preferences, require_h264
from petcamd.webrtc.ice import IceServer, rtc_configuration, strip_mdns_candidates
from petcamd.webrtc.track import PassthroughVideoTrack

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebRtcSettings:
    """The knobs of the WebRTC layer; the supervisor maps config sections onto these."""

    max_viewers: int = 4
    local_network_mode: bool = True
    """No STUN/TURN at all: candidates are the device's LAN addresses, setup never waits on a server."""
    ice_servers: tuple[IceServer, ...] = ()
    """Internet mode only (aiortc uses the first STUN and the first TURN server)."""
    gather_timeout_s: float = 0.5
    """Longest wait for each STUN/TURN server while answering; an unreachable one costs this."""
    connect_timeout_s: float = 10.0
    disconnect_timeout_s: float = 5.0
    feedback_timeout_s: float = 6.0
    """A connected viewer that sends no RTCP for this long is gone (browsers report every ~1 s)."""
    close_timeout_s: float = 3.0
    stats_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_viewers < 1:
            raise ValueError("max_viewers must be at least 1")
        if self.gather_timeout_s <= 0:
            raise ValueError("gather_timeout_s must be positive")


class SessionState(enum.Enum):
    NEGOTIATING = "negotiating"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class CandidateType(enum.Enum):
    """How media reaches the viewer: directly, through a NAT binding, or through TURN."""

    HOST = "host"
    SRFLX = "srflx"
    RELAY = "relay"

    @classmethod
    def of_pair(cls, local: str, remote: str) -> CandidateType:
        if "relay" in (local, remote):
            return cls.RELAY
        if {local, remote} - {"host"}:
            return cls.SRFLX  # srflx or prflx: NAT in between
        return cls.HOST


@dataclass(frozen=True, slots=True)
class SessionStats:
    session_id: str
    peer_id: str
    state: SessionState
    age_s: float
    fps: float
    bitrate_bps: float
    frames_sent: int
    bytes_sent: int
    keyframe_requests: int
    rtt_s: float | None
    remb_bps: int | None
    candidate_type: CandidateType | None
    local_candidate_type: str | None
    remote_candidate_type: str | None
    srtp_profile: str | None

    def status(self) -> dict[str, Any]:
        """The viewer as `petcamctl status` shows it (no addresses, no keys)."""
        return {
            "peer_id": self.peer_id,
            "state": self.state.value,
            "age_s": round(self.age_s, 1),
            "fps": round(self.fps, 1),
            "bitrate_bps": round(self.bitrate_bps),
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 1),
            "path": None if self.candidate_type is None else self.candidate_type.value,
            "srtp_profile": self.srtp_profile,
        }


class ViewerSession:
    """Owned by the SessionManager; `close()` releases everything and is safe to call any time."""

    def __init__(
        self,
        peer_id: str,
        feed: FrameFeed,
        settings: WebRtcSettings,
        *,
        on_connected: Callable[[ViewerSession], None],
        on_closed: Callable[[ViewerSession, str], None],
        on_bitrate: Callable[[ViewerSession], None],
    ) -> None:
        self.id = secrets.token_hex(6)
        self.peer_id = peer_id
        self.state = SessionState.NEGOTIATING
        self.close_reason: str | None = None
        self._settings = settings
        self._feed = feed
        self._on_connected = on_connected
        self._on_closed = on_closed
        self._on_bitrate = on_bitrate
        self._created = time.monotonic()
        self._connected_at: float | None = None
        self._last_feedback: float | None = None
        self._disconnected_since: float | None = None
        self._state_changed = asyncio.Event()
        self._pc: RTCPeerConnection | None = None
        self._sender: RTCRtpSender | None = None
        self._track: PassthroughVideoTrack | None = None
        self._guard: aiortc_private.GatheringGuard | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.keyframe_requests = 0
        self.remb_bps: int | None = None
        self._rtt_s: float | None = None
        self._pair: aiortc_private.SelectedPair | None = None
        self._srtp_profile: str | None = None

    @property
    def closing(self) -> bool:
        return self._closing is not None

    @property
    def connected_at(self) -> float | None:
        return self._connected_at

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the viewer's offer and return our answer, ICE candidates included (no trickle)."""
        s = self._settings
        self._raise_if_closing()
        pc = RTCPeerConnection(rtc_configuration(s.ice_servers, local_network_mode=s.local_network_mode))
        self._pc = pc
        pc.on("connectionstatechange", self._connection_state_changed)
        self._track = PassthroughVideoTrack(self._feed.subscribe(f"webrtc-{self.id}"))
        self._track.on("ended", self._track_ended)
        transceiver = pc.addTransceiver(self._track, direction="sendonly")
        transceiver.setCodecPreferences(h264_preferences())
        aiortc_private.install_feedback_hook(transceiver.sender, self)
        self._sender = transceiver.sender

        offer = strip_mdns_candidates(offer_sdp)
        if "a=fingerprint:" not in offer.sdp:
            # No DTLS fingerprint, no authenticated media. aiortc 1.4 accepts such an offer and
            # then fails an assertion in a task of its own once ICE connects.
            raise NegotiationError("offer has no DTLS fingerprint")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        except (OperationError, InvalidAccessError) as exc:
            raise NegotiationError(f"offer cannot carry H.264 video: {exc}") from exc
        except Exception as exc:
            # The offer is the viewer's: whatever aiortc's SDP parser raises on it (ValueError,
            # KeyError, a StopIteration turned RuntimeError, ...) means the offer is unusable.
            raise NegotiationError(f"unusable offer: {type(exc).__name__}: {exc}") from exc
        self._raise_if_closing()
        if transceiver.mid is None:
            raise NegotiationError("offer has no video section")
        # aiortc < 1.5 reports "connected" after the viewer's DTLS close: watch DTLS itself too.
        self._sender.transport.on("statechange", self._connection_state_changed)
        self._guard = aiortc_private.GatheringGuard(pc, s.gather_timeout_s)
        try:
            answer_description = await pc.createAnswer()
        except Exception as exc:  # built from the viewer's offer, e.g. a media section with no direction
            raise NegotiationError(f"no answer to this offer: {type(exc).__name__}: {exc}") from exc
        await pc.setLocalDescription(answer_description)
        answer: str = pc.localDescription.sdp
        require_h264(answer)
        self._raise_if_closing()
        self.state = SessionState.CONNECTING
        self._watch_task = asyncio.create_task(self._watch(), name=f"webrtc-watch-{self.id}")
        return answer

    def _raise_if_closing(self) -> None:
        """A session closed mid-setup (revoked, replaced, shutdown) must not allocate anything more."""
        if self.closing:
            raise NegotiationError(f"session closed during setup: {self.close_reason}")

    # --- RtcpFeedbackSink -----------------------------------------------------------------------

    def keyframe_requested(self) -> None:
        self.keyframe_requests += 1
        if self._track is not None:
            self._track.request_keyframe()

    def bitrate_estimated(self, bps: int) -> None:
        self.remb_bps = bps
        self._on_bitrate(self)

    def feedback_received(self) -> None:
        self._last_feedback = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------------

    def _connection_state_changed(self) -> None:
        self._state_changed.set()

    def _track_ended(self) -> None:
        self._state_changed.set()

    async def _watch(self) -> None:
        s = self._settings
        loop = asyncio.get_running_loop()
        while True:
            # Woken by a state change or the next stats tick; an Event plus call_later rather than
            # asyncio.wait_for, which on Python 3.11 can swallow the cancellation of its caller.
            tick = loop.call_later(s.stats_interval_s, self._state_changed.set)
            try:
                await self._state_changed.wait()
            finally:
                tick.cancel()
            self._state_changed.clear()
            if self.closing:
                return
            reason = self._check()
            if reason is not None:
                self._begin_close(reason)
                return
            if self.state is SessionState.CONNECTED:
                await self._poll_rtt()

    def _check(self) -> str | None:
        """Why the session must end now, if it must."""
        if self._pc is None:
            return "no peer connection"
        s = self._settings
        now = time.monotonic()
        pc_state = self._pc.connectionState
        if pc_state in ("failed", "closed"):
            return f"connection {pc_state}"
        dtls_state = self._sender.transport.state if self._sender is not None else None
        if dtls_state in ("failed", "closed"):
            return f"DTLS {dtls_state}"
        if self._track is not None and self._track.readyState == "ended":
            return "camera feed ended" if self._track.feed_closed else "media track ended"
        if pc_state == "connected" and self.state is not SessionState.CONNECTED:
            self._mark_connected(self._pc, now)
        if self.state is not SessionState.CONNECTED:
            if now - self._created > s.connect_timeout_s:
                return f"not connected after {s.connect_timeout_s:g} s"
            return None
        if pc_state == "disconnected":
            if self._disconnected_since is None:
                self._disconnected_since = now
            elif now - self._disconnected_since > s.disconnect_timeout_s:
                return f"disconnected for {s.disconnect_timeout_s:g} s"
        else:
            self._disconnected_since = None
        last = self._last_feedback if self._last_feedback is not None else self._connected_at
        if last is not None and now - last > s.feedback_timeout_s:
            return f"no RTCP from the viewer for {s.feedback_timeout_s:g} s"
        return None

    def _mark_connected(self, pc: RTCPeerConnection, now: float) -> None:
        self.state = SessionState.CONNECTED
        self._connected_at = now
        try:
            self._pair = aiortc_private.selected_pair(pc)
            self._srtp_profile = aiortc_private.srtp_profile(pc)
        except Exception:
            # Status details only: never let them take the session down.
            log.exception("cannot read the selected candidate pair / SRTP profile")
        log.info(
            "viewer %s (session %s) connected via %s, %s",
            self.peer_id,
            self.id,
            self._pair.local_type + "/" + self._pair.remote_type if self._pair else "?",
            self._srtp_profile or "?",
        )
        self._on_connected(self)

    async def _poll_rtt(self) -> None:
        if self._sender is not None:
            report = await self._sender.getStats()
            for stat in report.values():
                if stat.type == "remote-inbound-rtp" and stat.roundTripTime is not None:
                    self._rtt_s = float(stat.roundTripTime)

    def _begin_close(self, reason: str) -> asyncio.Task[None]:
        if self._closing is None:
            self.close_reason = reason
            self._closing = asyncio.create_task(self._close(reason), name=f"webrtc-close-{self.id}")
        return self._closing

    def close_soon(self, reason: str) -> None:
        """Start closing without waiting (the session counts as gone from now on)."""
        self._begin_close(reason)

    async def close(self, reason: str = "closed") -> None:
        """Idempotent; concurrent callers all wait for the one close to finish."""
        await asyncio.shield(self._begin_close(reason))

    async def _close(self, reason: str) -> None:
        self.state = SessionState.CLOSED
        watch = self._watch_task
        if watch is not None:
            self._state_changed.set()  # the watch sees `_closing` and returns
            await asyncio.wait({watch}, timeout=self._settings.close_timeout_s)
            if not watch.done():
                watch.cancel()
        if self._track is not None:
            self._track.stop()
        if self._pc is not None:
            try:
                await asyncio.wait_for(self._pc.close(), self._settings.close_timeout_s)
                aiortc_private.end_connectivity_checks(self._pc)
            except TimeoutError:
                log.warning("session %s: peer connection did not close in time", self.id)
            except Exception:
                log.exception("session %s: error while closing the peer connection", self.id)
        if self._guard is not None:
            self._guard.close()
        log.info("viewer %s (session %s) closed: %s", self.peer_id, self.id, reason)
        self._on_closed(self, reason)

    def stats(self) -> SessionStats:
        counters = self._track.counters() if self._track is not None else None
        pair = self._pair
        return SessionStats(
            session_id=self.id,
            peer_id=self.peer_id,
            state=self.state,
            age_s=time.monotonic() - self._created,
            fps=counters.fps if counters else 0.0,
            bitrate_bps=counters.bitrate_bps if counters else 0.0,
            frames_sent=counters.frames_sent if counters else 0,
            bytes_sent=counters.bytes_sent if counters else 0,
            keyframe_requests=self.keyframe_requests,
            rtt_s=self._rtt_s,
            remb_bps=self.remb_bps,
            candidate_type=CandidateType.of_pair(pair.local_type, pair.remote_type) if pair else None,
            local_candidate_type=pair.local_type if pair else None,
            remote_candidate_type=pair.remote_type if pair else None,
            srtp_profile=self._srtp_profile,
        )
