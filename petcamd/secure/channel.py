"""The end-to-end secure channel between a viewer and the device, as sans-IO state machines.

No sockets and no event loop: the LAN server, the relay client, petcam-view and the tests all drive
the same objects. Feed each received frame to :meth:`feed` and act on the outputs in order
(:class:`SendFrame`, :class:`Authenticated` / :class:`DeviceReady`, :class:`Received`,
:class:`Closed`); :meth:`send` turns an inner message into a frame; :meth:`close` and
:meth:`connection_lost` end the channel. ``feed`` never raises for anything the peer sent: every
bad frame closes the channel it arrived on and no other.

The device allocates nothing for a handshake alone. :class:`Authenticated` comes only when the
viewer's first transport message decrypts, which needs the viewer's static and ephemeral keys, so a
replayed hello gets a reply and goes no further (docs/protocol.md, "State machines").
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import ClassVar, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.messages import (
    Bye,
    ErrorCode,
    ErrorMessage,
    Frame,
    FrameType,
    Message,
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
from petcamd.protocol.pairing_url import PairingPayload
from petcamd.secure.identity import key_id
from petcamd.secure.noise import HandshakeState, NoiseError, Pattern, Transport
from petcamd.secure.pairing import PairingClosedError, PairingWindow, psk_from_secret

__all__ = [
    "Authenticated",
    "ChannelClosedError",
    "Closed",
    "DeviceChannel",
    "DeviceReady",
    "LiveChannels",
    "Output",
    "PeerDirectory",
    "PeerRecord",
    "Received",
    "SendFrame",
    "ViewerChannel",
]

logger = logging.getLogger(__name__)


class PeerRecord(Protocol):
    """A paired viewer as the channel needs it (petcamd.secure.keystore.Peer in the daemon)."""

    @property
    def peer_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...


class PeerDirectory(Protocol):
    """The paired viewers (petcamd.secure.keystore.Keystore in the daemon).

    ``add`` is called synchronously when a pairing completes; the keystore's write takes a few
    milliseconds and happens once per pairing. Any exception it raises ends that pairing attempt
    with INTERNAL.
    """

    def find_by_key(self, public_key: bytes) -> PeerRecord | None: ...

    def add(self, name: str, public_key: bytes) -> PeerRecord: ...


WindowSource = Callable[[], PairingWindow | None]
"""Returns the pairing window open right now, if any (asked once per PAIR_HELLO)."""


class ChannelClosedError(RuntimeError):
    """send() on a channel that has ended (the peer may have closed it in the meantime)."""


@dataclass(frozen=True, slots=True, repr=False)
class SendFrame:
    """Send ``data`` to the peer as one binary WebSocket message."""

    data: bytes

    def __repr__(self) -> str:
        try:
            return f"SendFrame({Frame.decode(self.data)!r})"
        except ProtocolError:
            return f"SendFrame({len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Device side: the viewer proved its paired key; only now may the caller allocate anything."""

    peer: PeerRecord
    newly_paired: bool


@dataclass(frozen=True, slots=True)
class DeviceReady:
    """Viewer side: the device proved its key and the channel accepts :meth:`send`.

    After a pairing, ``peer_id`` and ``device_name`` are what the device sent in ``paired``; the
    viewer stores them with ``device_key`` to open sessions later.
    """

    device_key: bytes = field(repr=False)
    peer_id: str | None = None
    device_name: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """An authenticated inner message for the caller (ping is answered by the channel itself)."""

    message: Message


@dataclass(frozen=True, slots=True)
class Closed:
    """The channel ended; it emits nothing more. Close the connection after sending prior frames.

    ``code`` is None for an orderly end (``bye``, or the connection went away). ``verified`` is
    False when the code came in a plaintext ERROR frame (anyone on the path could have forged it)
    or the connection was lost; True when the peer said so inside the encrypted channel or this
    end decided. ``remote_reason`` is the peer's authenticated, validated ``error`` reason: show
    it, do not log it.
    """

    code: ErrorCode | None
    _: KW_ONLY
    by_peer: bool
    verified: bool
    remote_reason: str = field(default="", repr=False)


