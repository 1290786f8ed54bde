"""The paired-viewer store: which public keys may open a session with this device.

Losing it unpairs every phone; corrupting it could let the wrong key in or lock the owner out. So
every change reaches the disk (atomically, fsynced, previous generation kept as `peers.json.prev`)
before it is visible in memory, and a damaged file is never silently replaced:

- OK: `peers.json` is valid (or neither file exists yet: a fresh store).
- RECOVERED: `peers.json` is damaged or missing but `peers.json.prev` is valid. The previous
  generation is loaded (the last change before the damage may be lost) and the damaged file is kept
  as `peers.json.corrupt-<n>` for the owner to inspect.
- BROKEN: no usable generation, or a file from a newer petcamd (loading an older generation would
  downgrade it). Nothing on disk is touched, no viewer is known, and every change raises
  KeystoreUnavailableError until the owner restores or removes the files.

File format (UTF-8 JSON, mode 0600)::

    {"version": 1, "peers": [{"peer_id": "<key_id(public_key)>", "name": "Anna's phone",
      "public_key": "<base64, 32 bytes>", "paired_at": 1700000000.0, "last_seen": null}]}

Times are wall-clock Unix seconds, for display only. The stored peer id must match the key: that
catches a damaged key that would otherwise decode to some other valid key.

The API is synchronous and thread-safe (the daemon calls it through asyncio.to_thread); one
process owns the directory.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import logging
import math
import os
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeGuard

from petcamd.atomic_file import (
    StateWriteError,
    ensure_private_directory,
    fsync_directory,
    previous_path,
    remove_stale_temp_files,
    write_atomic,
)
from petcamd.secure.identity import KEY_SIZE, key_id

logger = logging.getLogger(__name__)

FILE_NAME = "peers.json"
FILE_VERSION = 1
MAX_NAME_LENGTH = 64
MAX_PEERS = 1000
TOUCH_INTERVAL_S = 60.0
"""last_seen is cosmetic: it reaches the disk at most this often per peer (or with other changes)."""
_MAX_FILE_SIZE = 1 << 20
_MAX_CORRUPT_COPIES = 1000

PeerEvent = Literal["added", "renamed", "revoked"]
Listener = Callable[[PeerEvent, "Peer"], None]


class KeystoreState(enum.Enum):
    OK = "ok"
    RECOVERED = "recovered"
    BROKEN = "broken"


class KeystoreError(Exception):
    """Base class of the keystore's own errors (a failed write raises StateWriteError)."""


class KeystoreUnavailableError(KeystoreError):
    """The store is BROKEN: nothing can change until the owner repairs it."""


class UnknownPeerError(KeystoreError, LookupError):
    """No paired peer has this id."""


class InvalidPeerNameError(KeystoreError, ValueError):
    """The name is empty or has control characters."""


class KeystoreFullError(KeystoreError):
    """MAX_PEERS viewers are paired already."""


@dataclass(frozen=True)
class Peer:
    """A paired viewer. The repr shows its id (derived from the key), not the key itself."""

    peer_id: str
    name: str
    public_key: bytes = field(repr=False)
    paired_at: float
    last_seen: float | None = None


def clean_name(name: str) -> str:
    """Normalise a viewer's name for display: trimmed, single spaces, at most MAX_NAME_LENGTH.

    Raises InvalidPeerNameError for names that are empty or hold control or formatting characters
    (which could rewrite a terminal or reorder text in `petcamctl peers`).
    """
    if not isinstance(name, str):
        raise InvalidPeerNameError(f"a peer name must be text, not {type(name).__name__}")
    name = " ".join(unicodedata.normalize("NFC", name).split())
    if not name:
        raise InvalidPeerNameError("a peer name must not be empty")
    if not name.isprintable():
        raise InvalidPeerNameError("a peer name must not contain control or formatting characters")
    return name[:MAX_NAME_LENGTH].rstrip()


