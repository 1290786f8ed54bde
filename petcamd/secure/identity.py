"""Long-term X25519 identities of devices and viewers.

The device's key is its name on the relay and the key every viewer pins from the QR code: losing
or silently replacing it unpairs every phone, so a damaged key file stops the daemon with a clear
message instead of being regenerated.

Key file format (UTF-8 JSON, mode 0600, written once with `write_atomic(exclusive=True)`)::

    {"format": "petcamd-identity", "version": 1, "private_key": "<base64, 32 bytes>",
     "public_key": "<base64, 32 bytes>", "key_id": "<key_id(public_key)>"}

The public key and key id are redundant on purpose: a damaged private key would still decode to
*some* valid X25519 key, and they are what catches it. They also let an owner read the id without
tools.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from petcamd.atomic_file import StateFileExistsError, StateWriteError, ensure_private_directory, write_atomic

logger = logging.getLogger(__name__)

KEY_SIZE = 32
KEY_ID_LENGTH = 16
FILE_FORMAT = "petcamd-identity"
FILE_VERSION = 1
_KEY_ID_CONTEXT = b"petcamd key id v1"
_MAX_FILE_SIZE = 4096


class IdentityError(Exception):
    """The identity file cannot be used; the message tells the owner what is wrong and where."""


def key_id(public_key: bytes) -> str:
    """Short stable name of a public key: the device's routing id and a viewer's peer id.

    80 bits of SHA-256 in lowercase base32, so it survives case-insensitive transports and can be
    read aloud.
    """
    if len(public_key) != KEY_SIZE:
        raise ValueError(f"an X25519 public key is {KEY_SIZE} bytes, got {len(public_key)}")
    digest = hashlib.sha256(_KEY_ID_CONTEXT + public_key).digest()
    return base64.b32encode(digest).decode("ascii")[:KEY_ID_LENGTH].lower()


def _raw_public(private_key: X25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(private_key: X25519PrivateKey) -> bytes:
    return private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@dataclass(frozen=True, repr=False)
class Identity:
    """A key pair; equal identities have equal public keys. The repr names only the key id."""

    private_key: X25519PrivateKey = field(compare=False)
    public_key: bytes

    def __post_init__(self) -> None:
        if _raw_public(self.private_key) != self.public_key:
            raise ValueError("public_key does not belong to private_key")

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_private_key(X25519PrivateKey.generate())

    @classmethod
    def from_private_key(cls, private_key: X25519PrivateKey) -> Identity:
        return cls(private_key, _raw_public(private_key))

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def __repr__(self) -> str:
        return f"Identity(key_id={self.key_id!r})"


def load_or_create_identity(path: Path) -> Identity:
    """Load the identity at `path`, or create one if (and only if) the file does not exist.

    Raises IdentityError if the file exists but cannot be read or is damaged (it is never
    replaced), or if a new one cannot be written (the error's cause is the StateWriteError).
    """
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    try:
        ensure_private_directory(path.parent)
    except OSError as exc:
        raise IdentityError(f"cannot create directory {path.parent}: {exc.strerror or exc}") from exc
    identity = Identity.generate()
    try:
        write_atomic(path, _encode(identity), mode=0o600, exclusive=True)
    except StateFileExistsError:
        # Another process created it first; theirs is the identity.
        try:
            return _load(path)
        except FileNotFoundError:
            raise IdentityError(f"identity file {path} appeared and vanished while creating it") from None
    except StateWriteError as exc:
        raise IdentityError(f"cannot create a new identity: {exc}") from exc
    logger.info("created a new identity %s in %s", identity.key_id, path)
    return identity


def _encode(identity: Identity) -> bytes:
    document = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "private_key": base64.b64encode(_raw_private(identity.private_key)).decode("ascii"),
        "public_key": base64.b64encode(identity.public_key).decode("ascii"),
        "key_id": identity.key_id,
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _load(path: Path) -> Identity:
    """Raises FileNotFoundError only when there is no file at all."""
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read(_MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot read identity file {path}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        logger.warning(
            "identity file %s is accessible to other users (mode %o); it should be 0600",
            path,
            mode & 0o777,
        )
    try:
        return _decode(raw)
    except _FormatError as exc:
        raise IdentityError(
            f"identity file {path} is damaged ({exc}); it was left untouched. Restore it from a "
            "backup, or move it away to create a new identity (every viewer must then pair again)"
        ) from None


class _FormatError(Exception):
    pass


def _decode(raw: bytes) -> Identity:
    if not raw:
        raise _FormatError("it is empty")
    if len(raw) > _MAX_FILE_SIZE:
        raise _FormatError("it is far larger than an identity file")
    try:
        document: Any = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _FormatError("it is not valid JSON; truncated or overwritten?") from None
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise _FormatError("it is not a petcamd identity file")
    version = document.get("version")
    if version != FILE_VERSION:
        if isinstance(version, int) and not isinstance(version, bool) and version > FILE_VERSION:
            raise _FormatError(f"it has version {version}, written by a newer petcamd")
        raise _FormatError(f"unsupported version {version!r}")
    private_raw = _b64_key(document.get("private_key"), "private_key")
    public_raw = _b64_key(document.get("public_key"), "public_key")
    identity = Identity.from_private_key(X25519PrivateKey.from_private_bytes(private_raw))
    if identity.public_key != public_raw or document.get("key_id") != identity.key_id:
        raise _FormatError("its private key does not match its public key")
    return identity


def _b64_key(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise _FormatError(f"{name} is missing")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _FormatError(f"{name} is not valid base64") from None
    if len(decoded) != KEY_SIZE:
        raise _FormatError(f"{name} is {len(decoded)} bytes, expected {KEY_SIZE}")
    return decoded
