"""The control interface over a real private dbus-daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import BusType, DBusError
from dbus_fast.aio import MessageBus

from petcamd.config import Config
from petcamd.control.controller import Controller, StatusProbe
from petcamd.control.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH, DBusService
from petcamd.protocol.pairing_url import decode_pairing_url
from tests.dbus_daemon import private_bus


@pytest.fixture
def bus_address(tmp_path: Path) -> Iterator[str]:
    with private_bus(tmp_path) as address:
        yield address


class RecordingDisplay:
    def __init__(self) -> None:
        self.shown: list[str] = []
        self.cleared: list[str] = []

    def show_pairing(self, url: str, device_name: str, remaining_s: float) -> None:
        self.shown.append(url)

    def clear(self, reason: str) -> None:
        self.cleared.append(reason)


def make_controller(display: RecordingDisplay, problem: str | None = None) -> Controller:
    probe = StatusProbe(
        camera_state=lambda: "idle",
        camera_description=lambda: "synthetic test pattern",
        viewers=lambda: 0,
        paired_peers=lambda: 0,
        keystore_problem=lambda: problem,
        lan_port=lambda: 8080,
    )
    return Controller(config=Config(), device_id="a" * 16, device_key=bytes(32), probe=probe, display=display)


async def test_methods_properties_and_errors(bus_address: str) -> None:
    display = RecordingDisplay()
    service = DBusService(make_controller(display), bus="session", bus_address=bus_address)
    await service.start()
    client = await MessageBus(bus_address=bus_address, bus_type=BusType.SESSION).connect()
    try:
        introspection = await client.introspect(BUS_NAME, OBJECT_PATH)
        iface = client.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection).get_interface(INTERFACE)
        status = json.loads(await iface.call_get_status())  # type: ignore[attr-defined]
        assert status["device_id"] == "a" * 16
        assert status["pairing_active"] is False
        assert await iface.get_pairing_active() is False  # type: ignore[attr-defined]

        url, expires_at = await iface.call_start_pairing()  # type: ignore[attr-defined]
        payload = decode_pairing_url(url)
        assert payload.expires_at == expires_at
        assert display.shown == [url]
        assert await iface.get_pairing_active() is True  # type: ignore[attr-defined]
        assert payload.secret.hex() not in await iface.call_get_status()  # type: ignore[attr-defined]

        await iface.call_cancel_pairing()  # type: ignore[attr-defined]
        assert display.cleared == ["cancelled"]
        with pytest.raises(DBusError) as info:
            await iface.call_cancel_pairing()  # type: ignore[attr-defined]
        assert info.value.type == "org.petcamd.Error.PairingUnavailable"
        assert "no pairing window is open" in str(info.value.text)
    finally:
        client.disconnect()
        await service.stop()
        await service.stop()  # idempotent


async def test_pairing_refused_over_a_broken_keystore(bus_address: str) -> None:
    service = DBusService(
        make_controller(RecordingDisplay(), "peers.json is corrupt"), bus="session", bus_address=bus_address
    )
    await service.start()
    client = await MessageBus(bus_address=bus_address, bus_type=BusType.SESSION).connect()
    try:
        introspection = await client.introspect(BUS_NAME, OBJECT_PATH)
        iface = client.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection).get_interface(INTERFACE)
        with pytest.raises(DBusError, match="keystore is repaired"):
            await iface.call_start_pairing()  # type: ignore[attr-defined]
    finally:
        client.disconnect()
        await service.stop()


async def test_second_instance_cannot_take_the_name(bus_address: str) -> None:
    first = DBusService(make_controller(RecordingDisplay()), bus="session", bus_address=bus_address)
    second = DBusService(make_controller(RecordingDisplay()), bus="session", bus_address=bus_address)
    await first.start()
    try:
        with pytest.raises(OSError, match="already owned"):
            await second.start()
    finally:
        await first.stop()
