"""Shared test plumbing.

Coroutine tests run on a fresh event loop each (no pytest-asyncio: its API differs between the
Debian bookworm and PyPI versions this suite runs on).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dbus_daemon import private_bus
from tests.notify_socket import NotifySocket
from tests.redis_server import RedisServer, redis_server

ASYNC_TEST_TIMEOUT_S = 120.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}
    timeout = ASYNC_TEST_TIMEOUT_S
    marker = pyfuncitem.get_closest_marker("timeout")
    if marker is not None:
        timeout = float(marker.args[0])

    async def run() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout)

    asyncio.run(run())
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout(seconds): per-test limit for coroutine tests")


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin aiortc's ICE host candidates to 127.0.0.1.

    aioice leaves 127.0.0.1 out when it lists host addresses, and tests must never use any other
    address. `aioice.ice.get_host_addresses(use_ipv4, use_ipv6)` has the same name and signature
    from aioice 0.8 (Debian bookworm) to 0.13 and is looked up at call time by
    `Connection.gather_candidates`, so replacing it is enough.
    """
    import aioice.ice

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_only)


@pytest.fixture
def bus_address(tmp_path: Path) -> Iterator[str]:
    """A private dbus-daemon (session type) for the test; its address."""
    with private_bus(tmp_path) as address:
        yield address


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    """Where a daemon under test sends its sd_notify messages (NOTIFY_SOCKET)."""
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a loopback port (the relay's backplane)."""
    directory = tmp_path / "redis"
    directory.mkdir()
    with redis_server(directory) as server:
        yield server
