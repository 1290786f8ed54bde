"""The paired-peer store on real files: generations, damage, a full disk and SIGKILLed writers."""

from __future__ import annotations

import base64
import dataclasses
import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petcamd.atomic_file import StateWriteError
from petcamd.secure.identity import key_id
from petcamd.secure.keystore import (
    MAX_NAME_LENGTH,
    TOUCH_INTERVAL_S,
    InvalidPeerNameError,
    Keystore,
    KeystoreState,
    KeystoreUnavailableError,
    Peer,
    PeerEvent,
    UnknownPeerError,
)
from tests import full_disk

REPO_ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def new_key() -> bytes:
    return os.urandom(32)


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry's bytes (None for directories), to prove nothing on disk changed."""
    return {p.name: (None if p.is_dir() else p.read_bytes()) for p in directory.iterdir()}


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def on_disk(directory: Path, name: str = "peers.json") -> dict[str, dict[str, object]]:
    document = json.loads((directory / name).read_text())
    return {entry["peer_id"]: entry for entry in document["peers"]}


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def two_generations(directory: Path) -> tuple[Peer, Peer]:
    """A store whose peers.json has peers A and B, and peers.json.prev only A."""
    keystore = Keystore.open(directory)
    first = keystore.add("first", new_key())
    second = keystore.add("second", new_key())
    return first, second


# --- ordinary use -----------------------------------------------------------------------------


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("process_umask", [0o000, 0o022])
def test_new_store_files_are_private(store_dir: Path, process_umask: int) -> None:
    os.umask(process_umask)
    keystore = Keystore.open(store_dir)
    assert keystore.state is KeystoreState.OK
    assert keystore.problem is None
    assert keystore.peers() == []
    assert file_mode(store_dir) == 0o700
    assert not (store_dir / "peers.json").exists()
    keystore.add("phone", new_key())
    keystore.add("tablet", new_key())
    assert file_mode(store_dir / "peers.json") == 0o600
    assert file_mode(store_dir / "peers.json.prev") == 0o600


def test_round_trip(store_dir: Path) -> None:
    clock = Clock()
    keystore = Keystore.open(store_dir, clock=clock)
    key = new_key()
    peer = keystore.add("  Anna's\tphone \n", key)
    assert peer == Peer(key_id(key), "Anna's phone", key, clock.now, None)
    clock.now += 10
    other = keystore.add("Ben 📱", new_key())
    reopened = Keystore.open(store_dir)
    assert reopened.state is KeystoreState.OK
    assert reopened.peers() == [peer, other]
    assert reopened.get(peer.peer_id) == peer
    assert reopened.find_by_key(key) == peer
    assert reopened.find_by_key(new_key()) is None
    assert reopened.find_by_key(b"short") is None
    assert reopened.get("nosuchpeer") is None
    document = json.loads((store_dir / "peers.json").read_text())
    assert document["version"] == 1
    assert base64.b64decode(document["peers"][0]["public_key"]) == key


def test_previous_generation_is_kept(store_dir: Path) -> None:
    first, second = two_generations(store_dir)
    assert set(on_disk(store_dir)) == {first.peer_id, second.peer_id}
    assert set(on_disk(store_dir, "peers.json.prev")) == {first.peer_id}


def test_repairing_a_key_updates_its_name(store_dir: Path) -> None:
    clock = Clock()
    keystore = Keystore.open(store_dir, clock=clock)
    key = new_key()
    keystore.add("old name", key)
    clock.now += 100
    again = keystore.add("new name", key)
    assert again.name == "new name"
    assert again.paired_at == clock.now
    assert keystore.peers() == [again]
    assert Keystore.open(store_dir).peers() == [again]


def test_names_are_cleaned(store_dir: Path) -> None:
    keystore = Keystore.open(store_dir)
    assert keystore.add("x" * 500, new_key()).name == "x" * MAX_NAME_LENGTH
    assert keystore.add("a" * (MAX_NAME_LENGTH - 1) + " b", new_key()).name == "a" * (MAX_NAME_LENGTH - 1)
    assert keystore.add("  spaced   out  ", new_key()).name == "spaced out"
    for bad in ["", "   ", "evil\x1b[2J", "bell\x07", "rtl\u202eoverride", "nul\x00"]:
        with pytest.raises(InvalidPeerNameError):
            keystore.add(bad, new_key())
    with pytest.raises(ValueError, match="32 bytes"):
        keystore.add("short key", b"123")
    assert len(keystore.peers()) == 3


