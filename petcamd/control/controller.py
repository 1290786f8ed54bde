"""What the owner can ask of the daemon, independent of how they ask (D-Bus today).

The D-Bus adapter stays thin so this logic is tested directly, and so a secret never has a chance
to slip into a bus reply: the only method that returns one is start_pairing, whose URL is the
thing the owner asked to see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from petcamd import __version__
from petcamd.atomic_file import StateWriteError
from petcamd.config import Config
from petcamd.control.nettest import NettestReport, NettestSettings, run_nettest
from petcamd.display.framebuffer import PairingDisplay
from petcamd.netaddr import lan_addresses
from petcamd.protocol.pairing_url import PairingPayload, encode_pairing_url
from petcamd.protocol.relay import relay_origin
from petcamd.secure.keystore import (
    InvalidPeerNameError,
    Keystore,
    KeystoreState,
    KeystoreUnavailableError,
    Peer,
    UnknownPeerError,
)
from petcamd.secure.pairing import PairingClosedError, PairingWindow, WindowState
from petcamd.webrtc.ice import IceServer

log = logging.getLogger(__name__)


class ControlError(Exception):
    """A request the daemon refuses; `name` becomes the D-Bus error name suffix."""

    name = "Failed"


class PairingUnavailableError(ControlError):
    name = "PairingUnavailable"


class UnknownPeerControlError(ControlError):
    name = "UnknownPeer"


class InvalidArgumentError(ControlError):
    name = "InvalidArgument"


class StorageError(ControlError):
    name = "Storage"


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the owner sees of a paired viewer: never its key, only the id derived from it."""

    peer_id: str
    name: str
    paired_at: float
    last_seen: float | None

    @classmethod
    def of(cls, peer: Peer) -> PeerInfo:
        return cls(peer.peer_id, peer.name, peer.paired_at, peer.last_seen)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StatusProbe:
    """Live facts the controller reads from the parts the supervisor built."""

    camera_state: Callable[[], str]
    camera_description: Callable[[], str]
    viewers: Callable[[], int]
    lan_port: Callable[[], int | None]
    sessions: Callable[[], list[dict[str, Any]]] = list  # per-viewer stats, see docs/control.md
    https_port: Callable[[], int | None] = lambda: None


class ModeSwitch(Protocol):
    """The network mode at runtime (`petcamd.signaling.modes.NetworkModes`)."""

    @property
    def mode(self) -> str: ...

    @property
    def problem(self) -> str | None: ...

    async def set_mode(self, mode: str) -> bool: ...

    def relay_status(self) -> dict[str, Any] | None: ...

    def offered_ice_servers(self) -> tuple[IceServer, ...]: ...


