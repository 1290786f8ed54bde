"""Long-term identities: key ids, creation, and refusing to replace a damaged key file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from petcamd.atomic_file import StateWriteError
from petcamd.secure.identity import Identity, IdentityError, key_id, load_or_create_identity
from tests import full_disk

REPO_ROOT = Path(__file__).resolve().parent.parent


def raw_private(identity: Identity) -> bytes:
    return identity.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


def test_key_id_format() -> None:
    public = bytes(range(32))
    expected = base64.b32encode(hashlib.sha256(b"petcamd key id v1" + public).digest()).decode()
    assert key_id(public) == expected[:16].lower()
    assert len(key_id(public)) == 16
    assert set(key_id(public)) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert key_id(public) != key_id(bytes(31) + b"\x01")


@pytest.mark.parametrize("size", [0, 31, 33])
def test_key_id_rejects_wrong_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        key_id(bytes(size))


def test_identity_repr_hides_private_key() -> None:
    identity = Identity.generate()
    private = raw_private(identity)
    text = repr(identity)
    assert identity.key_id in text
    assert "private" not in text
    assert private.hex() not in text
    assert base64.b64encode(private).decode() not in text
    assert str(identity) == text


def test_identity_equality_follows_public_key() -> None:
    key = X25519PrivateKey.generate()
    first, second = Identity.from_private_key(key), Identity.from_private_key(key)
    assert first == second
    assert hash(first) == hash(second)
    assert first != Identity.generate()
    with pytest.raises(ValueError, match="does not belong"):
        Identity(key, Identity.generate().public_key)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("process_umask", [0o000, 0o022])
def test_created_private_and_reloaded(tmp_path: Path, process_umask: int) -> None:
    os.umask(process_umask)
    path = tmp_path / "state" / "device.key"
    created = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = load_or_create_identity(path)
    assert loaded == created
    assert raw_private(loaded) == raw_private(created)
    assert len(created.public_key) == 32
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert document["key_id"] == created.key_id


def test_concurrent_creators_agree(tmp_path: Path) -> None:
    """Processes racing to create the identity all end up with one and the same key."""
    path = tmp_path / "device.key"
    script = (
        "import sys\nfrom pathlib import Path\nfrom petcamd.secure.identity import load_or_create_identity\n"
        "print(load_or_create_identity(Path(sys.argv[1])).key_id)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(6)
    ]
    ids = {child.communicate(timeout=30)[0].strip() for child in children}
    assert all(child.returncode == 0 for child in children)
    assert ids == {load_or_create_identity(path).key_id}


def valid_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "device.key"
    load_or_create_identity(path)
    return path, path.read_bytes()


def flip_private_key_bit(raw: bytes) -> bytes:
    document = json.loads(raw)
    private = bytearray(base64.b64decode(document["private_key"]))
    private[5] ^= 0x10
    document["private_key"] = base64.b64encode(bytes(private)).decode()
    return json.dumps(document).encode()


def newer_version(raw: bytes) -> bytes:
    document = json.loads(raw)
    document["version"] = 2
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[: len(raw) // 2], "not valid JSON"),
        (lambda _raw: b"", "empty"),
        (lambda _raw: os.urandom(64), "not valid JSON"),
        (lambda _raw: b'{"hello": 1}', "not a petcamd identity"),
        (flip_private_key_bit, "does not match"),
        (newer_version, "newer petcamd"),
        (lambda raw: raw.replace(b'"private_key": "', b'"private_key": "!'), "not valid base64"),
    ],
    ids=["truncated", "empty", "garbage", "foreign", "bit-flip", "newer-version", "bad-base64"],
)
def test_damaged_file_is_refused_and_kept(tmp_path: Path, damage, message: str) -> None:
    path, raw = valid_file(tmp_path)
    damaged = damage(raw)
    path.write_bytes(damaged)
    with pytest.raises(IdentityError, match=message) as info:
        load_or_create_identity(path)
    assert str(path) in str(info.value)
    assert "left untouched" in str(info.value)
    assert path.read_bytes() == damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.key"]


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    path.mkdir()
    with pytest.raises(IdentityError, match="cannot read identity file"):
        load_or_create_identity(path)
    assert path.is_dir()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs: a disk that really fills up."""
    with full_disk.small_tmpfs(tmp_path / "small", "16k") as mount_point:
        yield mount_point


fill_disk = full_disk.fill_disk


def test_disk_full_while_creating(small_tmpfs: Path) -> None:
    fill_disk(small_tmpfs)
    with pytest.raises(IdentityError, match="no space left") as info:
        load_or_create_identity(small_tmpfs / "device.key")
    assert isinstance(info.value.__cause__, StateWriteError)
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]
