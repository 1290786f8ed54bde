"""petcam-view's own state: the viewer's key and the devices it paired with.

Layout of the state directory (0700; default ``$XDG_DATA_HOME/petcam-view``, i.e.
``~/.local/share/petcam-view``)::

    viewer.key      the viewer's X25519 identity (petcamd.secure.identity format, 0600)
    devices.json    the paired devices (0600, written atomically):
        {"version": 1, "devices": [{"device_id": "<key id>", "device_key": "<base64url, 32 bytes>",
          "peer_id": "<our key id on that device>", "name": "Kitchen cam",
          "addresses": ["192.168.1.20"], "port": 8080, "relay_url": "", "paired_at": 1700000000}]}

Nothing here trusts a server: the device key is the one the pairing URL pinned, and a device is
only stored after its Noise handshake proved it holds that key.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from petcamd.atomic_file import StateWriteError, ensure_private_directory, write_atomic
from petcamd.protocol.pairing_url import PairingUrlError, b64url, unb64url
from petcamd.secure.identity import Identity, key_id, load_or_create_identity

FILE_VERSION = 1
DEVICES_FILE = "devices.json"
KEY_FILE = "viewer.key"
_MAX_FILE_SIZE = 1 << 20


class StateError(Exception):
    """The state directory or a file in it cannot be used; the message says which and why."""


class _DamagedError(Exception):
    """A file is unusable; the message says why without quoting it."""


class UnknownDeviceError(StateError):
    """No paired device matches what was asked for (or more than one does)."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "petcam-view"


@dataclass(frozen=True, slots=True)
class PairedDevice:
    device_id: str
    device_key: bytes
    peer_id: str
    name: str
    addresses: tuple[str, ...]
    port: int
    relay_url: str = ""
    paired_at: int = 0

    def __repr__(self) -> str:
        return f"PairedDevice({self.device_id!r}, name={self.name!r})"

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["device_key"] = b64url(self.device_key)
        document["addresses"] = list(self.addresses)
        return document

    @classmethod
    def from_json(cls, document: Any) -> PairedDevice:
        """Raises _DamagedError for a malformed entry."""
        if not isinstance(document, dict):
            raise _DamagedError("a device entry is not an object")
        try:
            key = unb64url(str(document["device_key"]))
            device = cls(
                device_id=_text(document, "device_id"),
                device_key=key,
                peer_id=_text(document, "peer_id"),
                name=_text(document, "name"),
                addresses=tuple(_text_list(document, "addresses")),
                port=_integer(document, "port"),
                relay_url=str(document.get("relay_url") or ""),
                paired_at=_integer(document, "paired_at"),
            )
        except (KeyError, PairingUrlError, ValueError) as exc:
            raise _DamagedError("a device entry lacks a field or has a malformed key") from exc
        if len(key) != 32 or key_id(key) != device.device_id:
            raise _DamagedError("a device entry's id does not match its key")
        return device


def _text(document: dict[str, Any], name: str) -> str:
    value = document[name]
    if not isinstance(value, str):
        raise _DamagedError(f"a device entry's {name} is not text")
    return value


def _text_list(document: dict[str, Any], name: str) -> list[str]:
    value = document[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _DamagedError(f"a device entry's {name} is not a list of text")
    return value


def _integer(document: dict[str, Any], name: str) -> int:
    value = document[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise _DamagedError(f"a device entry's {name} is not an integer")
    return value


class ViewerState:
    """Synchronous and small: call it from a thread when on an event loop with latency to keep."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_state_dir()

    @property
    def devices_path(self) -> Path:
        return self.directory / DEVICES_FILE

    def identity(self) -> Identity:
        """This viewer's key, created on first use."""
        try:
            ensure_private_directory(self.directory)
        except OSError as exc:
            raise StateError(f"cannot create {self.directory}: {exc.strerror or exc}") from None
        try:
            return load_or_create_identity(self.directory / KEY_FILE)
        except Exception as exc:
            raise StateError(str(exc)) from None

    def devices(self) -> list[PairedDevice]:
        path = self.devices_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_FILE_SIZE:
            raise StateError(f"{path} is larger than {_MAX_FILE_SIZE} bytes")
        try:
            return _decode(raw)
        except _DamagedError as exc:
            raise StateError(f"{path} is damaged ({exc}); move it away and pair again") from None

    def add(self, device: PairedDevice) -> PairedDevice:
        """Store a newly paired device, replacing an earlier pairing with the same device."""
        if not device.paired_at:
            device = replace(device, paired_at=int(time.time()))
        devices = [d for d in self.devices() if d.device_id != device.device_id]
        devices.append(device)
        self._write(devices)
        return device

    def remove(self, device_id: str) -> None:
        self._write([d for d in self.devices() if d.device_id != device_id])

    def find(self, selector: str | None) -> PairedDevice:
        """By device id, id prefix or name (case-insensitive); None means the only paired device."""
        devices = self.devices()
        if not devices:
            raise UnknownDeviceError("no device is paired yet: run `petcam-view pair URL` first")
        if selector is None:
            if len(devices) == 1:
                return devices[0]
            raise UnknownDeviceError("several devices are paired: name one (see `petcam-view list`)")
        wanted = selector.casefold()
        for match in (
            [d for d in devices if d.device_id == selector],
            [d for d in devices if d.name.casefold() == wanted],
            [d for d in devices if d.device_id.startswith(selector)],
        ):
            if len(match) == 1:
                return match[0]
            if len(match) > 1:
                raise UnknownDeviceError(f"{selector!r} matches several devices; use the device id")
        raise UnknownDeviceError(f"no paired device is called {selector!r} (see `petcam-view list`)")

    def _write(self, devices: list[PairedDevice]) -> None:
        document = {"version": FILE_VERSION, "devices": [d.to_json() for d in devices]}
        data = (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            ensure_private_directory(self.directory)
            write_atomic(self.devices_path, data, mode=0o600)
        except (OSError, StateWriteError) as exc:
            raise StateError(str(exc)) from None


def _decode(raw: bytes) -> list[PairedDevice]:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _DamagedError("not valid JSON") from None
    if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
        raise _DamagedError("unknown format or version")
    entries = document.get("devices")
    if not isinstance(entries, list):
        raise _DamagedError("no list of devices")
    return [PairedDevice.from_json(entry) for entry in entries]