@dataclass(frozen=True, slots=True)
class Status:
    """`petcamctl --json status` prints exactly these keys (docs/control.md); add, never rename."""

    version: str
    state: str
    device_id: str
    name: str
    mode: str
    camera: str
    camera_source: str
    viewers: int
    paired_peers: int
    pairing_active: bool
    pairing_expires_in_s: float | None
    lan_port: int | None
    https_port: int | None
    """The LAN server's HTTPS port when the device CA is enabled (network.https), else None."""
    problems: list[str]
    sessions: list[dict[str, Any]]
    relay: dict[str, Any] | None
    """The relay connection in internet mode (docs/control.md), None in Local Network Mode."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PairingInfo:
    url: str
    expires_at: int
    remaining_s: float


class Controller:
    def __init__(
        self,
        *,
        config: Config,
        device_id: str,
        device_key: bytes,
        probe: StatusProbe,
        keystore: Keystore,
        display: PairingDisplay | None,
        modes: ModeSwitch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._device_id = device_id
        self._device_key = device_key
        self._probe = probe
        self._keystore = keystore
        self.pairing_closed_listeners: list[Callable[[str], None]] = []
        self.peer_listeners: list[Callable[[str, str], None]] = []  # (event, peer id)
        keystore.add_listener(lambda event, peer: self._on_peer_event(event, peer.peer_id))
        self._display = display
        self._clock = clock
        self._window: PairingWindow | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._countdown_timer: asyncio.TimerHandle | None = None
        self.state = "starting"
        self._modes = modes
        self.mode_listeners: list[Callable[[str], None]] = []
        self.viewer_listeners: list[Callable[[str, str, str, str], None]] = []
        """(event "connected" or "disconnected", peer id, session id, reason)"""
        self.camera_listeners: list[Callable[[str], None]] = []

    @property
    def mode(self) -> str:
        return self._modes.mode if self._modes is not None else self._config.network.mode

    def status(self) -> Status:
        window = self.active_window
        modes = self._modes
        problems = [p for p in (self._keystore.problem, modes.problem if modes else None) if p]
        return Status(
            version=__version__,
            state=self.state,
            device_id=self._device_id,
            name=self._config.device.name,
            mode=self.mode,
            camera=self._probe.camera_state(),
            camera_source=self._probe.camera_description(),
            viewers=self._probe.viewers(),
            paired_peers=len(self._keystore.peers()),
            pairing_active=window is not None,
            pairing_expires_in_s=round(window.remaining_s, 1) if window else None,
            lan_port=self._probe.lan_port(),
            https_port=self._probe.https_port(),
            problems=problems,
            sessions=self._probe.sessions(),
            relay=modes.relay_status() if modes is not None else None,
        )

    @property
    def active_window(self) -> PairingWindow | None:
        window = self._window
        if window is not None and window.state is WindowState.OPEN:
            return window
        return None

    def start_pairing(self) -> PairingInfo:
        """Opens a fresh window (replacing an open one: only the newest code on the screen works)."""
        if problem := self._keystore_refusal():
            raise PairingUnavailableError(f"pairing is disabled until the keystore is repaired: {problem}")
        port = self._probe.lan_port()
        if port is None:
            raise PairingUnavailableError("the LAN server is not running yet")
        if self._window is not None:
            self._window.cancel()
        pairing = self._config.pairing
        window = PairingWindow(pairing.window_s, pairing.max_failed_attempts, clock=self._clock)
        self._window = window
        url = self.pairing_url(window, port)
        self._arm_expiry(window)
        log.info("pairing window opened for %.0f s", window.lifetime_s)
        if self._display is not None:
            self._display.show_pairing(url, self._config.device.name, window.remaining_s)
            self._arm_countdown(window)
        return PairingInfo(url=url, expires_at=window.expires_at_wall, remaining_s=window.remaining_s)

    def _keystore_refusal(self) -> str | None:
        """A RECOVERED keystore still pairs (its problem is reported); a BROKEN one must not be written."""
        return self._keystore.problem if self._keystore.state is KeystoreState.BROKEN else None

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo.of(p) for p in sorted(self._keystore.peers(), key=lambda p: p.paired_at)]

    def rename_peer(self, peer_id: str, name: str) -> PeerInfo:
        return PeerInfo.of(self._keystore_call(lambda: self._keystore.rename(peer_id, name)))

    def revoke_peer(self, peer_id: str) -> PeerInfo:
        """Live sessions of the peer end through the keystore's listeners (wired by the supervisor)."""
        return PeerInfo.of(self._keystore_call(lambda: self._keystore.revoke(peer_id)))

    def _keystore_call(self, call: Callable[[], Peer]) -> Peer:
        try:
            return call()
        except UnknownPeerError:
            raise UnknownPeerControlError("no paired viewer has that id (see `petcamctl peers`)") from None
        except InvalidPeerNameError as exc:
            raise InvalidArgumentError(str(exc)) from None
        except KeystoreUnavailableError as exc:
            raise StorageError(str(exc)) from None
        except StateWriteError as exc:
            raise StorageError(f"the change was not saved: {exc}") from None

    def viewer_event(self, event: str, peer_id: str, session_id: str, reason: str = "") -> None:
        """The supervisor forwards the session manager's connected/disconnected events here."""
        for listener in self.viewer_listeners:
            listener(event, peer_id, session_id, reason)

    def camera_changed(self, state: str) -> None:
        for listener in self.camera_listeners:
            listener(state)

    def _on_peer_event(self, event: str, peer_id: str) -> None:
        for listener in self.peer_listeners:
            listener(event, peer_id)

    def pairing_url(self, window: PairingWindow, port: int) -> str:
        network = self._config.network
        addresses = lan_addresses(network.lan_address)
        payload = PairingPayload(
            device_id=self._device_id,
            device_key=self._device_key,
            secret=window.secret,
            expires_at=window.expires_at_wall,
            addresses=tuple(addresses),
            port=port,
            relay_url=network.relay_url if self.mode == "internet" else "",
            name=self._config.device.name,
        )
        if self.mode == "internet" and network.relay_url:
            origin = relay_origin(network.relay_url)  # the viewer page lives at the relay's origin
        else:
            # With the device CA enabled the owner has installed it: the page opens over https.
            https_port = self._probe.https_port()
            scheme, port = ("https", https_port) if https_port is not None else ("http", port)
            host = addresses[0]
            origin = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
        return encode_pairing_url(origin, payload)

    async def set_mode(self, mode: str) -> bool:
        """Switch the network mode now and keep the choice; returns False if it was on already.

        An open pairing window stays open and its QR code is redrawn: the URL's origin (the
        device or the relay) follows the mode.
        """
        if self._modes is None:
            raise ControlError("this daemon cannot switch modes")
        try:
            changed = await self._modes.set_mode(mode)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        except StateWriteError as exc:
            raise StorageError(f"the mode was not changed: {exc}") from None
        if changed:
            self._tick_countdown_now()
            for listener in self.mode_listeners:
                listener(self.mode)
        return changed

    def _tick_countdown_now(self) -> None:
        window = self.active_window
        if window is not None:
            self._tick_countdown(window)

    async def network_test(self) -> NettestReport:
        """`petcamctl nettest`: what lies between an outside viewer and this camera. It contacts the
        configured relay and STUN/TURN servers even in Local Network Mode: the owner asked."""
        network = self._config.network
        offered = self._modes.offered_ice_servers() if self._modes is not None else ()
        turn = next((server for server in offered if server.is_turn), None)
        settings = NettestSettings(
            relay_url=network.relay_url,
            ice_servers=tuple(dict.fromkeys([*network.ice_servers, *(server.url for server in offered)])),
            turn_username=turn.username if turn else None,  # the relay's short-lived credentials
            turn_password=turn.credential if turn else None,
        )
        return await run_nettest(settings)

    def cancel_pairing(self) -> None:
        window = self.active_window
        if window is None:
            raise PairingUnavailableError("no pairing window is open")
        window.cancel()
        self._close_window("cancelled")

    def pairing_completed(self, window: PairingWindow) -> None:
        """The secure channel marks the window used itself; this takes it off the display."""
        if window.state is not WindowState.PAIRED:
            try:
                window.complete()
            except PairingClosedError as exc:
                raise PairingUnavailableError(str(exc)) from None
        if window is self._window:
            self._close_window("paired")

    def _arm_countdown(self, window: PairingWindow) -> None:
        """Redraw when the minutes left change (just after each whole minute), while the window is open."""
        if self._countdown_timer is not None:
            self._countdown_timer.cancel()
        delay = window.remaining_s % 60 + 0.05
        if window.remaining_s - delay < 1:
            self._countdown_timer = None
            return
        self._countdown_timer = asyncio.get_running_loop().call_later(delay, self._tick_countdown, window)

    def _tick_countdown(self, window: PairingWindow) -> None:
        self._countdown_timer = None
        port = self._probe.lan_port()
        if window is not self.active_window or port is None or self._display is None:
            return
        self._display.show_pairing(
            self.pairing_url(window, port), self._config.device.name, window.remaining_s
        )
        self._arm_countdown(window)

    def _arm_expiry(self, window: PairingWindow) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        self._expiry_timer = loop.call_later(window.remaining_s, self._on_expiry, window)

    def _on_expiry(self, window: PairingWindow) -> None:
        if window is self._window and window.state is WindowState.EXPIRED:
            self._close_window("expired")

    def _close_window(self, reason: str) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self._countdown_timer is not None:
            self._countdown_timer.cancel()
            self._countdown_timer = None
        log.info("pairing window closed: %s", reason)
        if self._display is not None:
            self._display.clear(reason)
        for listener in self.pairing_closed_listeners:
            listener(reason)

    async def start(self) -> None:
        self.state = "running"

    async def stop(self) -> None:
        self.state = "stopping"
        for timer in (self._expiry_timer, self._countdown_timer):
            if timer is not None:
                timer.cancel()
        self._expiry_timer = self._countdown_timer = None
