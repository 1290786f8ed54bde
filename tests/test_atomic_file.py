"""write_atomic on real files, including a really full and a really read-only filesystem."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from petcamd.atomic_file import (
    StateFileExistsError,
    StateWriteError,
    ensure_private_directory,
    previous_path,
    remove_stale_temp_files,
    write_atomic,
)
from tests import full_disk


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask after a test changes it."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up."""
    with full_disk.small_tmpfs(tmp_path / "small", "64k") as mount_point:
        yield mount_point


fill_disk = full_disk.fill_disk


def test_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert not previous_path(target).exists()
    assert temp_files(tmp_path) == []


def test_large_payload(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    write_atomic(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("process_umask", [0o000, 0o022, 0o077])
def test_mode_is_0600_whatever_the_umask(tmp_path: Path, process_umask: int) -> None:
    os.umask(process_umask)
    target = tmp_path / "secret"
    write_atomic(target, b"x")
    assert file_mode(target) == 0o600
    write_atomic(target, b"y", keep_previous=True)
    assert file_mode(target) == 0o600
    assert file_mode(previous_path(target)) == 0o600


@pytest.mark.usefixtures("umask")
def test_requested_mode_is_exact_even_if_umask_is_stricter(tmp_path: Path) -> None:
    os.umask(0o077)
    write_atomic(tmp_path / "public", b"x", mode=0o644)
    assert file_mode(tmp_path / "public") == 0o644


def test_replacing_a_loose_file_makes_it_private(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.write_bytes(b"old")
    target.chmod(0o666)
    write_atomic(target, b"new")
    assert file_mode(target) == 0o600


def test_previous_generation_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "peers.json"
    write_atomic(target, b"gen1", keep_previous=True)
    assert not previous_path(target).exists()
    write_atomic(target, b"gen2", keep_previous=True)
    assert previous_path(target).name == "peers.json.prev"
    assert previous_path(target).read_bytes() == b"gen1"
    write_atomic(target, b"gen3", keep_previous=True)
    assert target.read_bytes() == b"gen3"
    assert previous_path(target).read_bytes() == b"gen2"
    # The previous generation is a separate file, not an alias of the current one.
    assert target.stat().st_ino != previous_path(target).stat().st_ino
    assert temp_files(tmp_path) == []


def test_exclusive_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "device.key"
    write_atomic(target, b"original", exclusive=True)
    with pytest.raises(StateFileExistsError, match="already exists"):
        write_atomic(target, b"intruder", exclusive=True)
    assert target.read_bytes() == b"original"
    assert file_mode(target) == 0o600
    assert temp_files(tmp_path) == []


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "state"
    with pytest.raises(StateWriteError, match=r"cannot write .*absent/state") as info:
        write_atomic(target, b"x")
    assert info.value.errno == errno.ENOENT
    assert info.value.path == target


def test_disk_full_leaves_old_file_and_no_temp(small_tmpfs: Path) -> None:
    target = small_tmpfs / "peers.json"
    write_atomic(target, b"gen1", keep_previous=True)
    write_atomic(target, b"gen2", keep_previous=True)
    filler = fill_disk(small_tmpfs)
    with pytest.raises(StateWriteError, match="no space left") as info:
        write_atomic(target, b"gen3" * 4096, keep_previous=True)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"gen2"
    assert previous_path(target).read_bytes() == b"gen1"
    assert temp_files(small_tmpfs) == []
    filler.unlink()
    write_atomic(target, b"gen3", keep_previous=True)
    assert target.read_bytes() == b"gen3"


def test_read_only_filesystem_is_a_clear_error(small_tmpfs: Path) -> None:
    target = small_tmpfs / "state"
    write_atomic(target, b"kept")
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    try:
        with pytest.raises(StateWriteError, match="read-only") as info:
            write_atomic(target, b"lost", keep_previous=True)
        assert info.value.errno == errno.EROFS
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
    assert target.read_bytes() == b"kept"
    assert temp_files(small_tmpfs) == []


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "peers.json"
    write_atomic(target, b"data", keep_previous=True)
    stale = [tmp_path / ".peers.json.0123456789ab.tmp", tmp_path / ".peers.json.prev.0123456789ab.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    unrelated = tmp_path / ".other.json.0123456789ab.tmp"
    unrelated.write_bytes(b"not ours")
    assert remove_stale_temp_files(target) == 2
    assert not any(path.exists() for path in stale)
    assert unrelated.exists()
    assert target.read_bytes() == b"data"


@pytest.mark.usefixtures("umask")
def test_private_directory_is_created_0700(tmp_path: Path) -> None:
    os.umask(0)
    directory = tmp_path / "state" / "petcamd"
    ensure_private_directory(directory)
    assert file_mode(directory) == 0o700
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    ensure_private_directory(existing)
    assert file_mode(existing) == 0o755  # not ours to change
