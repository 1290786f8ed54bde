"""Internet mode end to end: the real daemon registers at a real petcam-relay process, a real viewer
pairs and watches through it; the relay is killed and restarted; the mode is switched at runtime.

Everything runs on 127.0.0.1: the relay process, a byte-capturing proxy in front of it, the daemon
(ICE pinned to loopback) and petcam-view's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus

from petcamd.control.dbus_service import BUS_NAME, OBJECT_PATH
from petcamd.protocol.pairing_url import decode_pairing_url
from petcamd.protocol.relay import Data, EnvelopeType, decode_envelope
from petcamd.signaling.modes import MODE_FILE
from petcamd.signaling.relay_client import RelayClientSettings, RelayState
from petcamd.supervisor import Daemon
from petcamd.viewer.client import DeviceOfflineError, pair, watch
from petcamd.viewer.state import ViewerState
from tests.ports import free_port
from tests.test_lan_signaling import encodings, running_daemon
from tests.test_petcamctl import petcamctl
from tests.test_relay_harness import CaptureProxy
from tests.test_webrtc_harness import wait_for

pytestmark = pytest.mark.usefixtures("loopback_ice")

ROOT = Path(__file__).resolve().parent.parent
BACKOFF_CAP_S = 2.0
FAST_RELAY = RelayClientSettings(
    backoff_initial_s=0.2,
    backoff_cap_s=BACKOFF_CAP_S,
    refused_backoff_s=30.0,
    connect_timeout_s=2.0,
    register_timeout_s=2.0,
    heartbeat_s=2.0,
)
SDP_TEXT = [b"v=0", b"a=candidate", b"candidate", b"typ host", b"ice-ufrag", b"fingerprint", b"H264"]


class RelayProcess:
    """`petcam-relay` as its own process on a fixed port, so it can be killed and restarted.

    ``prefix`` runs it through another command (``ip netns exec NS``, with ``address`` there).
    """

    def __init__(
        self,
        directory: Path,
        port: int,
        public_origin: str,
        *,
        address: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.prefix = tuple(prefix)
        self.config = directory / "relay.toml"
        self.config.write_text(
            f'[server]\naddress = "{address}"\nport = {port}\npublic_origin = "{public_origin}"\n'
            '[logging]\nlevel = "debug"\n'
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            sys.executable,
            "-c",
            "import sys; from petcamd.relay.cli import main; sys.exit(main())",
            "--config",
            str(self.config),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stderr.readline(), 15)).decode()
            assert line, "the relay exited before listening:\n" + "".join(self.log)
            self.log.append(line)
            if "listening on" in line:
                break
        self._reader = asyncio.create_task(self._read(self.proc.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.log.append(line.decode())

    async def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, as when the relay's machine dies."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader


@contextlib.asynccontextmanager
async def relay_process(
    directory: Path, port: int | None = None, origin_port: int | None = None
) -> AsyncIterator[RelayProcess]:
    port = port or free_port()
    relay = RelayProcess(directory, port, f"http://127.0.0.1:{origin_port or port}")
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def internet(relay_port: int) -> dict[str, object]:
    return {"mode": "internet", "relay_url": f"ws://127.0.0.1:{relay_port}/"}


async def registered(daemon: Daemon, within: float = 15.0) -> None:
    assert daemon.modes is not None
    assert daemon.modes.relay is not None
    await daemon.modes.relay.wait_registered(within)


@pytest.mark.timeout(120)
async def test_pair_and_watch_through_a_relay_process_that_sees_only_ciphertext(
    tmp_path: Path, bus_address: str
) -> None:
    async with CaptureProxy(0) as proxy:
        # The proxy is the relay's public address: device and viewer reach the relay only through it.
        async with relay_process(tmp_path / "relay", origin_port=proxy.port) as relay:
            proxy.target_port = relay.port
            async with running_daemon(
                tmp_path, bus_address, network=internet(proxy.port), relay=FAST_RELAY
            ) as daemon:
                await registered(daemon)
                assert daemon.controller is not None
                status = daemon.controller.status()
                assert status.mode == "internet"
                assert status.relay is not None
                assert status.relay["state"] == "registered"

                url = daemon.controller.start_pairing().url
                payload = decode_pairing_url(url)
                assert url.startswith(f"http://127.0.0.1:{proxy.port}/#")  # the page lives at the relay
                assert payload.relay_url == f"ws://127.0.0.1:{proxy.port}/"
                state = ViewerState(tmp_path / "viewer")
                device = await pair(state, url, "Relay viewer", via="relay")
                result = await watch(state, device, frames=30, via="relay")
                assert result.signaling == "relay"
                assert result.frames_decoded >= 30
                assert result.path == "host"  # media stays direct: only signaling used the relay
                assert daemon.controller.status().relay["registrations"] == 1  # type: ignore[index]
        log = "".join(relay.log)

    # The capture saw the device's registration and both viewer connections, carrying real frames...
    payloads = proxy.websocket_payloads()
    data = [e for e in (safe_envelope(p) for p in payloads) if isinstance(e, Data)]
    assert len(data) >= 8  # pairing hello/answer, session hello/answer, offer, answer, ...
    assert any(p[:1] == bytes((EnvelopeType.REGISTER,)) for p in payloads)
    # ...and none of it, nor the relay's own log, holds SDP, candidates, names or keys.
    viewer_key = state.identity().public_key
    needles = [*SDP_TEXT, b"Relay viewer", *encodings(viewer_key), *encodings(payload.secret)]
    for blob in [proxy.raw(), *payloads]:
        for needle in needles:
            assert needle not in blob, needle[:12]
    for needle in needles:
        assert needle.decode("latin-1") not in log
    assert device.device_id in log  # the relay does log routing ids: the check above can fail


def safe_envelope(payload: bytes) -> object:
    try:
        return decode_envelope(payload)
    except Exception:
        return None


@pytest.mark.timeout(150)
async def test_relay_killed_and_restarted_the_device_registers_again_within_the_backoff_cap(
    tmp_path: Path, bus_address: str
) -> None:
    port = free_port()
    relay = RelayProcess(tmp_path / "relay", port, f"http://127.0.0.1:{port}")
    await relay.start()
    try:
        async with running_daemon(tmp_path, bus_address, network=internet(port), relay=FAST_RELAY) as daemon:
            await registered(daemon)
            assert daemon.controller is not None
            assert daemon.modes is not None
            state = ViewerState(tmp_path / "viewer")
            device = await pair(state, daemon.controller.start_pairing().url, "Viewer", via="relay")

            for _round in range(2):
                await relay.kill()
                client = daemon.modes.relay
                assert client is not None
                await wait_for(lambda: client.state is not RelayState.REGISTERED, 10)  # noqa: B023
                with pytest.raises(DeviceOfflineError):
                    await watch(state, device, frames=5, via="relay", timeout_s=2)
                await asyncio.sleep(BACKOFF_CAP_S)  # the backoff grows while the relay is down
                await relay.start()
                restarted = time.monotonic()
                await registered(daemon, within=BACKOFF_CAP_S + 5)
                # Within the cap (plus the connect itself on a loaded machine).
                assert time.monotonic() - restarted < BACKOFF_CAP_S + 3
                result = await watch(state, device, frames=10, via="relay")
                assert result.frames_decoded >= 10
            status = daemon.controller.status().relay
            assert status is not None
            assert status["registrations"] == 3
    finally:
        await relay.stop()


@pytest.mark.timeout(150)
async def test_switching_to_local_mode_closes_the_relay_and_makes_no_further_outbound_connection(
    tmp_path: Path, bus_address: str
) -> None:
    port = free_port()
    async with (
        relay_process(tmp_path / "relay", port) as relay,
        running_daemon(tmp_path, bus_address, network=internet(port), relay=FAST_RELAY) as daemon,
    ):
        await registered(daemon)
        assert daemon.controller is not None
        state = ViewerState(tmp_path / "viewer")
        device = await pair(state, daemon.controller.start_pairing().url, "Viewer", via="relay")

        assert await daemon.controller.set_mode("local") is True
        assert daemon.controller.status().mode == "local"
        assert daemon.controller.status().relay is None
        assert json.loads((tmp_path / "device-state" / MODE_FILE).read_text())["mode"] == "local"
        # The relay saw the device go: a viewer through it finds the camera offline...
        with pytest.raises(DeviceOfflineError, match="not connected to the relay"):
            await watch(state, device, frames=5, via="relay", timeout_s=3)
        await relay.stop()

        # ...and from now on nothing connects out: a listener on the relay's port, open for
        # longer than the backoff cap, is never contacted.
        accepted: list[float] = []

        async def count(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(time.monotonic())
            writer.close()

        listener = await asyncio.start_server(count, "127.0.0.1", port)
        try:
            await asyncio.sleep(BACKOFF_CAP_S * 3)
        finally:
            listener.close()
            await listener.wait_closed()
        assert accepted == []
        # The LAN keeps working in Local Network Mode.
        result = await watch(state, device, frames=10, via="lan")
        assert result.frames_decoded >= 10
        assert result.signaling == "lan"

        # Back to internet mode: the client connects again (the control for the check above).
        listener = await asyncio.start_server(count, "127.0.0.1", port)
        try:
            assert await daemon.controller.set_mode("internet") is True
            await wait_for(lambda: len(accepted) > 0, 10)
        finally:
            listener.close()
            await listener.wait_closed()


@pytest.mark.timeout(120)
async def test_the_mode_choice_survives_a_restart_and_wins_over_the_config_file(
    tmp_path: Path, bus_address: str
) -> None:
    port = free_port()
    async with relay_process(tmp_path / "relay", port):
        async with running_daemon(
            tmp_path, bus_address, relay=FAST_RELAY, network={"relay_url": f"ws://127.0.0.1:{port}/"}
        ) as daemon:
            assert daemon.controller is not None
            assert daemon.controller.status().mode == "local"  # the config file's choice
            assert daemon.modes is not None
            assert daemon.modes.relay is None
            assert await daemon.controller.set_mode("internet") is True
            await registered(daemon)
            assert await daemon.controller.set_mode("internet") is False  # already on
        async with running_daemon(
            tmp_path, bus_address, relay=FAST_RELAY, network={"relay_url": f"ws://127.0.0.1:{port}/"}
        ) as daemon:
            assert daemon.controller is not None
            assert daemon.controller.status().mode == "internet"
            await registered(daemon)


@pytest.mark.timeout(120)
async def test_petcamctl_mode_switches_over_dbus_and_announces_the_change(
    tmp_path: Path, bus_address: str
) -> None:
    port = free_port()
    async with (
        relay_process(tmp_path / "relay", port),
        running_daemon(
            tmp_path, bus_address, relay=FAST_RELAY, network={"relay_url": f"ws://127.0.0.1:{port}/"}
        ) as daemon,
    ):
        bus = await MessageBus(bus_address=bus_address).connect()
        try:
            introspection = await bus.introspect(BUS_NAME, OBJECT_PATH)
            proxy = bus.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection)
            changes: list[dict[str, object]] = []
            properties = proxy.get_interface("org.freedesktop.DBus.Properties")
            properties.on_properties_changed(lambda _iface, changed, _inv: changes.append(changed))  # type: ignore[attr-defined]

            shown = await petcamctl(bus_address, "mode")
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout.strip() == "Local Network Mode"
            switched = await petcamctl(bus_address, "mode", "internet")
            assert switched.returncode == 0, switched.stderr
            assert "Switched to internet mode" in switched.stdout
            await registered(daemon)
            status = json.loads((await petcamctl(bus_address, "--json", "status")).stdout)
            assert status["mode"] == "internet"
            assert status["relay"]["state"] == "registered"
            await wait_for(lambda: any("Mode" in c for c in changes), 5)
            assert next(c["Mode"] for c in changes if "Mode" in c).value == "internet"  # type: ignore[attr-defined]
            again = await petcamctl(bus_address, "--json", "mode", "internet")
            assert json.loads(again.stdout) == {"mode": "internet", "changed": False}
            bad = await petcamctl(bus_address, "mode", "cloud")
            assert bad.returncode == 2  # usage: argparse refuses it before the bus is involved
            back = await petcamctl(bus_address, "mode", "local")
            assert back.returncode == 0, back.stderr
            assert "nothing leaves your network" in back.stdout
        finally:
            bus.disconnect()


@pytest.mark.timeout(60)
async def test_internet_mode_without_a_relay_url_is_refused_with_a_reason(
    tmp_path: Path, bus_address: str
) -> None:
    async with running_daemon(tmp_path, bus_address) as daemon:
        refused = await petcamctl(bus_address, "mode", "internet")
        assert refused.returncode == 1
        assert "network.relay_url" in refused.stderr
        assert daemon.controller is not None
        assert daemon.controller.status().mode == "local"
        assert not (tmp_path / "device-state" / MODE_FILE).exists()  # nothing saved


@pytest.mark.timeout(60)
async def test_petcamctl_nettest_reaches_the_relay_and_gives_a_verdict(
    tmp_path: Path, bus_address: str
) -> None:
    port = free_port()
    async with (
        relay_process(tmp_path / "relay", port),
        running_daemon(tmp_path, bus_address, relay=FAST_RELAY, network=internet(port)),
    ):
        result = await petcamctl(bus_address, "nettest")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"Relay  ws://127.0.0.1:{port}/device" in result.stdout
        assert "Verdict" in result.stdout
        report = json.loads((await petcamctl(bus_address, "--json", "nettest")).stdout)
        assert report["relay"]["reachable"] is True
        assert report["relay"]["origin_ok"] is True
        assert report["relay"]["rtt_ms"] > 0
    # The relay is gone: the same test now says so, with exit code 1.
    failed = await petcamctl_after_stop(tmp_path, bus_address, port)
    assert failed.returncode == 1
    assert "XX" in failed.stdout


async def petcamctl_after_stop(
    tmp_path: Path, bus_address: str, port: int
) -> subprocess.CompletedProcess[str]:
    async with running_daemon(tmp_path, bus_address, relay=FAST_RELAY, network=internet(port)):
        return await petcamctl(bus_address, "nettest")