Output = SendFrame | Authenticated | DeviceReady | Received | Closed


class _State(enum.Enum):
    START = "start"  # viewer: hello not written yet
    HELLO = "hello"  # device: waiting for PAIR_HELLO or SESSION_HELLO
    REPLY = "reply"  # viewer: waiting for HANDSHAKE_REPLY
    PROOF = "proof"  # device: handshake done, waiting for the viewer's first transport message
    PAIRED = "paired"  # viewer: `pair` sent, waiting for `paired`
    OPEN = "open"
    CLOSED = "closed"


class _Channel:
    _ROLE: ClassVar[Role]
    _PEER_ROLE: ClassVar[Role]

    def __init__(self, state: _State, ephemeral: X25519PrivateKey | None) -> None:
        self._state = state
        self._ephemeral = ephemeral
        self._transport: Transport | None = None
        # True once the peer has proven its keys, so errors can go inside the encrypted channel.
        self._proven = False

    @property
    def is_open(self) -> bool:
        """Authenticated and not closed: :meth:`send` works."""
        return self._state is _State.OPEN

    @property
    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state={self._state.value})"

    def send(self, message: Message) -> bytes:
        """One TRANSPORT frame carrying ``message``.

        Raises ChannelClosedError after the channel ended, RuntimeError before it is open,
        ValueError for a message type this end may not send, ProtocolError if it is too large.
        """
        if self._state is _State.CLOSED:
            raise ChannelClosedError("the channel is closed")
        if self._state is not _State.OPEN:
            raise RuntimeError("the channel is not authenticated yet")
        if not message.SENT_BY & self._ROLE or isinstance(message, Pair | Paired):
            raise ValueError(f"{self._ROLE.name} does not send {message.TYPE!r} messages")
        return self._encrypt(message)

    def feed(self, data: bytes) -> list[Output]:
        """Process one received frame.

        Nothing the peer sends makes this raise; RuntimeError means a viewer was fed before
        start(). A ping is answered here (a SendFrame); only the pong comes back as Received.
        """
        if self._state is _State.CLOSED:
            return []
        if self._state is _State.START:
            raise RuntimeError("call start() and send its frame first")
        try:
            frame = Frame.decode(data)
        except ProtocolError as exc:
            logger.info("%r: malformed frame: %s", self, exc)
            return self.close(ErrorCode.BAD_MESSAGE)
        if frame.type is FrameType.ERROR:
            code = frame.error_code
            logger.info("%r: peer sent unauthenticated error %s", self, code.name)
            return self._end(code, by_peer=True, verified=False)
        return self._on_frame(frame)

    def close(self, code: ErrorCode | None = None) -> list[Output]:
        """End the channel: tells the peer (``error`` or ``bye``) when possible, then Closed."""
        if self._state is _State.CLOSED:
            return []
        outputs: list[Output] = []
        if self._proven and self._transport is not None:
            farewell = Bye() if code is None else ErrorMessage(code, code.description)
            outputs.append(SendFrame(self._encrypt(farewell)))
        elif code is not None:
            outputs.append(SendFrame(Frame.error(code).encode()))
        return outputs + self._end(code, by_peer=False, verified=True)

    def connection_lost(self) -> list[Output]:
        """The transport went away; call this so the channel can account for it."""
        if self._state is _State.CLOSED:
            return []
        return self._end(None, by_peer=True, verified=False)

    def _on_frame(self, frame: Frame) -> list[Output]:
        raise NotImplementedError

    def _end(
        self, code: ErrorCode | None, *, by_peer: bool, verified: bool, remote_reason: str = ""
    ) -> list[Output]:
        self._state = _State.CLOSED
        self._transport = None
        return [Closed(code, by_peer=by_peer, verified=verified, remote_reason=remote_reason)]

    def _encrypt(self, message: Message) -> bytes:
        if self._transport is None:
            raise RuntimeError("no transport keys")
        return Frame(FrameType.TRANSPORT, self._transport.encrypt(encode_message(message))).encode()

    def _decrypt(self, frame: Frame) -> Message:
        """Raises NoiseError (wrong keys, tampering, replay) or ProtocolError (bad content)."""
        if frame.type is not FrameType.TRANSPORT:
            raise ProtocolError(f"unexpected {frame.type.name} frame")
        if self._transport is None:
            raise RuntimeError("no transport keys")
        plaintext = self._transport.decrypt(frame.body)
        self._proven = True
        return decode_message(plaintext)

    def _open_frame(self, frame: Frame) -> list[Output]:
        try:
            message = self._decrypt(frame)
        except (NoiseError, ProtocolError) as exc:
            logger.info("%r: rejected a message: %s", self, exc)
            return self.close(ErrorCode.BAD_MESSAGE)
        return self._deliver(message)

    def _deliver(self, message: Message) -> list[Output]:
        if not message.SENT_BY & self._PEER_ROLE or isinstance(message, Pair | Paired):
            logger.info("%r: unexpected %r message", self, message.TYPE)
            return self.close(ErrorCode.BAD_MESSAGE)
        if isinstance(message, Ping):
            return [SendFrame(self._encrypt(Pong(message.seq)))]
        if isinstance(message, Bye):
            return self._end(None, by_peer=True, verified=True)
        if isinstance(message, ErrorMessage):
            logger.info("%r: peer ended the channel with %s", self, message.code.name)
            return self._end(message.code, by_peer=True, verified=True, remote_reason=message.reason)
        return [Received(message)]


