"""The session manager: every viewer's peer connection is created, counted and ended here.

The signaling layer calls `answer()` with an authenticated viewer's offer; control and the
supervisor call `close_peer()` (revocation), `stats()` (status) and `stop()` (shutdown).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from petcamd.camera.source import FrameFeed
from petcamd.webrtc import aiortc_private
from petcamd.webrtc.codecs import NegotiationError
from petcamd.webrtc.session import SessionStats, ViewerSession, WebRtcSettings

log = logging.getLogger(__name__)

__all__ = [
    "BitrateControl",
    "NegotiationError",
    "SessionEvent",
    "SessionEventKind",
    "SessionManager",
    "SessionManagerClosedError",
    "TooManyViewersError",
    "WebRtcSettings",
]


class TooManyViewersError(Exception):
    """`max_viewers` sessions are open already (none of them this peer's own)."""

    def __init__(self, max_viewers: int) -> None:
        super().__init__(f"already serving the maximum of {max_viewers} viewer(s)")
        self.max_viewers = max_viewers


class SessionManagerClosedError(Exception):
    """The manager was stopped (daemon shutting down)."""


class BitrateControl(Protocol):
    """Whatever can change the encoder's target bitrate (the hub or the source)."""

    def set_bitrate(self, bps: int) -> None: ...


@dataclass(frozen=True, slots=True)
class BitrateBounds:
    """Receiver estimates (REMB) may move the encoder only within these bounds."""

    min_bps: int = 300_000
    max_bps: int = 2_500_000
    min_change: float = 0.1
    """Relative change below which the encoder is left alone (estimates jitter constantly)."""


class SessionEventKind(enum.Enum):
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionEvent:
    kind: SessionEventKind
    session_id: str
    peer_id: str
    reason: str | None = None


SessionListener = Callable[[SessionEvent], None]


class SessionManager:
    """Owns all peer connections. Single event loop; every public coroutine is cancellation-safe."""

    def __init__(
        self,
        feed: FrameFeed,
        settings: WebRtcSettings | None = None,
        *,
        bitrate_control: BitrateControl | None = None,
        bitrate_bounds: BitrateBounds | None = None,
    ) -> None:
        aiortc_private.check_supported()
        self._feed = feed
        self._settings = settings or WebRtcSettings()
        self._bitrate_control = bitrate_control
        self._bounds = bitrate_bounds or BitrateBounds()
        self._applied_bitrate: int | None = None
        self._sessions: dict[str, ViewerSession] = {}
        self._listeners: list[SessionListener] = []
        self._stopped = False

    @property
    def settings(self) -> WebRtcSettings:
        return self._settings

    def reconfigure(self, settings: WebRtcSettings) -> None:
        """New sessions use ``settings`` (a network mode switch); live ones keep what they negotiated."""
        self._settings = settings

    @property
    def sessions(self) -> tuple[SessionStats, ...]:
        return tuple(session.stats() for session in self._sessions.values())

    def stats(self) -> list[SessionStats]:
        return list(self.sessions)

    def add_listener(self, listener: SessionListener) -> Callable[[], None]:
        """Called on the event loop for connected/closed events; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def answer(self, peer_id: str, offer_sdp: str) -> str:
        """Start a session for an authenticated viewer; returns the SDP answer (H.264 only).

        Raises TooManyViewersError, NegotiationError or SessionManagerClosedError; on any failure
        (or cancellation) everything allocated for the attempt is released before returning.
        """
        _session_id, answer_sdp = await self.answer_session(peer_id, offer_sdp)
        return answer_sdp

    async def answer_session(self, peer_id: str, offer_sdp: str) -> tuple[str, str]:
        """`answer`, also returning the new session's id, so the signaling channel that asked for
        it can end exactly that session when the channel ends."""
        if self._stopped:
            raise SessionManagerClosedError("the WebRTC session manager is stopped")
        displaced = self._make_room(peer_id)
        session = ViewerSession(
            peer_id,
            self._feed,
            self._settings,
            on_connected=self._session_connected,
            on_closed=self._session_closed,
            on_bitrate=self._bitrate_estimated,
        )
        self._sessions[session.id] = session
        try:
            if displaced is not None:
                await displaced.close("replaced by a new session of the same viewer")
            return session.id, await session.negotiate(offer_sdp)
        except Exception as exc:
            closed_under_us = session.close_reason
            await session.close("setup failed")
            if closed_under_us is not None and not isinstance(exc, NegotiationError):
                raise NegotiationError(f"session closed during setup: {closed_under_us}") from exc
            raise
        except BaseException:
            await session.close("setup cancelled")
            raise

    def _make_room(self, peer_id: str) -> ViewerSession | None:
        """At capacity, a viewer reconnecting (e.g. a reloaded page) displaces its own oldest session."""
        live = [s for s in self._sessions.values() if not s.closing]
        if len(live) < self._settings.max_viewers:
            return None
        own = [s for s in live if s.peer_id == peer_id]
        if not own:
            raise TooManyViewersError(self._settings.max_viewers)
        oldest = own[0]
        oldest.close_soon("replaced by a new session of the same viewer")
        return oldest

    async def close_session(self, session_id: str, reason: str = "closed") -> bool:
        session = self._sessions.get(session_id)
        if session is None:
            return False
        await session.close(reason)
        return True

    async def close_peer(self, peer_id: str, reason: str = "peer revoked") -> int:
        """Close every live session of `peer_id` (e.g. when its key is revoked); returns how many."""
        victims = [s for s in self._sessions.values() if s.peer_id == peer_id]
        await asyncio.gather(*(s.close(reason) for s in victims))
        return len(victims)

    async def close_all(self, reason: str = "closed") -> None:
        await asyncio.gather(*(s.close(reason) for s in list(self._sessions.values())))

    async def start(self) -> None:
        """Nothing to start (sessions are created on demand); here to be a lifecycle Component."""

    async def stop(self) -> None:
        """Refuse new viewers and close all sessions. Idempotent."""
        self._stopped = True
        await self.close_all("shutting down")

    # --- callbacks from sessions ----------------------------------------------------------------

    def _emit(self, event: SessionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("session listener failed")

    def _session_connected(self, session: ViewerSession) -> None:
        self._emit(SessionEvent(SessionEventKind.CONNECTED, session.id, session.peer_id))

    def _session_closed(self, session: ViewerSession, reason: str) -> None:
        self._sessions.pop(session.id, None)
        self._emit(SessionEvent(SessionEventKind.CLOSED, session.id, session.peer_id, reason))
        self._bitrate_estimated(None)

    def _bitrate_estimated(self, _session: ViewerSession | None) -> None:
        """The encoder is shared: follow the slowest viewer's estimate, within the configured bounds."""
        if self._bitrate_control is None:
            return
        b = self._bounds
        estimates = [s.remb_bps for s in self._sessions.values() if s.remb_bps is not None]
        if not estimates and self._applied_bitrate is None:
            return
        target = max(b.min_bps, min(b.max_bps, *estimates)) if estimates else b.max_bps
        applied = self._applied_bitrate
        if applied is not None and abs(target - applied) < b.min_change * applied:
            return
        self._applied_bitrate = target
        log.debug("encoder bitrate -> %d bps (%d estimate(s))", target, len(estimates))
        self._bitrate_control.set_bitrate(target)
