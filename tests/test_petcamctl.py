"""petcamctl end to end: a real daemon (synthetic camera) on a private bus, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from petcamd.protocol.pairing_url import decode_pairing_url
from petcamd.supervisor import Daemon
from tests.notify_socket import NotifySocket
from tests.test_daemon import make_daemon, small_source

ROOT = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def running_daemon(tmp_path: Path, bus_address: str) -> AsyncIterator[Daemon]:
    notify = NotifySocket(tmp_path)
    daemon = make_daemon(tmp_path, bus_address, notify, small_source())
    run = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 30)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(run, 10)
        notify.close()


async def petcamctl(bus_address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus_address, "PYTHONPATH": str(ROOT)}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "petcamd.control.cli", "--bus", "session", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


STATUS_KEYS = {
    "version", "state", "device_id", "name", "mode", "camera", "camera_source", "viewers",
    "paired_peers", "pairing_active", "pairing_expires_in_s", "lan_port", "https_port", "problems",
    "sessions", "relay",
}  # fmt: skip


@pytest.mark.timeout(90)
async def test_status_pair_peers_revoke(tmp_path: Path, bus_address: str) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        result = await petcamctl(bus_address, "--json", "status")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert set(status) == STATUS_KEYS  # the documented, stable --json keys
        assert status["camera"] == "streaming"

        human = await petcamctl(bus_address, "status")
        assert "Local Network Mode" in human.stdout

        png = tmp_path / "pair.png"
        paired = await petcamctl(bus_address, "--json", "pair", "--no-wait", "--png", str(png))
        assert paired.returncode == 0, paired.stderr
        url = json.loads(paired.stdout)["url"]
        assert decode_pairing_url(url).device_id == status["device_id"]
        decoded = await asyncio.to_thread(
            subprocess.run,
            ["zbarimg", "--quiet", "--raw", str(png)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert decoded.stdout.strip() == url

        # pair waits for the window to close: cancel it over the bus while it waits
        waiting = asyncio.create_task(petcamctl(bus_address, "pair"))
        await asyncio.sleep(1.5)
        assert daemon.controller is not None
        daemon.controller.cancel_pairing()
        outcome = await waiting
        assert outcome.returncode == 1
        assert "Pairing cancelled." in outcome.stdout
        assert "\u2588" in outcome.stdout  # the terminal QR code

        assert "No viewer is paired" in (await petcamctl(bus_address, "peers")).stdout
        missing = await petcamctl(bus_address, "revoke", "aaaaaaaaaaaaaaaa")
        assert missing.returncode == 1
        assert "no paired viewer has that id" in missing.stderr
        assert "Traceback" not in missing.stderr


async def test_daemon_not_running(bus_address: str) -> None:
    result = await petcamctl(bus_address, "status")
    assert result.returncode == 3
    assert "petcamd is not running" in result.stderr
    assert "Traceback" not in result.stderr
