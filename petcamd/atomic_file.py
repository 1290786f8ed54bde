"""Crash-safe replacement of small state files (keys, the keystore, settings).

A reader must only ever see the old bytes or the new bytes, never a mix, an empty file or a file
briefly readable by other users. So the new content goes to a temporary file in the same directory,
created with its final permissions before any byte is written, is fsynced, and then renamed over
the target; the directory is fsynced so the rename itself survives a power cut.

With `keep_previous` the generation being replaced stays on disk as `<name>.prev` (a hard link to
the old inode, so no copy can be torn): a reader that finds the current file damaged can fall back
to it.

Temporary files are named `.<name>.<random>.tmp`; a process killed mid-write leaves one behind,
which `remove_stale_temp_files` clears. Only one process may write a given file at a time, and the
filesystem must support hard links (the state directory is on the root filesystem, ext4).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

PREVIOUS_SUFFIX = ".prev"
_TEMP_SUFFIX = ".tmp"


class StateWriteError(Exception):
    """A state file could not be written; the file on disk (if any) is unchanged.

    The one exception says so in its message: the new content was renamed into place but the
    directory could not be fsynced, so whether it survives a power cut is unknown.

    `errno` is the underlying OS error number (e.g. errno.ENOSPC), for callers that react to it.
    """

    def __init__(self, path: Path, reason: str, error_number: int | None = None) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path
        self.errno = error_number


class StateFileExistsError(StateWriteError):
    """`exclusive=True` was asked for and the file already exists (it was left untouched)."""


def previous_path(path: Path) -> Path:
    """Where `write_atomic(..., keep_previous=True)` keeps the generation it replaced."""
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    keep_previous: bool = False,
    exclusive: bool = False,
) -> None:
    """Replace `path` with `data` so that a crash at any moment leaves the old or the new file.

    `exclusive` creates the file only if it does not exist yet (atomically, no replace ever), for
    files such as a private key that must never be overwritten. Raises StateWriteError (or
    StateFileExistsError) and leaves no temporary file behind on failure.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
    try:
        _write_new_file(temp, data, mode)
    except OSError as exc:
        _discard(temp)
        raise _error(path, exc) from exc
    try:
        if exclusive:
            os.link(temp, path)  # unlike rename, never replaces an existing file
            _discard(temp)
        else:
            if keep_previous:
                _preserve_previous(path)
            temp.replace(path)
    except FileExistsError as exc:
        _discard(temp)
        raise StateFileExistsError(path, "it already exists", exc.errno) from exc
    except OSError as exc:
        _discard(temp)
        raise _error(path, exc) from exc
    try:
        fsync_directory(directory)
    except OSError as exc:
        # The new content is in place; only its durability across a power cut is unknown.
        raise _error(path, exc, "written, but the directory could not be synced") from exc


def fsync_directory(directory: Path) -> None:
    """Make renames and links in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems without directory fsync
            raise
    finally:
        os.close(fd)


def ensure_private_directory(directory: Path, mode: int = 0o700) -> None:
    """Create `directory` (and parents) if missing; a directory we create gets exactly `mode`.

    An existing directory is left as it is: its owner (e.g. systemd's StateDirectory=) decides.
    """
    if directory.is_dir():
        return
    directory.mkdir(mode=mode, parents=True, exist_ok=True)
    directory.chmod(mode)  # mkdir's mode is filtered by the umask


def remove_stale_temp_files(path: Path) -> int:
    """Delete temporary files left by writers of `path` that were killed mid-write.

    Call it only while no other writer of `path` can be running. Returns how many were removed.
    """
    removed = 0
    for candidate in path.parent.glob(f".{path.name}.*{_TEMP_SUFFIX}"):
        try:
            candidate.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("cannot remove stale temporary file %s: %s", candidate, exc.strerror)
            continue
        removed += 1
    return removed


def _write_new_file(temp: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(temp, flags, mode)
    try:
        # The umask may have removed bits the caller asked for; set them while the file is empty.
        if os.fstat(fd).st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _preserve_previous(path: Path) -> None:
    """Make `<name>.prev` the generation about to be replaced, atomically."""
    previous = previous_path(path)
    staging = path.parent / f".{previous.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
    try:
        os.link(path, staging)
    except FileNotFoundError:
        return  # nothing to keep yet
    try:
        staging.replace(previous)
    except OSError:
        _discard(staging)
        raise


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove temporary file %s: %s", path, exc.strerror)


def _error(path: Path, exc: OSError, context: str | None = None) -> StateWriteError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno == errno.EDQUOT:
        reason = "disk quota exceeded"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = f"permission denied ({exc.strerror})"
    elif exc.errno == errno.EROFS:
        reason = "the filesystem is read-only"
    if context is not None:
        reason = f"{context}: {reason}"
    return StateWriteError(path, reason, exc.errno)
