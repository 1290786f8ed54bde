"""petcam-relay's HTTP server: /device, /viewer, /healthz, /metrics and the web viewer's files.

The relay keeps its routing table in memory (or, with several instances, shares it through a
Redis backplane that holds routing keys only: petcamd.relay.backplane) and writes nothing
anywhere: no files, no access log, no payloads or keys in its own log (device ids and counts
only). Client addresses are used for limits and forgotten with them (petcamd.relay.limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from aiohttp import hdrs, web

from petcamd.protocol.relay import CloseCode, relay_origin
from petcamd.relay.backplane import RedisRouter
from petcamd.relay.config import RelayConfig, read_turn_secret
from petcamd.relay.connection import Connection, ConnectionSettings, Shared
from petcamd.relay.device import DeviceConnection
from petcamd.relay.limits import (
    AddressLimits,
    AddressTable,
    IPAddress,
    Refusal,
    address_key,
    allowed,
    client_address,
)
from petcamd.relay.metrics import CONTENT_TYPE, Metrics
from petcamd.relay.router import MemoryRouter, Router
from petcamd.relay.tls import server_ssl_context
from petcamd.relay.turn import TurnIssuer
from petcamd.relay.viewer import ViewerConnection
from petcamd.web_static import (
    StaticFiles,
    header_hook,
    quiet_malformed_requests,
    security_headers,
    websocket_origin,
)

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5.0
"""How often per-address state is pruned and connections that stopped reading are reaped."""
CLOSE_GRACE_S = 2.0
"""How long a closing connection may take before its TCP connection is aborted."""


def connection_settings(config: RelayConfig) -> ConnectionSettings:
    limits, timeouts = config.limits, config.timeouts
    return ConnectionSettings(
        origin=config.origin,
        register_s=timeouts.register_s,
        idle_s=timeouts.idle_s,
        messages_per_s=limits.messages_per_s,
        message_burst=limits.message_burst,
        bytes_per_s=limits.bytes_per_s,
        byte_burst=limits.byte_burst,
        max_viewers_per_device=limits.max_viewers_per_device,
        max_sessions_per_viewer=limits.max_sessions_per_viewer,
        send_queue_bytes=limits.send_queue_bytes,
    )


class RelayServer:
    """The relay as a component: ``start()`` binds (``port`` is then the bound port), ``stop()``."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        router: Router | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics(
            devices=lambda: self.router.devices, backplane_up=lambda: self.router.backplane_up
        )
        self.router: Router = router if router is not None else _router(config, self.metrics)
        self._shared = Shared(connection_settings(config), self.router, self.metrics, turn_issuer(config))
        limits = config.limits
        self.addresses = AddressTable(
            AddressLimits(
                max_connections=config.server.max_connections,
                connections_per_address=limits.connections_per_address,
                connects_per_s=limits.address_connects_per_s,
                connect_burst=limits.address_connect_burst,
                messages_per_s=limits.address_messages_per_s,
                message_burst=limits.address_message_burst,
            )
        )
        self._trusted = config.trusted_proxies
        self._metrics_allow = config.metrics_allow
        tls = config.tls
        if ssl_context is None and tls.certificate is not None and tls.private_key is not None:
            ssl_context = server_ssl_context(tls.certificate, tls.private_key)
        self.ssl_context = ssl_context
        self._connections: set[Connection] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def status(self) -> str:
        viewers = self.metrics.connections["viewer"]
        sessions = self.metrics.sessions
        text = f"{self.router.devices} devices, {viewers} viewer connections, {sessions} sessions"
        up = self.router.backplane_up
        return text if up is None else f"{text}, backplane {'up' if up else 'down'}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/device", self._device)
        app.router.add_get("/viewer", self._viewer)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        if self.config.server.static_dir is not None:
            files = StaticFiles(self.config.server.static_dir)
            app.router.add_get("/{path:.*}", files.handle)
        origin = relay_origin(self.config.server.public_origin)
        headers = security_headers([websocket_origin(origin)], https=origin.startswith("https:"))
        app.on_response_prepare.append(header_hook(headers))
        app.on_shutdown.append(self._close_all)
        return app

    async def start(self) -> None:
        server = self.config.server
        quiet_malformed_requests()  # junk HTTP from the internet must not flood the journal
        await self.router.start()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        family = socket.AF_INET6 if ":" in server.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((server.address, server.port))
            sock.listen(512)
            sock.setblocking(False)  # noqa: FBT003 - socket API
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            await self.router.close()
            raise OSError(
                exc.errno, f"cannot listen on {server.address}:{server.port}: {exc.strerror}"
            ) from None
        await web.SockSite(runner, sock, ssl_context=self.ssl_context).start()
        self._runner = runner
        self.port = sock.getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep(), name="relay-address-sweep")
        log.info(
            "relay listening on %s://%s:%d/ for %s",
            self.scheme,
            server.address,
            self.port,
            self.config.origin,
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if runner is not None:
            await runner.cleanup()
            await self.router.close()
            log.info("relay stopped")

    def reload_tls(self) -> None:
        """Load the certificate and key again (after a renewal); new connections use them.

        Raises TlsError, keeping the current certificate, if the files do not load.
        """
        tls = self.config.tls
        if self.ssl_context is None or tls.certificate is None or tls.private_key is None:
            return
        # A failed load can leave a context half updated, so try the files on a scratch one first.
        server_ssl_context(tls.certificate, tls.private_key)
        server_ssl_context(tls.certificate, tls.private_key, into=self.ssl_context)
        log.info("reloaded the TLS certificate")

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.addresses.sweep()
            now = loop.time()
            for connection in list(self._connections):
                connection.reap(now, CLOSE_GRACE_S)

    async def _close_all(self, _app: web.Application) -> None:
        for connection in list(self._connections):
            connection.close(CloseCode.GOING_AWAY, "relay shutting down")
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=CLOSE_GRACE_S)
            if pending:
                for connection in list(self._connections):
                    connection.abort()
                await asyncio.wait(pending, timeout=CLOSE_GRACE_S)

    def _address(self, request: web.Request) -> IPAddress | None:
        forwarded = request.headers.getall(hdrs.X_FORWARDED_FOR, [])
        return client_address(request.remote, forwarded, self._trusted)

    async def _device(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, DeviceConnection)

    async def _viewer(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, ViewerConnection)

    async def _websocket(
        self, request: web.Request, kind: type[DeviceConnection | ViewerConnection]
    ) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=self.config.timeouts.heartbeat_s,
            # aiohttp refuses a message whose size reaches max_msg_size.
            max_msg_size=self.config.limits.max_message_bytes + 1,
            compress=False,  # encrypted payloads do not compress, and compression leaks lengths
            timeout=CLOSE_GRACE_S,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(
                status=426, text="WebSocket upgrade required", headers={"Upgrade": "websocket"}
            )
        key = address_key(self._address(request))
        entry = self.addresses.admit(key)
        if isinstance(entry, Refusal):
            self.metrics.refused[entry.value] += 1
            log.debug("refused a %s connection from %s: %s", kind.ROLE, key, entry.value)
            status = 503 if entry is Refusal.SERVER_FULL else 429
            return web.Response(status=status, text=_REFUSALS[entry], headers={"Retry-After": "10"})
        task = asyncio.current_task()
        try:
            await ws.prepare(request)
            connection = kind(ws, self._shared, entry, request.transport)
            self._connections.add(connection)
            if task is not None:
                self._handlers.add(task)
            try:
                await connection.serve()
            finally:
                self._connections.discard(connection)
                self._handlers.discard(task)
        finally:
            self.addresses.release(entry)
        return ws

    async def _health(self, _request: web.Request) -> web.Response:
        """200 while the instance serves; with a backplane, also whether it reaches other instances."""
        up = self.router.backplane_up
        if up is None:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "ok", "backplane": "up" if up else "down"})

    async def _metrics(self, request: web.Request) -> web.Response:
        if not allowed(self._address(request), self._metrics_allow):
            raise web.HTTPForbidden(text="metrics are not available from this address")
        return web.Response(
            body=self.metrics.render().encode("utf-8"), headers={"Content-Type": CONTENT_TYPE}
        )


def _router(config: RelayConfig, metrics: Metrics) -> Router:
    """In memory unless ``[backplane] redis_url`` names a Redis shared with other instances."""
    url = config.backplane.redis_url
    if not url:
        return MemoryRouter()
    return RedisRouter(url, queue_bytes=config.limits.send_queue_bytes, metrics=metrics)


_REFUSALS = {
    Refusal.SERVER_FULL: "the relay is full; try again later",
    Refusal.ADDRESS_CONNECTIONS: "too many connections from your address",
    Refusal.ADDRESS_CONNECT_RATE: "too many new connections from your address; slow down",
}


def turn_issuer(config: RelayConfig) -> TurnIssuer | None:
    """Raises OSError or ValueError when the TURN secret cannot be read (the relay cannot start)."""
    turn = config.turn
    if not turn.urls:
        return None
    secret = read_turn_secret(turn) if any(url.startswith("turn") for url in turn.urls) else b""
    return TurnIssuer(turn.urls, secret, turn.ttl_s)
