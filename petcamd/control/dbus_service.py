"""The controller on D-Bus (dbus-fast, asyncio-native): a thin adapter with no logic of its own.

Why dbus-fast: it is asyncio-native, maintained and packaged in Debian bookworm and trixie; pydbus
is unmaintained since 2016 and needs a GLib main loop. Method signatures are written as string
constants, without postponed annotations, because that is the one form every supported
dbus-fast version (1.84 to 5.x) parses;
structured replies are JSON documents with the keys documented in docs/control.md, ASCII-escaped.
Free text sent *to* the daemon (a viewer's new name) travels as UTF-8 bytes (`ay`): dbus-fast
before 2.11.1 (Debian bookworm ships 1.84) marshals a non-ASCII `s` argument with its character count
as length, and the bus drops the connection.
"""

import json
import logging
from collections.abc import Callable
from typing import TypeVar

from dbus_fast import BusType, DBusError, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from petcamd.control.controller import ControlError, Controller

log = logging.getLogger(__name__)

BUS_NAME = "org.petcamd.Daemon1"
OBJECT_PATH = "/org/petcamd/Daemon1"
INTERFACE = "org.petcamd.Daemon1"
ERROR_PREFIX = "org.petcamd.Error."

# D-Bus type codes as names, so the string annotations below also read as Python types to mypy.
s = str
b = bool
u = int
t = int

_R = TypeVar("_R")
_READ = PropertyAccess.READ


def _domain(call: Callable[[], _R]) -> _R:
    """Domain errors become named D-Bus errors with the message; nothing else crosses the bus."""
    try:
        return call()
    except ControlError as exc:
        raise DBusError(ERROR_PREFIX + exc.name, str(exc)) from None


