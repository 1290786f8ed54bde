"""Shared test plumbing.

Coroutine tests run on a fresh event loop each (no pytest-asyncio: its API differs between the
Debian bookworm and PyPI versions this suite runs on).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

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