def test_rename_revoke_and_unknown_ids(store_dir: Path) -> None:
    keystore = Keystore.open(store_dir)
    peer = keystore.add("phone", new_key())
    renamed = keystore.rename(peer.peer_id, "kitchen tablet")
    assert renamed.name == "kitchen tablet"
    assert on_disk(store_dir)[peer.peer_id]["name"] == "kitchen tablet"
    assert keystore.revoke(peer.peer_id) == renamed
    assert keystore.peers() == []
    assert keystore.find_by_key(peer.public_key) is None
    assert on_disk(store_dir) == {}
    for call in (
        lambda: keystore.rename(peer.peer_id, "x"),
        lambda: keystore.revoke(peer.peer_id),
        lambda: keystore.touch(peer.peer_id, 1.0),
    ):
        with pytest.raises(UnknownPeerError, match=peer.peer_id):
            call()
    assert Keystore.open(store_dir).peers() == []


def test_listeners_fire_after_the_write(store_dir: Path) -> None:
    keystore = Keystore.open(store_dir)
    events: list[tuple[PeerEvent, str, bool]] = []

    def listener(event: PeerEvent, peer: Peer) -> None:
        events.append((event, peer.name, peer.peer_id in on_disk(store_dir)))

    def broken_listener(event: PeerEvent, peer: Peer) -> None:
        raise RuntimeError("listener bug")

    keystore.add_listener(broken_listener)
    keystore.add_listener(listener)
    peer = keystore.add("phone", new_key())
    keystore.rename(peer.peer_id, "tablet")
    keystore.rename(peer.peer_id, "tablet")  # no change: no write, no event
    keystore.revoke(peer.peer_id)
    assert events == [("added", "phone", True), ("renamed", "tablet", True), ("revoked", "tablet", False)]
    keystore.remove_listener(listener)
    keystore.add("another", new_key())
    assert len(events) == 3


def test_last_seen_is_written_lazily(store_dir: Path) -> None:
    keystore = Keystore.open(store_dir)
    peer = keystore.add("phone", new_key())
    keystore.touch(peer.peer_id, 1000.0)
    assert on_disk(store_dir)[peer.peer_id]["last_seen"] == 1000.0
    keystore.touch(peer.peer_id, 1000.0 + TOUCH_INTERVAL_S / 2)
    assert keystore.get(peer.peer_id) == Peer(
        peer.peer_id, "phone", peer.public_key, peer.paired_at, 1000.0 + TOUCH_INTERVAL_S / 2
    )
    assert on_disk(store_dir)[peer.peer_id]["last_seen"] == 1000.0
    keystore.flush()
    assert on_disk(store_dir)[peer.peer_id]["last_seen"] == 1000.0 + TOUCH_INTERVAL_S / 2
    keystore.touch(peer.peer_id, 1000.0 + TOUCH_INTERVAL_S * 2)
    assert on_disk(store_dir)[peer.peer_id]["last_seen"] == 1000.0 + TOUCH_INTERVAL_S * 2
    keystore.touch(peer.peer_id, 1000.0 + TOUCH_INTERVAL_S * 2 + 1)
    keystore.rename(peer.peer_id, "tablet")  # any write carries pending times along
    assert on_disk(store_dir)[peer.peer_id]["last_seen"] == 1000.0 + TOUCH_INTERVAL_S * 2 + 1
    with pytest.raises(ValueError, match="finite"):
        keystore.touch(peer.peer_id, float("nan"))


def test_secrets_and_keys_stay_out_of_reprs(store_dir: Path) -> None:
    keystore = Keystore.open(store_dir)
    key = new_key()
    peer = keystore.add("phone", key)
    for text in (repr(peer), repr(keystore), repr(keystore.peers())):
        assert base64.b64encode(key).decode() not in text
        assert key.hex() not in text
        assert repr(key) not in text
    assert peer.peer_id in repr(peer)


