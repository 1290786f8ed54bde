"""One viewer connection's signaling: a DeviceChannel's outputs turned into the daemon's actions.

Transport-agnostic: whoever carries the frames (the LAN server's WebSocket today, the relay client
later) creates a :class:`Negotiator` with a coroutine that sends one frame and one that closes
the connection, feeds it every received frame and tells it when the connection is gone.

The channel alone decides what is authentic. This module owns the rest of the connection's life:
the deadline to authenticate, liveness pings, the viewer's WebRTC session (created only from an
authenticated offer, ended with the channel) and the bookkeeping that lets a revocation end both.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.messages import Answer, ErrorCode, Ice, Keyframe, Message, Offer, Ping, ProtocolError
from petcamd.secure.channel import (
    Authenticated,
    ChannelClosedError,
    Closed,
    DeviceChannel,
    LiveChannels,
    Output,
    PeerDirectory,
    Received,
    SendFrame,
)
from petcamd.secure.pairing import PairingWindow
from petcamd.webrtc.sessions import (
    NegotiationError,
    SessionEvent,
    SessionEventKind,
    SessionManagerClosedError,
    TooManyViewersError,
)

log = logging.getLogger(__name__)

__all__ = [
    "FrameSender",
    "Negotiator",
    "NegotiatorSettings",
    "PairingHost",
    "PeerStore",
    "Sessions",
    "Signaling",
]

FrameSender = Callable[[bytes], Awaitable[object]]
"""Sends one frame as one message of the transport; raises if the connection is gone."""
TransportCloser = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class NegotiatorSettings:
    handshake_timeout_s: float = 10.0
    """From the connection's start to the viewer's first authenticated message."""
    ping_interval_s: float = 15.0
    """Ping an authenticated viewer that has sent nothing for this long."""
    idle_timeout_s: float = 45.0
    """Close an authenticated channel that has sent nothing (not even a pong) for this long."""
    close_timeout_s: float = 1.5
    """Longest wait for a connection's last frames and its session's close when the channel ends."""

    def __post_init__(self) -> None:
        if min(self.handshake_timeout_s, self.ping_interval_s, self.close_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if self.idle_timeout_s <= self.ping_interval_s:
            raise ValueError("idle_timeout_s must exceed ping_interval_s, or a quiet viewer is never pinged")


class PeerStore(PeerDirectory, Protocol):
    """The keystore as signaling needs it."""

    def touch(self, peer_id: str, when: float) -> None: ...


class PairingHost(Protocol):
    """The owner of the pairing window (the controller)."""

    @property
    def active_window(self) -> PairingWindow | None: ...

    def pairing_completed(self, window: PairingWindow) -> None: ...


class Sessions(Protocol):
    """The WebRTC session manager as signaling needs it."""

    async def answer_session(self, peer_id: str, offer_sdp: str) -> tuple[str, str]: ...

    async def close_session(self, session_id: str, reason: str = "closed") -> bool: ...

    async def close_peer(self, peer_id: str, reason: str = "peer revoked") -> int: ...

    def add_listener(self, listener: Callable[[SessionEvent], None]) -> Callable[[], None]: ...


class Signaling:
    """What every connection shares: keys, stores, sessions, live channels. Call it per connection."""

    def __init__(
        self,
        *,
        static_private: X25519PrivateKey,
        device_name: str,
        peers: PeerStore,
        pairing: PairingHost,
        sessions: Sessions,
        request_keyframe: Callable[[], None],
        settings: NegotiatorSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.static_private = static_private
        self.device_name = device_name
        self.peers = peers
        self.pairing = pairing
        self.sessions = sessions
        self.request_keyframe = request_keyframe
        self.settings = settings or NegotiatorSettings()
        self.wall_clock = clock
        self.live = LiveChannels()
        self._by_session: dict[str, Negotiator] = {}
        self._negotiators: set[Negotiator] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = sessions.add_listener(self._session_event)
        self._ids = itertools.count(1)
        self.stopping = False

    def __call__(self, send: FrameSender, close: TransportCloser, *, label: str = "") -> Negotiator:
        """A negotiator for a new connection; ``label`` names it in logs (never a secret)."""
        number = next(self._ids)
        return Negotiator(self, send, close, label=f"{label or 'conn'}#{number}")

    @property
    def connections(self) -> int:
        return len(self._negotiators)

    def peer_revoked(self, peer_id: str) -> None:
        """End every live channel (error REVOKED) and session of ``peer_id``. On the loop thread."""
        self.live.close_peer(peer_id, ErrorCode.REVOKED)
        self._spawn(self._close_peer_sessions(peer_id), f"revoke-{peer_id}")

    async def _close_peer_sessions(self, peer_id: str) -> None:
        count = await self.sessions.close_peer(peer_id, "viewer revoked")
        if count:
            log.info("closed %d session(s) of revoked viewer %s", count, peer_id)

    async def stop(self) -> None:
        """Close every connection (bye) and wait for their sessions to end. Idempotent."""
        self.stopping = True
        for negotiator in list(self._negotiators):
            negotiator.close()
        await asyncio.gather(*(n.aclose() for n in list(self._negotiators)), return_exceptions=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.close_timeout_s)
        self._unsubscribe()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("signaling task %s failed", name)

        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _session_event(self, event: SessionEvent) -> None:
        if event.kind is SessionEventKind.CLOSED:
            negotiator = self._by_session.pop(event.session_id, None)
            if negotiator is not None:
                negotiator.session_ended(event.session_id)

    # Bookkeeping called by the negotiators.
    def _attach(self, negotiator: Negotiator) -> None:
        self._negotiators.add(negotiator)

    def _detach(self, negotiator: Negotiator) -> None:
        self._negotiators.discard(negotiator)

    def _own_session(self, session_id: str, negotiator: Negotiator) -> None:
        self._by_session[session_id] = negotiator

    def _disown_session(self, session_id: str) -> None:
        self._by_session.pop(session_id, None)


class _Phase(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


_CLOSE = object()
"""Queued after the last frame: the writer closes the transport once it gets here."""


class Negotiator:
    """One connection: feed it frames (synchronously, in order); it sends through ``send``."""

    def __init__(
        self, signaling: Signaling, send: FrameSender, close: TransportCloser, *, label: str
    ) -> None:
        self._signaling = signaling
        self._send = send
        self._close_transport = close
        self.label = label
        self._channel = DeviceChannel(
            signaling.static_private, signaling.peers, self._window_source, signaling.device_name
        )
        self._window: PairingWindow | None = None
        self._phase = _Phase.HANDSHAKE
        self._peer_id: str | None = None
        self._session_id: str | None = None
        self._outbox: asyncio.Queue[object] = asyncio.Queue()
        self._last_received = time.monotonic()
        self._ping_seq = 0
        self._offers = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self.close_code: ErrorCode | None = None
        self._started = False
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._keepalive_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        peer = f", peer={self._peer_id}" if self._peer_id else ""
        return f"Negotiator({self.label}, {self._phase.value}{peer})"

    @property
    def peer_id(self) -> str | None:
        """The authenticated viewer, if any."""
        return self._peer_id

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def is_closed(self) -> bool:
        return self._over()

    def _over(self) -> bool:
        return self._phase is _Phase.CLOSED

    def start(self) -> None:
        """Begin the writer and the timers; call once, on the event loop, before feeding."""
        if self._started:
            raise RuntimeError("start() was called already")
        self._started = True
        self._signaling._attach(self)
        self._spawn(self._writer(), "writer")
        if self._signaling.stopping:
            self.close()
            return
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(
            self._signaling.settings.handshake_timeout_s, self._handshake_expired
        )

    def feed(self, data: bytes) -> None:
        """One frame from the viewer. Never raises: a failure here ends this connection only."""
        self._last_received = time.monotonic()
        try:
            self._perform(self._channel.feed(data))
        except Exception:
            log.exception("%r: failed to handle a frame", self)
            self.close(ErrorCode.INTERNAL)

    def connection_lost(self) -> None:
        self._perform(self._channel.connection_lost())

    def close(self, code: ErrorCode | None = None) -> None:
        """End the channel from this side (bye, or ``code``)."""
        self._perform(self._channel.close(code))

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def aclose(self) -> None:
        """Release everything (session included) once the connection is over; idempotent."""
        if not self.is_closed:
            self.connection_lost()
        self._outbox.put_nowait(_CLOSE)
        tasks = {t for t in self._tasks if t is not asyncio.current_task()}
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self._signaling.settings.close_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=0.5)
        self._signaling._detach(self)

    def session_ended(self, session_id: str) -> None:
        """The session manager closed this channel's session (ICE failed, replaced, ...)."""
        if session_id == self._session_id:
            self._session_id = None
            if not self.is_closed:
                log.info("%r: the viewer's session ended; closing the channel", self)
                self.close()

    # --- outputs --------------------------------------------------------------------------------

    def _perform(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, SendFrame):
                self._outbox.put_nowait(output.data)
            elif isinstance(output, Authenticated):
                self._authenticated(output)
            elif isinstance(output, Received):
                self._received(output.message)
            elif isinstance(output, Closed):
                self._ended(output)

    def _send_message(self, message: Message) -> None:
        try:
            self._outbox.put_nowait(self._channel.send(message))
        except ChannelClosedError:
            log.debug("%r: %s not sent, the channel closed meanwhile", self, message.TYPE)

    def _authenticated(self, event: Authenticated) -> None:
        peer_id = event.peer.peer_id
        self._peer_id = peer_id
        self._phase = _Phase.OPEN
        self._cancel_handshake_timer()
        if not self._channel.is_closed:  # a first message can authenticate and end it at once
            self._signaling.live.add(self._channel, self._perform)
        self._keepalive_task = self._spawn(self._keepalive(), "keepalive")
        self._spawn(self._touch(peer_id), "touch")
        if event.newly_paired:
            window = self._window
            if window is not None:
                try:
                    self._signaling.pairing.pairing_completed(window)
                except Exception:
                    log.exception("%r: could not close the used pairing window", self)

    async def _touch(self, peer_id: str) -> None:
        try:
            await asyncio.to_thread(self._signaling.peers.touch, peer_id, self._signaling.wall_clock())
        except Exception as exc:  # cosmetic: a revoked peer or a full disk must not end the session
            log.info("%r: last-seen time not recorded: %s", self, type(exc).__name__)

    def _received(self, message: Message) -> None:
        if isinstance(message, Offer):
            self._spawn(self._answer(message.sdp), "answer")
        elif isinstance(message, Keyframe):
            self._signaling.request_keyframe()
        elif isinstance(message, Ice):
            # aiortc learns a trickling viewer's address from its connectivity checks
            # (peer-reflexive), so candidates after the offer are not needed.
            log.debug("%r: ignoring a trickled candidate", self)
        # Pong needs nothing: any frame counts as liveness (see feed).

    def _ended(self, event: Closed) -> None:
        self._phase = _Phase.CLOSED
        self.close_code = event.code
        self._cancel_handshake_timer()
        if self._keepalive_task is not None and self._keepalive_task is not asyncio.current_task():
            self._keepalive_task.cancel()
        self._signaling.live.discard(self._channel)
        who = "viewer" if event.by_peer else "device"
        log.info("%r: channel closed by the %s (%s)", self, who, event.code.name if event.code else "bye")
        self._outbox.put_nowait(_CLOSE)
        session_id, self._session_id = self._session_id, None
        if session_id is not None:
            self._signaling._disown_session(session_id)
            self._spawn(self._close_session(session_id, "signaling channel closed"), "close-session")
        self._closed.set()

    # --- sessions -------------------------------------------------------------------------------

    async def _answer(self, offer_sdp: str) -> None:
        async with self._offers:  # offers of one channel are answered in order
            peer_id = self._peer_id
            if self.is_closed or peer_id is None:
                return
            previous, self._session_id = self._session_id, None
            if previous is not None:  # a new offer replaces this channel's session
                self._signaling._disown_session(previous)
                await self._close_session(previous, "replaced by a new offer")
            try:
                session_id, answer_sdp = await self._signaling.sessions.answer_session(peer_id, offer_sdp)
            except TooManyViewersError:
                log.info("%r: refused: too many viewers", self)
                self.close(ErrorCode.TOO_MANY_VIEWERS)
                return
            except NegotiationError:
                # The reason may quote the offer: it is not logged.
                log.info("%r: offer refused: no usable H.264 video in it", self)
                self.close(ErrorCode.BAD_MESSAGE)
                return
            except SessionManagerClosedError:
                self.close(ErrorCode.INTERNAL)
                return
            except Exception:
                log.exception("%r: could not answer the offer", self)
                self.close(ErrorCode.INTERNAL)
                return
            if self._over():  # revoked, timed out or hung up while we answered
                await self._close_session(session_id, "signaling channel closed during setup")
                return
            try:
                answer = Answer(answer_sdp)
                frame = self._channel.send(answer)
            except (ProtocolError, ChannelClosedError) as exc:
                log.warning("%r: answer not sendable (%s)", self, type(exc).__name__)
                await self._close_session(session_id, "answer not sendable")
                self.close(ErrorCode.INTERNAL)
                return
            self._session_id = session_id
            self._signaling._own_session(session_id, self)
            self._outbox.put_nowait(frame)
            log.info("%r: answered the offer (session %s)", self, session_id)

    async def _close_session(self, session_id: str, reason: str) -> None:
        await self._signaling.sessions.close_session(session_id, reason)

    # --- transport ------------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Sends queued frames in order; after the last one, closes the transport."""
        while True:
            item = await self._outbox.get()
            if item is _CLOSE:
                break
            if not isinstance(item, bytes):
                continue
            try:
                await self._send(item)
            except Exception as exc:
                log.debug("%r: send failed (%s); connection lost", self, type(exc).__name__)
                self.connection_lost()
                break
        with contextlib.suppress(Exception):
            await self._close_transport()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._phase is _Phase.HANDSHAKE:
            timeout = self._signaling.settings.handshake_timeout_s
            log.info("%r: not authenticated within %g s; closing", self, timeout)
            self.close()

    async def _keepalive(self) -> None:
        """Pings a quiet viewer; closes the channel when even pongs stop coming."""
        settings = self._signaling.settings
        while self._phase is _Phase.OPEN:
            quiet = time.monotonic() - self._last_received
            if quiet >= settings.idle_timeout_s:
                log.info("%r: nothing from the viewer for %.0f s; closing", self, quiet)
                self.close()
                return
            if quiet >= settings.ping_interval_s:
                self._ping_seq += 1
                self._send_message(Ping(self._ping_seq))
                await asyncio.sleep(min(settings.ping_interval_s, settings.idle_timeout_s - quiet))
            else:
                await asyncio.sleep(settings.ping_interval_s - quiet)

    def _window_source(self) -> PairingWindow | None:
        """Remembers which window a pairing hello used, to close exactly that one on success."""
        self._window = self._signaling.pairing.active_window
        return self._window

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("%r: %s failed", self, what)

        task = asyncio.create_task(run(), name=f"signaling-{self.label}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Frames are fed in a burst: a channel can end (and cancel this task) before the task ever
        # ran, and `coro` would then be garbage that was never awaited. Closing it is a no-op
        # once it has run.
        task.add_done_callback(lambda _task: coro.close())
        return task
