"""The whole daemon: READY only when it can serve, watchdog tied to frames, clean and ordered stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from petcamd.camera.health import CameraState, HealthSettings
from petcamd.camera.source import StreamSettings
from petcamd.camera.synthetic import SyntheticSource
from petcamd.config import parse_config
from petcamd.control.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH
from petcamd.notify import SystemdNotifier
from petcamd.protocol.pairing_url import decode_pairing_url
from petcamd.supervisor import EXIT_FAILURE, EXIT_OK, Daemon, RunOptions
from tests.fakes.sources import RecordingSource
from tests.notify_socket import NotifySocket

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, *, port: int = 0, always_on: bool = True, extra: str = "") -> Path:
    path = tmp_path / "petcamd.toml"
    path.write_text(
        f"""
[camera]
source = "test"
always_on = {str(always_on).lower()}
[stream]
width = 320
height = 240
fps = 15
bitrate = 300000
[network]
lan_address = "127.0.0.1"
lan_port = {port}
[pairing]
display = "none"
[state]
directory = "state"
[control]
bus = "session"
{extra}
"""
    )
    return path


def start_daemon(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "petcamd", "--config", str(config)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a loopback URL the test built
        return json.load(response)


async def dbus_status(bus_address: str) -> dict[str, object]:
    bus = await MessageBus(bus_address=bus_address, bus_type=BusType.SESSION).connect()
    try:
        introspection = await bus.introspect(BUS_NAME, OBJECT_PATH)
        iface = bus.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection).get_interface(INTERFACE)
        result: dict[str, object] = json.loads(await iface.call_get_status())  # type: ignore[attr-defined]
        return result
    finally:
        bus.disconnect()


@pytest.mark.timeout(60)
async def test_ready_then_serving_then_clean_stop_on_sigint(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket
) -> None:
    proc = start_daemon(
        write_config(tmp_path), {**notify_socket.env(), "DBUS_SESSION_BUS_ADDRESS": bus_address}
    )
    try:
        ready = await asyncio.to_thread(notify_socket.wait_for, "READY", 45)
        assert "camera streaming" in ready["STATUS"]  # always-on camera: frames before READY
        status = await dbus_status(bus_address)  # the bus name is owned
        assert status["camera"] == "streaming"
        assert status["pairing_active"] is True  # nobody paired yet: a window opened by itself
        port = status["lan_port"]
        assert isinstance(port, int)
        assert port > 0
        health = await asyncio.to_thread(fetch_json, f"http://127.0.0.1:{port}/healthz")
        assert health["device_id"] == status["device_id"]
        stop_sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 10)
        stopped_in = time.monotonic() - stop_sent
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    assert code == 0, stderr
    assert stopped_in < 5.0
    assert notify_socket.times_of("STOPPING")
    assert "Traceback" not in stderr


@pytest.mark.timeout(60)
async def test_no_ready_when_the_bus_name_is_taken(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket
) -> None:
    squatter = await MessageBus(bus_address=bus_address, bus_type=BusType.SESSION).connect()
    await squatter.request_name(BUS_NAME)
    try:
        proc = start_daemon(
            write_config(tmp_path), {**notify_socket.env(), "DBUS_SESSION_BUS_ADDRESS": bus_address}
        )
        _, stderr = await asyncio.to_thread(proc.communicate, None, 45)
    finally:
        squatter.disconnect()
    assert proc.returncode == EXIT_FAILURE
    assert "already owned" in stderr
    assert not notify_socket.times_of("READY")
    assert "Traceback" not in stderr


@pytest.mark.timeout(60)
async def test_no_ready_when_the_lan_port_is_taken(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = start_daemon(
            write_config(tmp_path, port=port),
            {**notify_socket.env(), "DBUS_SESSION_BUS_ADDRESS": bus_address},
        )
        _, stderr = await asyncio.to_thread(proc.communicate, None, 45)
    assert proc.returncode == EXIT_FAILURE
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert not notify_socket.times_of("READY")


def make_daemon(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket, source: RecordingSource, **env: str
) -> Daemon:
    config = parse_config(
        {
            "camera": {"source": "test", "always_on": True, "stall_timeout_s": 0.5},
            "network": {"lan_address": "127.0.0.1", "lan_port": 0},
            "pairing": {"display": "none"},
            "state": {"directory": str(tmp_path / "state")},
            "control": {"bus": "session"},
        }
    )
    notifier = SystemdNotifier({**notify_socket.env(), **env})
    health = HealthSettings(
        stall_timeout_s=0.5,
        first_frame_timeout_s=3,
        backoff_initial_s=0.05,
        backoff_max_s=0.1,
        max_restarts=2,
    )
    options = RunOptions(bus_address=bus_address, install_signal_handlers=False, source=source, health=health)
    return Daemon(config, notifier, options)


def small_source() -> RecordingSource:
    return RecordingSource(SyntheticSource(StreamSettings(width=160, height=120, fps=15, bitrate=100_000)))


@pytest.mark.timeout(60)
async def test_watchdog_pings_stop_when_frames_stop(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket
) -> None:
    source = small_source()
    daemon = make_daemon(tmp_path, bus_address, notify_socket, source, WATCHDOG_USEC="200000")
    run = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 30)
    await asyncio.sleep(1.0)
    assert len(notify_socket.times_of("WATCHDOG")) >= 5  # every 100 ms while frames flow
    source.frozen = True  # the camera wedges; restarts cannot revive it
    hub = daemon.hub
    assert hub is not None
    deadline = time.monotonic() + 20
    while hub.state is not CameraState.FAILED and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a state
        await asyncio.sleep(0.05)
    assert hub.state is CameraState.FAILED
    await asyncio.sleep(0.3)
    pings_at_failure = len(notify_socket.times_of("WATCHDOG"))
    await asyncio.sleep(1.0)
    assert len(notify_socket.times_of("WATCHDOG")) == pings_at_failure
    daemon.request_stop()
    assert await asyncio.wait_for(run, 10) == EXIT_OK


@pytest.mark.timeout(60)
async def test_crashed_vital_task_exits_non_zero_after_ordered_shutdown(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket
) -> None:
    daemon = make_daemon(tmp_path, bus_address, notify_socket, small_source())
    run = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 30)

    async def crashes() -> None:
        raise RuntimeError("relay reader broke")

    daemon.tasks.spawn("relay-reader", crashes(), vital=True)
    assert await asyncio.wait_for(run, 10) == EXIT_FAILURE
    assert [r.name for r in daemon.stage_results] == ["viewers", "control", "camera", "tasks"]
    assert not any(r.timed_out for r in daemon.stage_results)
    assert notify_socket.times_of("STOPPING")


@pytest.mark.timeout(60)
async def test_stop_runs_stages_in_order_within_budget(
    tmp_path: Path, bus_address: str, notify_socket: NotifySocket
) -> None:
    source = small_source()
    daemon = make_daemon(tmp_path, bus_address, notify_socket, source)
    run = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 30)
    assert source.running
    started = time.monotonic()
    daemon.request_stop()
    assert await asyncio.wait_for(run, 10) == EXIT_OK
    assert time.monotonic() - started < 5.0
    results = daemon.stage_results
    assert [r.name for r in results] == ["viewers", "control", "camera", "tasks"]
    budgets = daemon.options.budgets
    for result, budget in zip(
        results, (budgets.viewers, budgets.control, budgets.camera, budgets.tasks), strict=True
    ):
        assert not result.timed_out
        assert result.elapsed_s <= budget + 0.2
    assert not source.running  # the camera was released


@pytest.mark.timeout(60)
def test_dev_run_prints_pairing_url_and_qr_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """What `make run` does, minus creating the venv: private session bus, QR on the terminal."""
    config = tmp_path / "dev.toml"
    config.write_text(
        (ROOT / "config" / "dev.toml").read_text().replace("lan_port = 8080", "lan_port = 0\nmdns = false")
        + "\n[stream]\nwidth = 320\nheight = 240\n"
    )
    config.write_text(
        config.read_text().replace('directory = "../dev-state"', f'directory = "{tmp_path / "state"}"')
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "NOTIFY_SOCKET")}
    env.update(PETCAMD_PYTHON=sys.executable, PETCAMD_DEV_CONFIG=str(config), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "dev-run")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C would address it
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 45
    url = ""
    while time.monotonic() < deadline and not url:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("http://") and "#v=1" in line:
            url = line.strip()
    try:
        assert url, "".join(lines)
        assert decode_pairing_url(url).name == "petcamd dev"
        assert any("\u2588" in line for line in lines)  # the terminal QR code
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(10)
        assert time.monotonic() - started < 5.0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
    assert code == 0, stderr
    assert url not in stderr  # the secret-bearing URL is shown, never logged
