"""Routing between device and viewer connections, behind an interface a backplane can implement.

A session joins two :class:`Endpoint` objects: each side holds the other's and calls ``deliver``
for every frame and ``end`` once. Endpoints only queue (they never await), so one slow
connection cannot stall the one forwarding to it.

:class:`MemoryRouter` serves one relay instance (the default). Several instances behind a load
balancer use :class:`petcamd.relay.backplane.RedisRouter`, which also reaches devices registered
on other instances over Redis pub/sub: ``register`` announces the id (evicting an older
registration anywhere), ``connect`` finds the instance holding the device and returns an endpoint
that publishes to it. The methods are coroutines for that reason even though the in-memory one
never waits.
"""

from __future__ import annotations

import logging
from typing import Protocol

from petcamd.protocol.relay import CloseReason

log = logging.getLogger(__name__)


class Endpoint(Protocol):
    """One side of a session, as the other side sees it."""

    def deliver(self, frame: bytes) -> bool:
        """Queue one frame for this side; False if it cannot take it (the session must end)."""
        ...

    def end(self, reason: CloseReason) -> None:
        """The other side is gone; idempotent, and it never calls back into the caller."""
        ...


class DeviceHost(Protocol):
    """A registered device connection as the router sees it."""

    def accept(self, viewer: Endpoint) -> Endpoint | CloseReason:
        """Open a session with ``viewer``; returns the device side, or why there is none."""
        ...

    def evict(self) -> None:
        """A newer connection proved the same key: end every session and close."""
        ...


class Router(Protocol):
    async def start(self) -> None:
        """Before the relay accepts connections."""
        ...

    async def close(self) -> None:
        """After every connection has ended."""
        ...

    async def register(self, device_id: str, host: DeviceHost) -> None:
        """Route ``device_id`` to ``host`` from now on; any previous host is evicted."""
        ...

    async def unregister(self, device_id: str, host: DeviceHost) -> None:
        """``host`` went away; a no-op if a newer host holds the id already."""
        ...

    async def connect(self, device_id: str, viewer: Endpoint) -> Endpoint | CloseReason: ...

    @property
    def devices(self) -> int:
        """Devices registered through this instance (a metrics gauge)."""
        ...

    @property
    def backplane_up(self) -> bool | None:
        """Whether the backplane to other instances works; None when there is none."""
        ...


class MemoryRouter:
    """The routing table of one relay instance: device id to connection, nothing else."""

    def __init__(self) -> None:
        self._hosts: dict[str, DeviceHost] = {}

    @property
    def devices(self) -> int:
        return len(self._hosts)

    @property
    def backplane_up(self) -> bool | None:
        return None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def register(self, device_id: str, host: DeviceHost) -> None:
        previous = self._hosts.get(device_id)
        self._hosts[device_id] = host
        if previous is not None and previous is not host:
            log.info("device %s registered again; closing its previous connection", device_id)
            previous.evict()

    async def unregister(self, device_id: str, host: DeviceHost) -> None:
        if self._hosts.get(device_id) is host:
            del self._hosts[device_id]

    async def connect(self, device_id: str, viewer: Endpoint) -> Endpoint | CloseReason:
        host = self._hosts.get(device_id)
        if host is None:
            return CloseReason.DEVICE_UNAVAILABLE
        return host.accept(viewer)
