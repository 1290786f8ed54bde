"""The daemon behind a load balancer in front of two relay instances sharing Redis: when the instance
holding its connection dies (SIGKILL), the daemon's own relay client registers again through the
balancer, on the other instance, within its backoff cap, and viewers reach it again.

The balancer is a loopback TCP forwarder that sends each new connection to the first instance that
accepts it, as a load balancer with health checks does once one backend is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from petcamd.signaling.relay_client import RelayState
from petcamd.viewer.client import DeviceOfflineError, pair, watch
from petcamd.viewer.state import ViewerState
from tests.ports import free_port
from tests.redis_server import RedisServer
from tests.test_lan_signaling import running_daemon
from tests.test_relay_mode import BACKOFF_CAP_S, FAST_RELAY, RelayProcess, internet, registered
from tests.test_webrtc_harness import wait_for

pytestmark = pytest.mark.usefixtures("loopback_ice")


class Balancer:
    """Forwards each connection to the first backend port that accepts it; counts where they went."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.routed: list[int] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.routed.append(port)
            pipes = [
                asyncio.ensure_future(self._pipe(reader, upstream_writer)),
                asyncio.ensure_future(self._pipe(upstream_reader, writer)),
            ]
            self._pipes.update(pipes)
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            return
        writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Balancer]:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for pipe in list(self._pipes):
                pipe.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)


@pytest.mark.timeout(120)
async def test_a_killed_instance_s_device_registers_on_the_other_within_the_backoff_cap(
    tmp_path: Path, bus_address: str, redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ports = [free_port(), free_port()]
    balancer = Balancer(ports)
    async with balancer.running():
        origin = f"http://127.0.0.1:{balancer.port}"  # both instances answer for the balancer's origin
        instances = [RelayProcess(tmp_path / f"relay-{i}", port, origin) for i, port in enumerate(ports)]
        for instance in instances:
            with instance.config.open("a") as config:
                config.write(f'[backplane]\nredis_url = "{redis.url}"\n')
            await instance.start()
        try:
            async with running_daemon(
                tmp_path, bus_address, network=internet(balancer.port), relay=FAST_RELAY
            ) as daemon:
                await registered(daemon)
                assert balancer.routed == [ports[0]]  # the device sits on instance A
                assert daemon.controller is not None
                state = ViewerState(tmp_path / "viewer")
                device = await pair(state, daemon.controller.start_pairing().url, "Viewer", via="relay")

                client = daemon.modes.relay if daemon.modes is not None else None
                assert client is not None
                await instances[0].kill()
                killed = time.monotonic()
                await wait_for(lambda: client.state is not RelayState.REGISTERED, 10)  # it noticed
                await registered(daemon, within=BACKOFF_CAP_S + 10)
                took = time.monotonic() - killed
                with capsys.disabled():
                    print(f"\nre-registered on instance B {took:.2f} s after instance A was killed")
                assert balancer.routed[-1] == ports[1]
                assert took < BACKOFF_CAP_S + 3  # the cap, plus connecting on a loaded machine
                result = await watch(state, device, frames=10, via="relay")  # through B
                assert result.frames_decoded >= 10
                assert result.signaling == "relay"
        finally:
            for instance in instances:
                await instance.stop()
    # Control: with both instances gone, the camera is really offline through the balancer.
    async with balancer.running():
        with pytest.raises(DeviceOfflineError):
            await watch(state, device, frames=1, via="relay", timeout_s=2)
