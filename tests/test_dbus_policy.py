"""The shipped D-Bus policy on a real system-type dbus-daemon, with real users.

The daemon runs as the `petcamd` user; root may call everything, any other user only reads.
Processes that switch users run Debian's /usr/bin/python3 (the packages `make test` installs):
an interpreter under /root, like a developer's pyenv, is not executable by other users.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import dbus_daemon

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "config" / "petcamd-dbus.conf"
SYSTEM_PYTHON = "/usr/bin/python3"


def ensure_petcamd_user() -> None:
    """The same system user the Debian package creates with sysusers."""
    try:
        pwd.getpwnam("petcamd")
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "petcamd",
            ],
            check=True,
        )


@pytest.fixture
def system_bus() -> Iterator[tuple[str, Path]]:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root (CI runs as root)")
    assert Path(SYSTEM_PYTHON).exists(), "Debian's python3 packages are needed: run `make system-deps`"
    ensure_petcamd_user()
    work = Path(tempfile.mkdtemp(prefix="petcamd-policy-"))
    work.chmod(0o755)  # other users must reach the bus socket and the config
    try:
        with dbus_daemon.system_bus(work, POLICY) as address:
            yield address, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def start_daemon_as_petcamd(address: str, work: Path) -> subprocess.Popen[str]:
    state = work / "state"
    state.mkdir(mode=0o700)
    user = pwd.getpwnam("petcamd")
    os.chown(state, user.pw_uid, user.pw_gid)
    config = work / "petcamd.toml"
    config.write_text(
        f"""
[camera]
source = "test"
[network]
lan_address = "127.0.0.1"
lan_port = 0
[pairing]
display = "none"
[state]
directory = "{state}"
[control]
bus = "system"
"""
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DBUS_SYSTEM_BUS_ADDRESS": address}
    return subprocess.Popen(
        [SYSTEM_PYTHON, "-m", "petcamd", "--config", str(config)],
        env=env,
        user="petcamd",
        group="petcamd",
        extra_groups=[],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def busctl(address: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    command = ["busctl", f"--address={address}", *args]
    return subprocess.run(command, user=user, capture_output=True, text=True, timeout=30, check=False)


def petcamctl(address: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DBUS_SYSTEM_BUS_ADDRESS": address}
    return subprocess.run(
        [SYSTEM_PYTHON, "-m", "petcamd.control.cli", "--bus", "system", *args],
        env=env,
        user=user,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_for_name(address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "org.petcamd.Daemon1" in busctl(address, "list", "--acquired").stdout:
            return
        time.sleep(0.2)
    raise AssertionError("petcamd did not take its bus name")


@pytest.mark.timeout(120)
def test_policy_owner_root_and_unprivileged_user(system_bus: tuple[str, Path]) -> None:
    address, work = system_bus
    # root may not take the name: only the petcamd user may
    squat = petcamctl(address, "status")
    assert squat.returncode == 3  # nobody owns it yet
    daemon = start_daemon_as_petcamd(address, work)
    try:
        wait_for_name(address, 60)

        # root: everything
        status = petcamctl(address, "--json", "status")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["state"] == "running"
        refused = petcamctl(address, "revoke", "aaaaaaaaaaaaaaaa")
        assert refused.returncode == 1  # reached the daemon, which knows no such peer
        assert "no paired viewer has that id" in refused.stderr

        # any other user: read-only
        reader = petcamctl(address, "--json", "status", user="nobody")
        assert reader.returncode == 0, reader.stderr
        denied = petcamctl(address, "revoke", "aaaaaaaaaaaaaaaa", user="nobody")
        assert denied.returncode == 4
        assert "access denied" in denied.stderr
        pairing = petcamctl(address, "pair", "--no-wait", user="nobody")
        assert pairing.returncode == 4
        for command in (("mode", "internet"), ("nettest",)):  # changes, or connections out: privileged
            assert petcamctl(address, *command, user="nobody").returncode == 4, command
        shown = petcamctl(address, "mode", user="nobody")  # reading the mode is status
        assert shown.returncode == 0, shown.stderr
        assert (
            busctl(
                address, "introspect", "org.petcamd.Daemon1", "/org/petcamd/Daemon1", user="nobody"
            ).returncode
            == 0
        )
        raw = busctl(
            address, "call", "org.petcamd.Daemon1", "/org/petcamd/Daemon1", "org.petcamd.Daemon1",
            "RevokePeer", "s", "aaaaaaaaaaaaaaaa", user="nobody",
        )  # fmt: skip
        assert raw.returncode != 0
        assert "Access denied" in raw.stderr or "AccessDenied" in raw.stderr

        # the name is the daemon's alone: another process as root cannot take it
        owner = busctl(address, "status", "org.petcamd.Daemon1")
        assert f"UID={pwd.getpwnam('petcamd').pw_uid}" in owner.stdout
    finally:
        daemon.terminate()
        _, stderr = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.timeout(120)
def test_busctl_introspect_lists_the_interface(system_bus: tuple[str, Path]) -> None:
    address, work = system_bus
    daemon = start_daemon_as_petcamd(address, work)
    try:
        wait_for_name(address, 60)
        result = busctl(
            address, "introspect", "org.petcamd.Daemon1", "/org/petcamd/Daemon1", "org.petcamd.Daemon1"
        )
        assert result.returncode == 0, result.stderr
        members = {
            line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:] if line.strip()
        }
        expected = {
            ".GetStatus": "method", ".StartPairing": "method", ".CancelPairing": "method",
            ".ListPeers": "method", ".RenamePeer": "method", ".RevokePeer": "method",
            ".GetMode": "method", ".SetMode": "method", ".RunNetworkTest": "method",
            ".State": "property", ".Mode": "property", ".CameraState": "property",
            ".ViewerCount": "property", ".PairingActive": "property",
            ".PairingClosed": "signal", ".PeerPaired": "signal", ".PeerRevoked": "signal",
            ".ViewerConnected": "signal", ".ViewerDisconnected": "signal", ".CameraStateChanged": "signal",
        }  # fmt: skip
        for member, kind in expected.items():
            assert members.get(member) == kind, f"{member}: {result.stdout}"
    finally:
        daemon.terminate()
        daemon.communicate(timeout=20)
