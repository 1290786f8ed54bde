"""The control interface over a real private dbus-daemon."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType, DBusError
from dbus_fast.aio import MessageBus

from petcamd.config import parse_config
from petcamd.control.controller import Controller, StatusProbe
from petcamd.control.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH, DBusService
from petcamd.display.console import ConsoleDisplay
from petcamd.protocol.pairing_url import decode_pairing_url
from petcamd.secure.keystore import Keystore


class RecordingDisplay:
    def __init__(self) -> None:
        self.shown: list[str] = []
        self.cleared: list[str] = []

    def show_pairing(self, url: str, device_name: str, remaining_s: float) -> None:
        self.shown.append(url)

    def clear(self, reason: str) -> None:
        self.cleared.append(reason)


def make_controller(display: RecordingDisplay, keystore: Keystore) -> Controller:
    probe = StatusProbe(
        camera_state=lambda: "idle",
        camera_description=lambda: "synthetic test pattern",
        viewers=lambda: 0,
        lan_port=lambda: 8080,
    )
    return Controller(
        config=parse_config({"device": {"name": "Küche 📷"}}),
        device_id="a" * 16,
        device_key=bytes(32),
        probe=probe,
        keystore=keystore,
        display=display,
    )


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    return Keystore.open(tmp_path / "state")


async def proxy(bus: MessageBus) -> Any:
    introspection = await bus.introspect(BUS_NAME, OBJECT_PATH)
    return bus.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection).get_interface(INTERFACE)


async def test_methods_properties_and_errors(bus_address: str, keystore: Keystore) -> None:
    display = RecordingDisplay()
    service = DBusService(make_controller(display, keystore), bus="session", bus_address=bus_address)
    await service.start()
    client = await MessageBus(bus_address=bus_address, bus_type=BusType.SESSION).connect()
    try:
        iface = await proxy(client)
        status = json.loads(await iface.call_get_status())
        assert status["device_id"] == "a" * 16
        assert status["name"] == "Küche 📷"  # non-ASCII survives every dbus-fast version
        assert status["pairing_active"] is False
        assert await iface.get_pairing_active() is False

        url, expires_at = await iface.call_start_pairing()
        payload = decode_pairing_url(url)
        assert payload.expires_at == expires_at
        assert display.shown == [url]
        assert await iface.get_pairing_active() is True
        assert payload.secret.hex() not in await iface.call_get_status()

        await iface.call_cancel_pairing()
        assert display.cleared == ["cancelled"]
        with pytest.raises(DBusError) as info:
            await iface.call_cancel_pairing()
        assert info.value.type == "org.petcamd.Error.PairingUnavailable"
        assert "no pairing window is open" in str(info.value.text)
    finally:
        client.disconnect()
        await service.stop()
        await service.stop()  # idempotent


async def test_pairing_refused_over_a_broken_keystore(bus_address: str, tmp_path: Path) -> None:
    state = tmp_path / "broken"
    state.mkdir()
    (state / "peers.json").write_text("{not json")
    broken = Keystore.open(state)
    service = DBusService(make_controller(RecordingDisplay(), broken), bus="session", bus_address=bus_address)
    await service.start()
    client = await MessageBus(bus_address=bus_address, bus_type=BusType.SESSION).connect()
    try:
        iface = await proxy(client)
        with pytest.raises(DBusError, match="keystore is repaired"):
            await iface.call_start_pairing()
    finally:
        client.disconnect()
        await service.stop()


async def test_second_instance_cannot_take_the_name(bus_address: str, keystore: Keystore) -> None:
    first = DBusService(make_controller(RecordingDisplay(), keystore), bus="session", bus_address=bus_address)
    second = DBusService(
        make_controller(RecordingDisplay(), keystore), bus="session", bus_address=bus_address
    )
    await first.start()
    try:
        with pytest.raises(OSError, match="already owned"):
            await second.start()
    finally:
        await first.stop()


async def test_peers_rename_revoke_and_signals(bus_address: str, keystore: Keystore) -> None:
    service = DBusService(
        make_controller(RecordingDisplay(), keystore), bus="session", bus_address=bus_address
    )
    await service.start()
    client = await MessageBus(bus_address=bus_address, bus_type=BusType.SESSION).connect()
    try:
        iface = await proxy(client)
        events: list[tuple[str, str]] = []
        iface.on_peer_paired(lambda peer_id: events.append(("paired", peer_id)))
        iface.on_peer_revoked(lambda peer_id: events.append(("revoked", peer_id)))
        iface.on_pairing_closed(lambda reason: events.append(("closed", reason)))
        peer = keystore.add("Anna's phone", bytes(range(32)))
        peers = json.loads(await iface.call_list_peers())
        assert peers == [
            {"peer_id": peer.peer_id, "name": "Anna's phone", "paired_at": peer.paired_at, "last_seen": None}
        ]
        assert "public_key" not in json.dumps(peers)
        renamed = json.loads(await iface.call_rename_peer(peer.peer_id, "Küche 📱".encode()))
        assert renamed["name"] == "Küche 📱"
        assert json.loads(await iface.call_list_peers())[0]["name"] == "Küche 📱"
        with pytest.raises(DBusError) as info:
            await iface.call_rename_peer(peer.peer_id, "bad\u202ename".encode())
        assert info.value.type == "org.petcamd.Error.InvalidArgument"
        await iface.call_revoke_peer(peer.peer_id)
        with pytest.raises(DBusError) as info:
            await iface.call_revoke_peer(peer.peer_id)
        assert info.value.type == "org.petcamd.Error.UnknownPeer"
        assert json.loads(await iface.call_list_peers()) == []
        await iface.call_start_pairing()
        await iface.call_cancel_pairing()
        for _ in range(50):
            if len(events) >= 3:
                break
            await asyncio.sleep(0.02)
        assert events == [("paired", peer.peer_id), ("revoked", peer.peer_id), ("closed", "cancelled")]
    finally:
        client.disconnect()
        await service.stop()


async def test_internet_mode_pairing_url_is_on_the_relay_origin(keystore: Keystore) -> None:
    probe = StatusProbe(
        camera_state=lambda: "idle",
        camera_description=lambda: "test",
        viewers=lambda: 0,
        lan_port=lambda: 8080,
    )
    config = parse_config(
        {"network": {"mode": "internet", "relay_url": "wss://Relay.Example.org:443/device"}}
    )
    controller = Controller(
        config=config, device_id="a" * 16, device_key=bytes(32), probe=probe, keystore=keystore, display=None
    )
    url = controller.start_pairing().url
    assert url.startswith("https://relay.example.org/#v=1&")  # the page's origin, not the device endpoint
    assert decode_pairing_url(url).relay_url == "wss://Relay.Example.org:443/device"
    controller.cancel_pairing()


@pytest.mark.timeout(30)
async def test_the_display_countdown_follows_the_minutes_left(keystore: Keystore) -> None:
    """The pairing screen is redrawn just after each whole minute, on the console as a one-line update."""
    stream = io.StringIO()
    probe = StatusProbe(
        camera_state=lambda: "idle",
        camera_description=lambda: "test",
        viewers=lambda: 0,
        lan_port=lambda: 8080,
    )
    controller = Controller(
        config=parse_config({"pairing": {"window_s": 60.4}}),
        device_id="a" * 16,
        device_key=bytes(32),
        probe=probe,
        keystore=keystore,
        display=ConsoleDisplay(stream),
    )
    info = controller.start_pairing()
    assert "expires in 2 minutes" in stream.getvalue()  # 60.4 s: the second minute has begun
    assert stream.getvalue().count(info.url) == 1
    await asyncio.sleep(0.8)  # past the minute boundary at 0.4 s
    assert stream.getvalue().endswith("The pairing code expires in 1 minute.\n")
    assert stream.getvalue().count(info.url) == 1  # the QR code is not printed again
    controller.cancel_pairing()
    assert stream.getvalue().endswith("Pairing window closed: cancelled.\n")
    assert controller._countdown_timer is None
    await controller.stop()