class DaemonInterface(ServiceInterface):
    def __init__(self, controller: Controller) -> None:
        super().__init__(INTERFACE)
        self._controller = controller
        controller.pairing_closed_listeners.append(self._pairing_closed)
        controller.peer_listeners.append(self._peer_event)
        controller.mode_listeners.append(lambda mode: self.emit_properties_changed({"Mode": mode}))
        controller.viewer_listeners.append(self._viewer_event)
        controller.camera_listeners.append(self._camera_changed)

    def _viewer_event(self, event: str, peer_id: str, session_id: str, reason: str) -> None:
        if event == "connected":
            self.ViewerConnected(peer_id, session_id)
        else:
            self.ViewerDisconnected(peer_id, session_id, reason)
        self.emit_properties_changed({"ViewerCount": self._controller.status().viewers})

    def _camera_changed(self, state: str) -> None:
        self.CameraStateChanged(state)
        self.emit_properties_changed({"CameraState": state})

    def _pairing_closed(self, reason: str) -> None:
        self.PairingClosed(reason)
        self.emit_properties_changed({"PairingActive": False})

    def _peer_event(self, event: str, peer_id: str) -> None:
        if event == "added":
            self.PeerPaired(peer_id)
        elif event == "revoked":
            self.PeerRevoked(peer_id)

    @method()
    def GetStatus(self) -> "s":  # noqa: N802 - D-Bus member names are CamelCase
        return json.dumps(self._controller.status().to_dict(), sort_keys=True)

    @method()
    def StartPairing(self) -> "st":  # type: ignore[name-defined]  # noqa: N802, F821
        info = _domain(self._controller.start_pairing)
        self.emit_properties_changed({"PairingActive": True})
        return [info.url, info.expires_at]

    @method()
    def CancelPairing(self) -> None:  # noqa: N802
        _domain(self._controller.cancel_pairing)

    @method()
    def ListPeers(self) -> "s":  # noqa: N802
        return json.dumps([p.to_dict() for p in self._controller.peers()])

    @method()
    def RenamePeer(self, peer_id: "s", name_utf8: "ay") -> "s":  # type: ignore[name-defined]  # noqa: N802, F821
        try:
            name = bytes(name_utf8).decode("utf-8")
        except UnicodeDecodeError:
            raise DBusError(ERROR_PREFIX + "InvalidArgument", "the name is not valid UTF-8") from None
        info = _domain(lambda: self._controller.rename_peer(peer_id, name))
        return json.dumps(info.to_dict())

    @method()
    def RevokePeer(self, peer_id: "s") -> "s":  # noqa: N802
        info = _domain(lambda: self._controller.revoke_peer(peer_id))
        return json.dumps(info.to_dict())

    @method()
    def GetMode(self) -> "s":  # noqa: N802
        return self._controller.mode

    @method()
    async def SetMode(self, mode: "s") -> "b":  # noqa: N802
        """Switches now (no restart) and keeps the choice; False when the mode was on already."""
        try:
            return await self._controller.set_mode(mode)
        except ControlError as exc:
            raise DBusError(ERROR_PREFIX + exc.name, str(exc)) from None

    @method()
    async def RunNetworkTest(self) -> "ss":  # type: ignore[name-defined]  # noqa: N802, F821
        """The JSON report (docs/control.md) and the same report as text for people."""
        report = await self._controller.network_test()
        return [json.dumps(report.to_dict(), sort_keys=True), report.human()]

    @signal()
    def PairingClosed(self, reason: str) -> "s":  # noqa: N802
        """Emitted when a pairing window ends: paired, expired, cancelled or locked."""
        return reason

    @signal()
    def PeerPaired(self, peer_id: str) -> "s":  # noqa: N802
        return peer_id

    @signal()
    def PeerRevoked(self, peer_id: str) -> "s":  # noqa: N802
        return peer_id

    @signal()
    def ViewerConnected(self, peer_id: str, session_id: str) -> "ss":  # type: ignore[name-defined]  # noqa: N802, F821
        """A viewer's media connection is up (after ICE and DTLS), not merely negotiated."""
        return [peer_id, session_id]

    @signal()
    def ViewerDisconnected(self, peer_id: str, session_id: str, reason: str) -> "sss":  # type: ignore[name-defined]  # noqa: N802, F821
        return [peer_id, session_id, reason]

    @signal()
    def CameraStateChanged(self, state: str) -> "s":  # noqa: N802
        """idle, starting, streaming, stalled, restarting, failed, missing (also PropertiesChanged)."""
        return state

    @dbus_property(access=_READ)
    def State(self) -> "s":  # noqa: N802
        return self._controller.state

    @dbus_property(access=_READ)
    def Mode(self) -> "s":  # noqa: N802
        return self._controller.mode

    @dbus_property(access=_READ)
    def CameraState(self) -> "s":  # noqa: N802
        return self._controller.status().camera

    @dbus_property(access=_READ)
    def ViewerCount(self) -> "u":  # noqa: N802
        return self._controller.status().viewers

    @dbus_property(access=_READ)
    def PairingActive(self) -> "b":  # noqa: N802
        return self._controller.active_window is not None


class DBusService:
    """Connects, exports the interface and owns the well-known name (READY waits for that)."""

    def __init__(self, controller: Controller, *, bus: str, bus_address: str | None = None) -> None:
        self._controller = controller
        self._bus_type = BusType.SYSTEM if bus == "system" else BusType.SESSION
        self._bus_address = bus_address
        self._bus: MessageBus | None = None
        self.interface = DaemonInterface(controller)

    async def start(self) -> None:
        bus = MessageBus(bus_address=self._bus_address, bus_type=self._bus_type)
        try:
            await bus.connect()
            bus.export(OBJECT_PATH, self.interface)
            reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except Exception as exc:
            bus.disconnect()
            raise OSError(
                f"cannot register {BUS_NAME} on the {self._bus_type.name.lower()} bus: {exc}"
            ) from exc
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise OSError(f"{BUS_NAME} is already owned on the bus: is another petcamd running?")
        self._bus = bus
        log.info("control interface %s on the %s bus", BUS_NAME, self._bus_type.name.lower())

    async def stop(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