class DeviceChannel(_Channel):
    """The device's end of one incoming connection: pairing or session, decided by the hello."""

    _ROLE = Role.DEVICE
    _PEER_ROLE = Role.VIEWER

    def __init__(
        self,
        static_private: X25519PrivateKey,
        directory: PeerDirectory,
        pairing_window: WindowSource,
        device_name: str,
        *,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        """``ephemeral`` only makes examples reproducible (scripts/gen-protocol-examples)."""
        super().__init__(_State.HELLO, ephemeral)
        Paired("a" * 16, device_name)  # validates the name now rather than at the first pairing
        self._static = static_private
        self._directory = directory
        self._window_source = pairing_window
        self._device_name = device_name
        self._window: PairingWindow | None = None
        self._remote_key: bytes | None = None
        self._peer: PeerRecord | None = None

    @property
    def peer(self) -> PeerRecord | None:
        """The authenticated viewer, once :class:`Authenticated` was emitted."""
        return self._peer

    @property
    def is_pairing(self) -> bool:
        return self._window is not None

    def __repr__(self) -> str:
        peer = "" if self._peer is None else f", peer={self._peer.peer_id}"
        return f"DeviceChannel(state={self._state.value}{peer})"

    def _on_frame(self, frame: Frame) -> list[Output]:
        if self._state is _State.HELLO:
            if frame.type is FrameType.PAIR_HELLO:
                return self._pair_hello(frame)
            if frame.type is FrameType.SESSION_HELLO:
                return self._session_hello(frame)
        elif self._state is _State.PROOF:
            if frame.type is FrameType.TRANSPORT:
                return self._first_message(frame)
        elif self._state is _State.OPEN:
            return self._open_frame(frame)
        logger.info("%r: unexpected %s frame", self, frame.type.name)
        return self.close(ErrorCode.BAD_MESSAGE)

    def _pair_hello(self, frame: Frame) -> list[Output]:
        window = self._window_source()
        if window is None:
            logger.info("pairing attempt refused: no pairing window is open")
            return self.close(ErrorCode.PAIRING_CLOSED)
        try:
            window.check_open()
        except PairingClosedError as exc:
            logger.info("pairing attempt refused: %s", exc)
            return self.close(ErrorCode.PAIRING_CLOSED)
        handshake = HandshakeState.responder(
            Pattern.IK_PSK2,
            self._static,
            prologue=prologue(FrameType.PAIR_HELLO),
            psk=window.psk,
            ephemeral=self._ephemeral,
        )
        rejected = self._read_hello(handshake, frame)
        if rejected is not None:
            return rejected
        self._window = window
        return self._write_reply(handshake)

    def _session_hello(self, frame: Frame) -> list[Output]:
        handshake = HandshakeState.responder(
            Pattern.IK, self._static, prologue=prologue(FrameType.SESSION_HELLO), ephemeral=self._ephemeral
        )
        rejected = self._read_hello(handshake, frame)
        if rejected is not None:
            return rejected
        remote = self._remote_key
        if remote is None:
            raise RuntimeError("handshake without the viewer's key")
        if self._directory.find_by_key(remote) is None:
            logger.info("session refused: viewer key %s is not paired", key_id(remote))
            return self.close(ErrorCode.NOT_PAIRED)
        return self._write_reply(handshake)

    def _read_hello(self, handshake: HandshakeState, frame: Frame) -> list[Output] | None:
        """Read message 1; returns the outputs of a rejection, or None to go on."""
        # The frame's fixed length leaves no room for a payload: it is always empty.
        try:
            handshake.read_message(frame.body)
        except NoiseError as exc:
            logger.info("%r: rejected a %s: %s", self, frame.type.name, exc)
            return self.close(ErrorCode.BAD_MESSAGE)
        self._remote_key = handshake.remote_static
        return None

    def _write_reply(self, handshake: HandshakeState) -> list[Output]:
        try:
            reply = handshake.write_message(b"")
        except NoiseError as exc:
            logger.info("%r: handshake failed: %s", self, exc)
            return self.close(ErrorCode.BAD_MESSAGE)
        self._transport = handshake.transport()
        self._state = _State.PROOF
        return [SendFrame(Frame(FrameType.HANDSHAKE_REPLY, reply).encode())]

    def _first_message(self, frame: Frame) -> list[Output]:
        pairing = self._window is not None
        try:
            message = self._decrypt(frame)
        except NoiseError:
            if pairing:
                logger.warning("pairing attempt failed: the viewer does not have the pairing code")
                return self.close(ErrorCode.PAIRING_FAILED)
            logger.info("session rejected: first message did not decrypt (replayed handshake?)")
            return self.close(ErrorCode.BAD_MESSAGE)
        except ProtocolError as exc:
            logger.info("%r: rejected the first message: %s", self, exc)
            return self.close(ErrorCode.BAD_MESSAGE)
        if pairing:
            return self._complete_pairing(message)
        return self._open_session(message)

    def _complete_pairing(self, message: Message) -> list[Output]:
        window, remote = self._window, self._remote_key
        if window is None or remote is None:
            raise RuntimeError("pairing state lost")
        if not isinstance(message, Pair):
            logger.info("%r: pairing expected 'pair', got %r", self, message.TYPE)
            return self.close(ErrorCode.BAD_MESSAGE)
        try:
            window.check_open()
        except PairingClosedError as exc:
            logger.info("pairing refused: %s", exc)
            return self.close(ErrorCode.PAIRING_CLOSED)
        try:
            peer = self._directory.add(message.name, remote)
        except Exception:
            logger.exception("pairing failed: the new viewer could not be stored")
            return self.close(ErrorCode.INTERNAL)
        # The proof arrived while the window was open; it may have expired during the write.
        with contextlib.suppress(PairingClosedError):
            window.complete()
        self._peer = peer
        self._state = _State.OPEN
        logger.info("paired viewer %s", peer.peer_id)
        paired = Paired(peer.peer_id, self._device_name)
        return [SendFrame(self._encrypt(paired)), Authenticated(peer, newly_paired=True)]

    def _open_session(self, message: Message) -> list[Output]:
        remote = self._remote_key
        if remote is None:
            raise RuntimeError("session state lost")
        if isinstance(message, Bye | ErrorMessage):
            return self._deliver(message)
        if not message.SENT_BY & Role.VIEWER or isinstance(message, Pair | Paired):
            logger.info("%r: unexpected first message %r", self, message.TYPE)
            return self.close(ErrorCode.BAD_MESSAGE)
        peer = self._directory.find_by_key(remote)  # revoked since the hello?
        if peer is None:
            logger.info("session refused: viewer key %s is no longer paired", key_id(remote))
            return self.close(ErrorCode.NOT_PAIRED)
        self._peer = peer
        self._state = _State.OPEN
        logger.info("viewer %s authenticated", peer.peer_id)
        return [Authenticated(peer, newly_paired=False), *self._deliver(message)]

    def _end(
        self, code: ErrorCode | None, *, by_peer: bool, verified: bool, remote_reason: str = ""
    ) -> list[Output]:
        # Every HANDSHAKE_REPLY of a pairing lets its recipient test a guess of the psk offline,
        # so any pairing that got one and ended unproven counts against the window.
        if self._window is not None and not self._proven and self._state is _State.PROOF:
            self._window.record_failure()
            logger.info("pairing attempt counted as failed (%d so far)", self._window.failures)
        return super()._end(code, by_peer=by_peer, verified=verified, remote_reason=remote_reason)


class ViewerChannel(_Channel):
    """The viewer's end: pairs from a scanned QR code, or opens a session with a paired device."""

    _ROLE = Role.VIEWER
    _PEER_ROLE = Role.DEVICE

    def __init__(
        self,
        static_private: X25519PrivateKey,
        device_key: bytes,
        *,
        pairing_psk: bytes | None,
        viewer_name: str | None,
        ephemeral: X25519PrivateKey | None,
    ) -> None:
        """Use :meth:`for_pairing` or :meth:`for_session`."""
        super().__init__(_State.START, ephemeral)
        self._device_key = bytes(device_key)
        self._pair_message = None if viewer_name is None else Pair(viewer_name)
        hello = FrameType.SESSION_HELLO if pairing_psk is None else FrameType.PAIR_HELLO
        self._hello_type = hello
        self._handshake = HandshakeState.initiator(
            Pattern.IK if pairing_psk is None else Pattern.IK_PSK2,
            static_private,
            self._device_key,
            prologue=prologue(hello),
            psk=pairing_psk,
            ephemeral=ephemeral,
        )

    @classmethod
    def for_pairing(
        cls,
        static_private: X25519PrivateKey,
        payload: PairingPayload,
        viewer_name: str,
        *,
        ephemeral: X25519PrivateKey | None = None,
    ) -> ViewerChannel:
        """Pair with the device of a scanned pairing URL; ``viewer_name`` is shown to the owner.

        Raises ProtocolError if the name is invalid or the URL's device id is not its key's id.
        """
        if len(payload.device_key) != 32 or key_id(payload.device_key) != payload.device_id:
            raise ProtocolError("the pairing URL's device id does not match its key")
        return cls(
            static_private,
            payload.device_key,
            pairing_psk=psk_from_secret(payload.secret),
            viewer_name=viewer_name,
            ephemeral=ephemeral,
        )

    @classmethod
    def for_session(
        cls, static_private: X25519PrivateKey, device_key: bytes, *, ephemeral: X25519PrivateKey | None = None
    ) -> ViewerChannel:
        """Open a session with a device this viewer paired with (``device_key`` from storage)."""
        return cls(static_private, device_key, pairing_psk=None, viewer_name=None, ephemeral=ephemeral)

    @property
    def device_key(self) -> bytes:
        return self._device_key

    @property
    def is_pairing(self) -> bool:
        return self._hello_type is FrameType.PAIR_HELLO

    def start(self) -> bytes:
        """The hello frame to send first; call exactly once."""
        if self._state is not _State.START:
            raise RuntimeError("start() was called already")
        self._state = _State.REPLY
        return Frame(self._hello_type, self._handshake.write_message(b"")).encode()

    def _on_frame(self, frame: Frame) -> list[Output]:
        if self._state is _State.REPLY and frame.type is FrameType.HANDSHAKE_REPLY:
            return self._reply(frame)
        if self._state is _State.PAIRED and frame.type is FrameType.TRANSPORT:
            return self._paired(frame)
        if self._state is _State.OPEN:
            return self._open_frame(frame)
        logger.info("%r: unexpected %s frame", self, frame.type.name)
        return self.close(ErrorCode.BAD_MESSAGE)

    def _reply(self, frame: Frame) -> list[Output]:
        try:
            self._handshake.read_message(frame.body)  # fixed length: the payload is empty
        except NoiseError as exc:
            if self.is_pairing:
                logger.info("pairing failed: wrong pairing code or device key")
                return self.close(ErrorCode.PAIRING_FAILED)
            logger.info("%r: rejected the handshake reply: %s", self, exc)
            return self.close(ErrorCode.BAD_MESSAGE)
        self._transport = self._handshake.transport()
        self._proven = True
        if self._pair_message is not None:
            self._state = _State.PAIRED
            return [SendFrame(self._encrypt(self._pair_message))]
        self._state = _State.OPEN
        return [DeviceReady(self._device_key)]

    def _paired(self, frame: Frame) -> list[Output]:
        try:
            message = self._decrypt(frame)
        except (NoiseError, ProtocolError) as exc:
            logger.info("%r: rejected a message: %s", self, exc)
            return self.close(ErrorCode.BAD_MESSAGE)
        if isinstance(message, Paired):
            self._state = _State.OPEN
            return [DeviceReady(self._device_key, message.peer_id, message.name)]
        if isinstance(message, Bye | ErrorMessage):
            return self._deliver(message)
        logger.info("%r: pairing expected 'paired', got %r", self, message.TYPE)
        return self.close(ErrorCode.BAD_MESSAGE)


Sink = Callable[[list[Output]], None]
"""Performs a channel's outputs on its connection (sends the frames, handles Closed)."""


class LiveChannels:
    """Authenticated device channels by peer id, so that revoking a viewer ends its sessions.

    Register a channel with the function that performs outputs on its connection when it emits
    :class:`Authenticated`, discard it when it emits :class:`Closed`. Not thread-safe: the
    keystore calls its listeners on the thread that wrote, so hop to the event loop first
    (``loop.call_soon_threadsafe``).
    """

    def __init__(self) -> None:
        self._by_peer: dict[str, dict[DeviceChannel, Sink]] = {}

    def add(self, channel: DeviceChannel, sink: Sink) -> None:
        if channel.peer is None or channel.is_closed:
            raise ValueError("only authenticated, open channels are registered")
        self._by_peer.setdefault(channel.peer.peer_id, {})[channel] = sink

    def discard(self, channel: DeviceChannel) -> None:
        if channel.peer is None:
            return
        channels = self._by_peer.get(channel.peer.peer_id)
        if channels is not None:
            channels.pop(channel, None)
            if not channels:
                del self._by_peer[channel.peer.peer_id]

    def channels(self, peer_id: str) -> list[DeviceChannel]:
        return list(self._by_peer.get(peer_id, {}))

    def close_peer(self, peer_id: str, code: ErrorCode = ErrorCode.REVOKED) -> int:
        """Close every live channel of ``peer_id`` with ``code``; returns how many there were."""
        channels = self._by_peer.pop(peer_id, {})
        for channel, sink in channels.items():
            sink(channel.close(code))
        if channels:
            logger.info("closed %d channel(s) of viewer %s: %s", len(channels), peer_id, code.name)
        return len(channels)

    def __len__(self) -> int:
        return sum(len(channels) for channels in self._by_peer.values())