class Keystore:
    """Persistent set of paired peers; see the module docstring for its states."""

    def __init__(
        self,
        path: Path,
        state: KeystoreState,
        problem: str | None,
        peers: Iterable[Peer],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Use Keystore.open(); this only assembles an already loaded store."""
        self._path = path
        self._state = state
        self._problem = problem
        self._peers: dict[str, Peer] = {peer.peer_id: peer for peer in peers}
        self._unsaved_seen: dict[str, float] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    @classmethod
    def open(cls, directory: Path, *, clock: Callable[[], float] = time.time) -> Keystore:
        """Load the store in `directory` (created 0700 if missing). Never raises for bad files."""
        path = directory / FILE_NAME
        state: KeystoreState
        problem: str | None
        peers: dict[str, Peer]
        try:
            ensure_private_directory(directory)
        except OSError as exc:
            state, peers = KeystoreState.BROKEN, {}
            problem = f"cannot create the keystore directory {directory}: {exc.strerror or exc}"
        else:
            state, problem, peers = _load(path)
        if state is KeystoreState.BROKEN:
            logger.error("%s", problem)
        else:
            if problem is not None:
                logger.warning("%s", problem)
            removed = remove_stale_temp_files(path)
            if removed:
                logger.info("removed %d temporary file(s) left by an interrupted write", removed)
        return cls(path, state, problem, peers.values(), clock)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def state(self) -> KeystoreState:
        return self._state

    @property
    def problem(self) -> str | None:
        """What the owner should know (RECOVERED, BROKEN), or None when all is well."""
        return self._problem

    def __repr__(self) -> str:
        return f"Keystore(path={str(self._path)!r}, state={self._state.value}, peers={len(self._peers)})"

    def peers(self) -> list[Peer]:
        with self._lock:
            return [self._shown(peer) for peer in self._peers.values()]

    def get(self, peer_id: str) -> Peer | None:
        with self._lock:
            peer = self._peers.get(peer_id)
            return None if peer is None else self._shown(peer)

    def find_by_key(self, public_key: bytes) -> Peer | None:
        """The peer holding exactly this key, if paired (what a session handshake checks)."""
        if len(public_key) != KEY_SIZE:
            return None
        with self._lock:
            peer = self._peers.get(key_id(public_key))
            if peer is None or peer.public_key != public_key:
                return None
            return self._shown(peer)

    def add(self, name: str, public_key: bytes) -> Peer:
        """Pair a viewer. Pairing a key again refreshes its name and pairing time ("added" again)."""
        public_key = bytes(public_key)
        peer_id = key_id(public_key)
        name = clean_name(name)
        with self._lock:
            self._require_usable()
            existing = self._peers.get(peer_id)
            if existing is None and len(self._peers) >= MAX_PEERS:
                raise KeystoreFullError(f"{MAX_PEERS} viewers are paired already; revoke one first")
            if existing is not None and existing.public_key != public_key:
                raise KeystoreError(f"a different key with id {peer_id} is paired already")
            last_seen = None if existing is None else existing.last_seen
            peer = Peer(peer_id, name, public_key, self._clock(), last_seen)
            self._commit({**self._peers, peer_id: peer})
            peer = self._shown(self._peers[peer_id])
        logger.info("paired viewer %s (%r)", peer_id, name)
        self._notify("added", peer)
        return peer

    def rename(self, peer_id: str, name: str) -> Peer:
        name = clean_name(name)
        with self._lock:
            self._require_usable()
            peer = self._known(peer_id)
            if peer.name == name:
                return self._shown(peer)
            self._commit({**self._peers, peer_id: dataclasses.replace(peer, name=name)})
            peer = self._shown(self._peers[peer_id])
        logger.info("renamed viewer %s to %r", peer_id, name)
        self._notify("renamed", peer)
        return peer

    def revoke(self, peer_id: str) -> Peer:
        """Unpair a viewer; listeners end its live sessions. Returns the peer as it was."""
        with self._lock:
            self._require_usable()
            peer = self._shown(self._known(peer_id))
            self._commit({pid: p for pid, p in self._peers.items() if pid != peer_id})
        logger.info("revoked viewer %s", peer_id)
        self._notify("revoked", peer)
        return peer

    def touch(self, peer_id: str, when: float) -> None:
        """Record that a peer was seen at `when` (Unix seconds).

        Written at most every TOUCH_INTERVAL_S per peer; in between it is shown but kept in memory
        until the next write or flush(). A failed write is logged, not raised: the time is cosmetic
        and a full disk must not stop a viewer from connecting.
        """
        if not math.isfinite(when):
            raise ValueError("when must be a finite number of seconds")
        with self._lock:
            self._require_usable()
            saved = self._known(peer_id).last_seen
            self._unsaved_seen[peer_id] = when
            if saved is not None and abs(when - saved) < TOUCH_INTERVAL_S:
                return
            try:
                self._commit(dict(self._peers))
            except StateWriteError as exc:
                logger.warning("could not record when viewer %s was last seen: %s", peer_id, exc)

    def flush(self) -> None:
        """Write last-seen times still held in memory (at shutdown). Raises StateWriteError."""
        with self._lock:
            if self._unsaved_seen and self._state is not KeystoreState.BROKEN:
                self._commit(dict(self._peers))

    def add_listener(self, callback: Listener) -> None:
        """Call `callback(event, peer)` after each change is on disk, on the thread that made it.

        A callback that raises is logged and does not affect the change or other callbacks.
        """
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        self._listeners.remove(callback)

    def _require_usable(self) -> None:
        if self._state is KeystoreState.BROKEN:
            raise KeystoreUnavailableError(
                f"the paired-viewer store cannot be changed until the owner repairs it: {self._problem}"
            )

    def _known(self, peer_id: str) -> Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise UnknownPeerError(f"no paired viewer has the id {peer_id!r}")
        return peer

    def _shown(self, peer: Peer) -> Peer:
        seen = self._unsaved_seen.get(peer.peer_id)
        return peer if seen is None else dataclasses.replace(peer, last_seen=seen)

    def _commit(self, peers: dict[str, Peer]) -> None:
        """Write `peers` (with pending last-seen times); only then make it the in-memory state."""
        merged = {pid: self._shown(peer) for pid, peer in peers.items()}
        write_atomic(self._path, _encode(merged.values()), mode=0o600, keep_previous=True)
        self._peers = merged
        self._unsaved_seen.clear()

    def _notify(self, event: PeerEvent, peer: Peer) -> None:
        for listener in list(self._listeners):
            _call_listener(listener, event, peer)


def _call_listener(listener: Listener, event: PeerEvent, peer: Peer) -> None:
    try:
        listener(event, peer)
    except Exception:
        logger.exception("keystore listener failed on %s %s", event, peer.peer_id)


def _encode(peers: Iterable[Peer]) -> bytes:
    document = {
        "version": FILE_VERSION,
        "peers": [
            {
                "peer_id": peer.peer_id,
                "name": peer.name,
                "public_key": base64.b64encode(peer.public_key).decode("ascii"),
                "paired_at": peer.paired_at,
                "last_seen": peer.last_seen,
            }
            for peer in peers
        ],
    }
    return (json.dumps(document, indent=1, allow_nan=False) + "\n").encode("utf-8")


class _DamagedError(Exception):
    """This generation is unusable; the message says why (never quoting its contents)."""


class _NewerVersionError(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(f"it was written by a newer petcamd (format version {version})")


_Missing = Literal["missing"]


def _read(path: Path) -> dict[str, Peer] | _Missing:
    """Raises _DamagedError or _NewerVersionError."""
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read(_MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise _DamagedError(f"it cannot be read ({exc.strerror or exc})") from None
    if mode & 0o077:
        logger.warning("%s is accessible to other users (mode %o); it should be 0600", path, mode & 0o777)
    return _decode(raw)


def _decode(raw: bytes) -> dict[str, Peer]:
    if not raw:
        raise _DamagedError("it is empty")
    if len(raw) > _MAX_FILE_SIZE:
        raise _DamagedError(f"it is larger than {_MAX_FILE_SIZE} bytes")
    try:
        document: Any = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _DamagedError("it is not valid JSON (truncated or overwritten?)") from None
    if not isinstance(document, dict):
        raise _DamagedError("it is not a keystore document")
    version = document.get("version")
    if not _is_int(version):
        raise _DamagedError("it has no format version")
    if version > FILE_VERSION:
        raise _NewerVersionError(version)
    if version != FILE_VERSION:
        raise _DamagedError(f"it has an unknown format version {version}")
    entries = document.get("peers")
    if not isinstance(entries, list):
        raise _DamagedError("it has no list of peers")
    if len(entries) > MAX_PEERS:
        raise _DamagedError(f"it lists more than {MAX_PEERS} peers")
    peers: dict[str, Peer] = {}
    for index, entry in enumerate(entries):
        peer = _decode_peer(entry, index)
        if peer.peer_id in peers:
            raise _DamagedError(f"peer #{index} is listed twice")
        peers[peer.peer_id] = peer
    return peers


def _decode_peer(entry: object, index: int) -> Peer:
    def damaged(what: str) -> NoReturn:
        raise _DamagedError(f"peer #{index} has {what}")

    if not isinstance(entry, dict):
        damaged("the wrong shape")
    peer_id, name, encoded_key = entry.get("peer_id"), entry.get("name"), entry.get("public_key")
    paired_at, last_seen = entry.get("paired_at"), entry.get("last_seen")
    if not isinstance(encoded_key, str):
        damaged("no public key")
    try:
        public_key = base64.b64decode(encoded_key, validate=True)
    except (binascii.Error, ValueError):
        damaged("a public key that is not base64")
    if len(public_key) != KEY_SIZE:
        damaged("a public key of the wrong size")
    if peer_id != key_id(public_key):
        damaged("an id that does not match its public key")
    if not isinstance(name, str):
        damaged("no name")
    try:
        if clean_name(name) != name:
            damaged("a malformed name")
    except InvalidPeerNameError:
        damaged("an invalid name")
    if not _is_time(paired_at):
        damaged("no valid pairing time")
    if last_seen is not None and not _is_time(last_seen):
        damaged("an invalid last-seen time")
    return Peer(peer_id, name, public_key, float(paired_at), None if last_seen is None else float(last_seen))


def _reject_constant(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not allowed")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= 2**53  # exactly representable as a float
    return isinstance(value, float) and math.isfinite(value)


def _load(path: Path) -> tuple[KeystoreState, str | None, dict[str, Peer]]:
    previous = previous_path(path)
    name, previous_name = path.name, previous.name
    directory = path.parent
    repair_hint = (
        f"Nothing was changed on disk, and no viewer can connect until the owner repairs {directory}: "
        f"restore a good {name} from a backup, or move {name} and {previous_name} away to start "
        "afresh (every viewer must then pair again)."
    )
    try:
        current = _read(path)
    except _NewerVersionError as exc:
        return KeystoreState.BROKEN, f"{path}: {exc}. {repair_hint}", {}
    except _DamagedError as exc:
        current_missing = False
        current_problem = f"{name} is damaged: {exc}"
    else:
        if current != "missing":
            _check_previous(previous)
            return KeystoreState.OK, None, current
        current_missing = True
        current_problem = f"{name} is missing"

    try:
        older = _read(previous)
    except (_DamagedError, _NewerVersionError) as exc:
        return (
            KeystoreState.BROKEN,
            f"{current_problem}, and {previous_name} is unusable: {exc}. {repair_hint}",
            {},
        )
    if older == "missing":
        if current_missing:
            return KeystoreState.OK, None, {}  # a new store
        return KeystoreState.BROKEN, f"{current_problem}, and there is no {previous_name}. {repair_hint}", {}

    kept = ""
    if path.exists() or path.is_symlink():
        try:
            aside = _set_aside(path)
        except OSError as exc:
            return (
                KeystoreState.BROKEN,
                f"{current_problem}; {previous_name} is valid but the damaged file could not be moved "
                f"aside ({exc.strerror or exc}). {repair_hint}",
                {},
            )
        kept = f"; the damaged file was kept as {aside.name}"
    problem = (
        f"{current_problem}{kept}. Loaded the previous generation {previous_name} from {directory} "
        f"({len(older)} viewer(s)); the last change before the damage may be lost."
    )
    return KeystoreState.RECOVERED, problem, older


def _check_previous(previous: Path) -> None:
    """A damaged fallback is set aside too, so that the next change does not overwrite it."""
    try:
        _read(previous)
    except (_DamagedError, _NewerVersionError) as exc:
        try:
            aside = _set_aside(previous)
        except OSError as move_error:
            logger.warning(
                "%s is unusable (%s) and could not be moved aside (%s); the next change will replace it",
                previous,
                exc,
                move_error.strerror or move_error,
            )
        else:
            logger.warning("%s is unusable (%s); kept it as %s", previous, exc, aside.name)


def _set_aside(path: Path) -> Path:
    """Rename a damaged file to a free `<name>.corrupt-<n>` (never over an existing one)."""
    for number in range(1, _MAX_CORRUPT_COPIES + 1):
        target = path.with_name(f"{path.name}.corrupt-{number}")
        if target.exists() or target.is_symlink():
            continue
        path.rename(target)
        fsync_directory(path.parent)
        return target
    raise OSError(f"{_MAX_CORRUPT_COPIES} damaged copies are kept already")