def test_concurrent_writers_in_threads(store_dir: Path) -> None:
    keystore = Keystore.open(store_dir)

    def pair_many(prefix: str) -> None:
        for number in range(15):
            keystore.add(f"{prefix}-{number}", new_key())

    threads = [threading.Thread(target=pair_many, args=(f"t{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(Keystore.open(store_dir).peers()) == 90


# --- damage and recovery ---------------------------------------------------------------------


def test_truncated_file_recovers_from_previous_generation(store_dir: Path) -> None:
    first, _ = two_generations(store_dir)
    current = store_dir / "peers.json"
    truncated = current.read_bytes()[:57]
    current.write_bytes(truncated)
    prev_bytes = (store_dir / "peers.json.prev").read_bytes()

    keystore = Keystore.open(store_dir)
    assert keystore.state is KeystoreState.RECOVERED
    assert keystore.problem is not None
    assert "peers.json is damaged" in keystore.problem
    assert "not valid JSON" in keystore.problem
    assert "peers.json.corrupt-1" in keystore.problem
    assert "peers.json.prev" in keystore.problem
    assert keystore.peers() == [first]
    assert (store_dir / "peers.json.corrupt-1").read_bytes() == truncated
    assert not current.exists()
    assert (store_dir / "peers.json.prev").read_bytes() == prev_bytes

    third = keystore.add("third", new_key())
    assert (store_dir / "peers.json.prev").read_bytes() == prev_bytes
    reopened = Keystore.open(store_dir)
    assert reopened.state is KeystoreState.OK
    assert reopened.peers() == [first, third]
    assert (store_dir / "peers.json.corrupt-1").read_bytes() == truncated


def test_repeated_damage_keeps_every_corrupt_copy(store_dir: Path) -> None:
    two_generations(store_dir)
    current = store_dir / "peers.json"
    current.write_bytes(b"first damage")
    assert Keystore.open(store_dir).state is KeystoreState.RECOVERED
    current.write_bytes(b"second damage")
    keystore = Keystore.open(store_dir)
    assert keystore.state is KeystoreState.RECOVERED
    assert "corrupt-2" in (keystore.problem or "")
    assert (store_dir / "peers.json.corrupt-1").read_bytes() == b"first damage"
    assert (store_dir / "peers.json.corrupt-2").read_bytes() == b"second damage"


def test_missing_current_with_previous_is_recovered(store_dir: Path) -> None:
    first, _ = two_generations(store_dir)
    (store_dir / "peers.json").unlink()
    keystore = Keystore.open(store_dir)
    assert keystore.state is KeystoreState.RECOVERED
    assert "peers.json is missing" in (keystore.problem or "")
    assert keystore.peers() == [first]


def test_unreadable_current_is_set_aside(store_dir: Path) -> None:
    first, _ = two_generations(store_dir)
    current = store_dir / "peers.json"
    current.unlink()
    current.mkdir()
    keystore = Keystore.open(store_dir)
    assert keystore.state is KeystoreState.RECOVERED
    assert "cannot be read" in (keystore.problem or "")
    assert (store_dir / "peers.json.corrupt-1").is_dir()
    assert keystore.peers() == [first]


def test_damaged_previous_generation_is_set_aside_not_overwritten(store_dir: Path) -> None:
    first, second = two_generations(store_dir)
    (store_dir / "peers.json.prev").write_bytes(b"rotten")
    keystore = Keystore.open(store_dir)
    assert keystore.state is KeystoreState.OK
    assert keystore.peers() == [first, second]
    assert (store_dir / "peers.json.prev.corrupt-1").read_bytes() == b"rotten"


def assert_broken(store_dir: Path, *fragments: str) -> None:
    before = snapshot(store_dir)
    keystore = Keystore.open(store_dir)
    assert keystore.state is KeystoreState.BROKEN
    problem = keystore.problem or ""
    for fragment in fragments:
        assert fragment in problem
    assert "owner" in problem
    assert keystore.peers() == []
    for call in (
        lambda: keystore.add("phone", new_key()),
        lambda: keystore.rename("abc", "x"),
        lambda: keystore.revoke("abc"),
        lambda: keystore.touch("abc", 1.0),
    ):
        with pytest.raises(KeystoreUnavailableError, match="owner repairs"):
            call()
    keystore.flush()
    assert snapshot(store_dir) == before


def test_both_generations_damaged_is_broken(store_dir: Path) -> None:
    first, _ = two_generations(store_dir)
    (store_dir / "peers.json").write_bytes(b"\x00garbage")
    (store_dir / "peers.json.prev").write_bytes(b'{"version": 1, "peers": [')
    assert_broken(store_dir, "peers.json is damaged", "peers.json.prev is unusable")
    assert Keystore.open(store_dir).find_by_key(first.public_key) is None


def test_damaged_without_previous_is_broken(store_dir: Path) -> None:
    store_dir.mkdir()
    (store_dir / "peers.json").write_bytes(b"")
    assert_broken(store_dir, "empty", "there is no peers.json.prev")


def test_missing_current_with_damaged_previous_is_broken(store_dir: Path) -> None:
    two_generations(store_dir)
    (store_dir / "peers.json").unlink()
    (store_dir / "peers.json.prev").write_bytes(b"[]")
    assert_broken(store_dir, "peers.json is missing", "not a keystore document")


def test_newer_version_is_broken_even_with_a_valid_previous(store_dir: Path) -> None:
    two_generations(store_dir)
    current = store_dir / "peers.json"
    document = json.loads(current.read_text())
    document["version"] = 2
    current.write_text(json.dumps(document))
    assert_broken(store_dir, "newer petcamd", "version 2")


def test_newer_previous_with_damaged_current_is_broken(store_dir: Path) -> None:
    two_generations(store_dir)
    (store_dir / "peers.json").write_bytes(b"{")
    (store_dir / "peers.json.prev").write_text('{"version": 7, "peers": []}')
    assert_broken(store_dir, "newer petcamd")


def valid_entry(**changes: object) -> dict[str, object]:
    key = bytes(range(32))
    entry: dict[str, object] = {
        "peer_id": key_id(key),
        "name": "phone",
        "public_key": base64.b64encode(key).decode(),
        "paired_at": 1.5,
        "last_seen": None,
    }
    entry.update(changes)
    return entry


@pytest.mark.parametrize(
    "document",
    [
        {"peers": []},
        {"version": "1", "peers": []},
        {"version": True, "peers": []},
        {"version": 0, "peers": []},
        {"version": 1},
        {"version": 1, "peers": {}},
        {"version": 1, "peers": [valid_entry(), valid_entry()]},
        {"version": 1, "peers": [valid_entry(peer_id="aaaaaaaaaaaaaaaa")]},
        {"version": 1, "peers": [valid_entry(public_key="AAAA")]},
        {"version": 1, "peers": [valid_entry(public_key="not base64!")]},
        {"version": 1, "peers": [valid_entry(name="")]},
        {"version": 1, "peers": [valid_entry(name="  padded ")]},
        {"version": 1, "peers": [valid_entry(name="\x1b[31m")]},
        {"version": 1, "peers": [valid_entry(name=5)]},
        {"version": 1, "peers": [valid_entry(paired_at=None)]},
        {"version": 1, "peers": [valid_entry(paired_at=True)]},
        {"version": 1, "peers": [valid_entry(paired_at=10**400)]},
        {"version": 1, "peers": [valid_entry(last_seen="yesterday")]},
        {"version": 1, "peers": ["peer"]},
    ],
)
def test_semantically_damaged_documents_are_refused(store_dir: Path, document: object) -> None:
    store_dir.mkdir()
    (store_dir / "peers.json").write_text(json.dumps(document))
    assert_broken(store_dir, "peers.json is damaged")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_times_are_refused(store_dir: Path, constant: str) -> None:
    store_dir.mkdir()
    entry = valid_entry()
    text = (
        f'{{"version": 1, "peers": [{{"peer_id": "{entry["peer_id"]}", "name": "phone", '
        f'"public_key": "{entry["public_key"]}", "paired_at": {constant}, "last_seen": null}}]}}'
    )
    (store_dir / "peers.json").write_text(text)
    assert_broken(store_dir, "peers.json is damaged")


def test_valid_hand_written_document_loads(store_dir: Path) -> None:
    store_dir.mkdir()
    document = {"version": 1, "peers": [valid_entry(paired_at=12, last_seen=13)]}
    (store_dir / "peers.json").write_text(json.dumps(document))
    keystore = Keystore.open(store_dir)
    assert keystore.state is KeystoreState.OK
    assert keystore.peers() == [Peer(key_id(bytes(range(32))), "phone", bytes(range(32)), 12.0, 13.0)]


def test_stale_temp_files_are_cleaned_on_open(store_dir: Path) -> None:
    two_generations(store_dir)
    stale = store_dir / ".peers.json.deadbeef0000.tmp"
    stale.write_bytes(b'{"version": 1, "pe')
    assert Keystore.open(store_dir).state is KeystoreState.OK
    assert not stale.exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    current=st.one_of(st.none(), st.binary(max_size=300)),
    previous=st.one_of(st.none(), st.binary(max_size=300), st.just(b"valid")),
)
def test_arbitrary_bytes_never_crash_open(current: bytes | None, previous: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        if previous == b"valid":
            Keystore.open(directory).add("phone", new_key())
            (directory / "peers.json").rename(directory / "peers.json.prev")
        elif previous is not None:
            (directory / "peers.json.prev").write_bytes(previous)
        if current is not None:
            (directory / "peers.json").write_bytes(current)
        before = snapshot(directory)
        keystore = Keystore.open(directory)
        assert keystore.state in set(KeystoreState)
        if keystore.state is KeystoreState.BROKEN:
            assert snapshot(directory) == before
        elif keystore.state is KeystoreState.RECOVERED:
            assert keystore.problem
            if current is not None:
                assert (directory / "peers.json.corrupt-1").read_bytes() == current


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.one_of(st.just(1), json_values),
    peers=st.one_of(
        json_values,
        st.lists(st.dictionaries(st.sampled_from(list(valid_entry())), json_values), max_size=3),
    ),
)
def test_arbitrary_documents_never_crash_open(version: object, peers: object) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        text = json.dumps({"version": version, "peers": peers})
        (directory / "peers.json").write_text(text)
        keystore = Keystore.open(directory)
        assert keystore.state in (KeystoreState.OK, KeystoreState.BROKEN)


# --- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up."""
    with full_disk.small_tmpfs(tmp_path / "small", "64k") as mount_point:
        yield mount_point


def test_disk_full(small_tmpfs: Path) -> None:
    directory = small_tmpfs / "state"
    keystore = Keystore.open(directory)
    first = keystore.add("phone", new_key())
    second = keystore.add("tablet", new_key())
    events: list[PeerEvent] = []
    keystore.add_listener(lambda event, _peer: events.append(event))

    filler = full_disk.fill_disk(directory.parent)
    before = snapshot(directory)

    with pytest.raises(StateWriteError, match=r"cannot write .*peers\.json: no space left") as info:
        keystore.add("laptop", new_key())
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(StateWriteError):
        keystore.rename(first.peer_id, "renamed")
    with pytest.raises(StateWriteError):
        keystore.revoke(second.peer_id)
    keystore.touch(first.peer_id, 5000.0)  # cosmetic: logged, not raised

    assert events == []
    assert [peer.name for peer in keystore.peers()] == ["phone", "tablet"]
    assert keystore.find_by_key(second.public_key) is not None
    assert snapshot(directory) == before  # no temporary files either
    reopened = Keystore.open(directory)
    assert reopened.state is KeystoreState.OK
    assert reopened.peers() == [first, second]

    filler.unlink()
    keystore.revoke(second.peer_id)
    assert events == ["revoked"]
    assert Keystore.open(directory).peers() == [dataclasses.replace(first, last_seen=5000.0)]


# --- crash safety ----------------------------------------------------------------------------------

WRITER = """
import os, sys
from pathlib import Path
from petcamd.secure.keystore import Keystore, KeystoreState

keystore = Keystore.open(Path(sys.argv[1]))
if keystore.state is KeystoreState.BROKEN:
    print("BROKEN", keystore.problem, flush=True)
    sys.exit(3)
print("ready", flush=True)
for number in range(200):
    peer = keystore.add(f"{sys.argv[2]}-{number}", os.urandom(32))
    print(peer.peer_id, flush=True)
print("done", flush=True)
"""


def test_sigkill_during_writes_loses_no_acknowledged_peer(tmp_path: Path) -> None:
    """Writers killed at random points: every peer whose add() returned is still there."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    directory = tmp_path / "state"
    acknowledged: set[str] = set()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    killed_mid_run = 0
    for round_number in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), f"round{round_number}"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", f"seed {seed}"
        lines = [child.stdout.readline() for _ in range(rng.randrange(0, 150))]
        # Land the kill at a random point inside a write, not only between them.
        threading.Event().wait(rng.uniform(0, 0.004))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        lines += rest.splitlines()
        assert child.returncode == -signal.SIGKILL, f"seed {seed}: writer exited {child.returncode}"
        if "done" not in (line.strip() for line in lines):
            killed_mid_run += 1
        acknowledged |= {line.strip() for line in lines if len(line.strip()) == 16}

        keystore = Keystore.open(directory)
        assert keystore.state in (KeystoreState.OK, KeystoreState.RECOVERED), (
            f"seed {seed}: {keystore.problem}"
        )
        stored = {peer.peer_id for peer in keystore.peers()}
        missing = acknowledged - stored
        assert not missing, f"seed {seed}: round {round_number} lost acknowledged peers {sorted(missing)}"
        # At most one add per round was in flight when the writer died.
        assert len(stored - acknowledged) <= round_number + 1
        assert not list(directory.glob(".*.tmp")), f"seed {seed}: temporary files left after open"
    assert killed_mid_run == 5, f"seed {seed}"
    assert acknowledged
