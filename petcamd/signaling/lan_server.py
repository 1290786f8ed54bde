"""The on-device LAN server: the viewer's origin in Local Network Mode.

Plain HTTP by design (docs/security.md explains why no certificate warning is worth it): the
pairing URL pins the device key and all signaling is Noise-encrypted end to end. Unauthenticated
endpoints reveal nothing beyond the device id and name.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LanServerSettings:
    address: str
    port: int
    device_id: str
    device_name: str


class LanServer:
    """An aiohttp site bound at start; `port` is the bound one (so port 0 works in tests)."""

    def __init__(self, settings: LanServerSettings) -> None:
        self._settings = settings
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/healthz", self._health)
        return app

    async def _health(self, _request: web.Request) -> web.Response:
        body = {"status": "ok", "device_id": self._settings.device_id, "name": self._settings.device_name}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def start(self) -> None:
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        family = socket.AF_INET6 if ":" in self._settings.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._settings.address, self._settings.port))
            sock.listen(64)
            sock.setblocking(False)  # noqa: FBT003 - socket API
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            raise OSError(
                exc.errno, f"cannot listen on {self._settings.address}:{self._settings.port}: {exc.strerror}"
            ) from None
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        self.port = sock.getsockname()[1]
        log.info("LAN server listening on http://%s:%d/", self._settings.address, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
