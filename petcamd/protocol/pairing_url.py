"""The pairing URL shown as a QR code: everything a viewer needs to pair, in the URL fragment.

Browsers never send the fragment to the server, so the one-time secret stays between the display
and the phone that scanned it. Format (docs/protocol.md has the full spec):

    <origin>/#v=1&id=<device id>&k=<key>&s=<secret>&e=<expiry>&a=<addresses>&p=<port>&r=<relay>&n=<name>

k and s are unpadded base64url; e is Unix seconds (informative: the device enforces expiry with its
own monotonic clock); a is a comma-separated list of IP addresses; r and n are percent-encoded.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

VERSION = 1
PUBLIC_KEY_LEN = 32
MIN_SECRET_LEN = 16
MAX_URL_LEN = 512
MAX_NAME_LEN = 64
_DEVICE_ID = re.compile(r"[a-z2-7]{16}")


class PairingUrlError(ValueError):
    """The URL is not a petcamd pairing URL this version understands."""


@dataclass(frozen=True, slots=True)
class PairingPayload:
    device_id: str
    device_key: bytes
    secret: bytes
    expires_at: int
    addresses: tuple[str, ...]
    port: int
    relay_url: str = ""
    name: str = ""

    def __repr__(self) -> str:  # the secret must never reach a log line through a repr
        return f"PairingPayload(device_id={self.device_id!r}, expires_at={self.expires_at}, port={self.port})"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise PairingUrlError("invalid base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_pairing_url(origin: str, payload: PairingPayload) -> str:
    fields = [
        ("v", str(VERSION)),
        ("id", payload.device_id),
        ("k", b64url(payload.device_key)),
        ("s", b64url(payload.secret)),
        ("e", str(payload.expires_at)),
        ("a", ",".join(payload.addresses)),
        ("p", str(payload.port)),
    ]
    if payload.relay_url:
        fields.append(("r", payload.relay_url))
    if payload.name:
        fields.append(("n", payload.name))
    fragment = "&".join(f"{k}={urllib.parse.quote(v, safe=',:')}" for k, v in fields)
    return f"{origin.rstrip('/')}/#{fragment}"


def decode_pairing_url(url: str) -> PairingPayload:
    if len(url) > MAX_URL_LEN:
        raise PairingUrlError("pairing URL too long")
    _, sep, fragment = url.partition("#")
    if not sep:
        raise PairingUrlError("pairing URL has no fragment")
    try:
        pairs = urllib.parse.parse_qsl(fragment, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise PairingUrlError("malformed pairing fragment") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise PairingUrlError("repeated field in pairing fragment")
    if fields.get("v") != str(VERSION):
        raise PairingUrlError(f"unsupported pairing URL version {fields.get('v')!r}")
    try:
        device_id = fields["id"]
        key = unb64url(fields["k"])
        secret = unb64url(fields["s"])
        expires_at = int(fields["e"])
        port = int(fields["p"])
        addresses = tuple(a for a in fields.get("a", "").split(",") if a)
    except KeyError as exc:
        raise PairingUrlError(f"pairing URL lacks field {exc.args[0]!r}") from None
    except ValueError:
        raise PairingUrlError("malformed number in pairing URL") from None
    if not _DEVICE_ID.fullmatch(device_id):
        raise PairingUrlError("malformed device id")
    if len(key) != PUBLIC_KEY_LEN:
        raise PairingUrlError("device key must be 32 bytes")
    if len(secret) < MIN_SECRET_LEN:
        raise PairingUrlError("pairing secret too short")
    if not 0 < port < 65536 or expires_at < 0:
        raise PairingUrlError("port or expiry out of range")
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise PairingUrlError(f"malformed address {address!r}") from None
    name = fields.get("n", "")
    if len(name) > MAX_NAME_LEN:
        raise PairingUrlError("device name too long")
    return PairingPayload(device_id, key, secret, expires_at, addresses, port, fields.get("r", ""), name)
