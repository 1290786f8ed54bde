"""A disk that really fills up: a small tmpfs (mounting needs root, which CI has)."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str = "64k") -> Iterator[Path]:
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill_disk(directory: Path) -> Path:
    """Writes until ENOSPC; returns the filler file (delete it to free the space)."""
    filler = directory / "filler"
    with pytest.raises(OSError, match="No space left") as info, filler.open("wb", buffering=0) as file:  # noqa: PT012
        while True:
            file.write(bytes(4096))
    assert info.value.errno == errno.ENOSPC
    return filler
