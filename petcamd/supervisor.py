"""The composition root: builds every part with explicit dependencies, starts them in order,
announces READY only when the daemon can really serve, and stops in timed stages.

Nothing imports this module; it imports everything it wires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from petcamd.camera.factory import create_source
from petcamd.camera.health import CameraState, HealthSettings
from petcamd.camera.hub import FrameHub, HubSettings
from petcamd.camera.source import Source
from petcamd.config import Config
from petcamd.control.controller import Controller, StatusProbe
from petcamd.control.dbus_service import DBusService
from petcamd.display.framebuffer import DisplayUnavailableError, PairingDisplay
from petcamd.display.select import create_display
from petcamd.lifecycle import Component, Stage, StageResult, TaskOwner, run_stages
from petcamd.netaddr import lan_addresses
from petcamd.notify import Health, SystemdNotifier, notify_loop
from petcamd.secure.device_ca import DeviceTls, DeviceTlsError, ensure_device_tls
from petcamd.secure.identity import IdentityError, load_or_create_identity
from petcamd.secure.keystore import Keystore, Peer, PeerEvent
from petcamd.signaling.lan_server import ConnectionLimits, LanServer, LanServerSettings
from petcamd.signaling.mdns import MdnsAdvertiser
from petcamd.signaling.modes import NetworkModes
from petcamd.signaling.negotiator import NegotiatorSettings, Signaling
from petcamd.signaling.relay_client import RelayClient, RelayClientSettings
from petcamd.web_static import viewer_web_dir, websocket_origin
from petcamd.webrtc.ice import IceServer
from petcamd.webrtc.session import SessionState, SessionStats
from petcamd.webrtc.sessions import SessionEvent, SessionEventKind, SessionManager, WebRtcSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1


@dataclass(frozen=True, slots=True)
class StopBudgets:
    """Seconds per shutdown stage; together they stay well inside systemd's TimeoutStopSec."""

    viewers: float = 2.0
    control: float = 1.0
    camera: float = 1.5
    tasks: float = 0.5


@dataclass(frozen=True, slots=True)
class RunOptions:
    bus_address: str | None = None
    display: PairingDisplay | None = None
    budgets: StopBudgets = field(default_factory=StopBudgets)
    install_signal_handlers: bool = True
    source: Source | None = None  # tests inject a fake camera here; None = chosen from config
    health: HealthSettings | None = None  # None = defaults with the configured stall timeout
    signaling: NegotiatorSettings | None = None  # None = defaults (tests shorten the timeouts)
    lan_limits: ConnectionLimits | None = None  # None = defaults
    relay: RelayClientSettings | None = None  # None = defaults (tests shorten the backoff)
    relay_ssl: ssl.SSLContext | None = None  # None = the system's trust store (tests bring their CA)


class Daemon:
    def __init__(self, config: Config, notifier: SystemdNotifier, options: RunOptions | None = None) -> None:
        self.config = config
        self.notifier = notifier
        self.options = options or RunOptions()
        self.tasks = TaskOwner()
        self._stop_requested = asyncio.Event()
        self._started: list[tuple[str, Component]] = []
        self.stage_results: list[StageResult] = []
        self.ready = asyncio.Event()
        self.controller: Controller | None = None
        self.hub: FrameHub | None = None
        self.lan: LanServer | None = None
        self.sessions: SessionManager | None = None
        self.signaling: Signaling | None = None
        self.modes: NetworkModes | None = None

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def run(self) -> int:
        if self.options.install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._start()
        except StartupError as exc:
            log.error("cannot start: %s", exc)  # noqa: TRY400 - a one-line reason, not a traceback
            await self._shutdown()
            return EXIT_FAILURE
        self.notifier.ready(self.status_line())
        self.ready.set()
        log.info("ready: %s", self.status_line())
        self._maybe_open_pairing()
        self.tasks.spawn(
            "systemd-notify", notify_loop(self.notifier, self.pipeline_health, self.status_line), vital=True
        )
        stop_waiter: asyncio.Future[object] = asyncio.ensure_future(self._stop_requested.wait())
        fatal: asyncio.Future[object] = asyncio.ensure_future(self.tasks.fatal)
        await asyncio.wait([stop_waiter, fatal], return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        exit_code = EXIT_OK
        if self.tasks.fatal.done():
            log.critical("stopping: %s", self.tasks.fatal.result())
            exit_code = EXIT_FAILURE
        else:
            log.info("stop requested")
        await self._shutdown()
        return exit_code

    async def _start(self) -> None:
        config = self.config
        state_dir = config.state.directory
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            identity = await asyncio.to_thread(load_or_create_identity, state_dir / "device.key")
        except (IdentityError, OSError) as exc:
            raise StartupError(f"device identity unavailable: {exc}") from exc
        keystore = await asyncio.to_thread(Keystore.open, state_dir)
        if keystore.problem:
            log.error("keystore problem: %s", keystore.problem)

        try:
            source = self.options.source or create_source(
                config.camera.source, config.camera.device, config.stream
            )
        except ValueError as exc:
            raise StartupError(f"camera: {exc}") from exc
        health = self.options.health or HealthSettings(stall_timeout_s=config.camera.stall_timeout_s)
        hub = FrameHub(
            source,
            HubSettings(
                keyframe_min_interval_s=config.camera.keyframe_min_interval_s,
                linger_s=config.camera.linger_s,
                always_on=config.camera.always_on,
            ),
            health,
        )
        self.hub = hub
        try:
            sessions = SessionManager(hub, webrtc_settings(config))
        except ValueError as exc:
            raise StartupError(f"WebRTC: {exc}") from exc
        self.sessions = sessions
        display = self.options.display
        if display is None:
            try:
                display = create_display(config.pairing.display)
            except DisplayUnavailableError as exc:
                raise StartupError(f"pairing display: {exc}") from exc

        def live_sessions() -> list[SessionStats]:
            return [s for s in sessions.sessions if s.state is not SessionState.CLOSED]

        relay_url = config.network.relay_url

        def relay_client() -> RelayClient:
            return RelayClient(
                relay_url,
                identity.private_key,
                identity.key_id,
                signaling,
                self.options.relay,
                ssl=self.options.relay_ssl,
                on_ice_servers=modes.relay_offered,
            )

        modes = NetworkModes(
            configured_mode=config.network.mode,
            state_dir=state_dir,
            sessions=sessions,
            webrtc_settings=lambda mode, offered: webrtc_settings(config, mode, offered),
            relay_factory=relay_client if relay_url else None,
        )
        self.modes = modes
        controller = Controller(
            config=config,
            device_id=identity.key_id,
            device_key=identity.public_key,
            probe=StatusProbe(
                camera_state=lambda: hub.state.value,
                camera_description=lambda: source.description,
                viewers=lambda: len(live_sessions()),
                lan_port=lambda: lan.port,
                https_port=lambda: lan.https_port,
                sessions=lambda: [s.status() for s in live_sessions()],
            ),
            keystore=keystore,
            display=display,
            modes=modes,
        )
        self.controller = controller
        hub.add_state_listener(lambda status: controller.camera_changed(status.state.value))

        def on_session(event: SessionEvent) -> None:
            if event.kind is SessionEventKind.CONNECTED:
                controller.viewer_event("connected", event.peer_id, event.session_id)
            else:
                controller.viewer_event(
                    "disconnected", event.peer_id, event.session_id, event.reason or "closed"
                )

        sessions.add_listener(on_session)
        signaling = Signaling(
            static_private=identity.private_key,
            device_name=config.device.name,
            peers=keystore,
            pairing=controller,
            sessions=sessions,
            request_keyframe=hub.request_keyframe,
            settings=self.options.signaling,
        )
        self.signaling = signaling
        self._watch_revocations(keystore, signaling)
        tls = await self._device_tls(identity.key_id) if config.network.https else None
        lan = LanServer(
            LanServerSettings(
                address=config.network.lan_address,
                port=config.network.lan_port,
                device_id=identity.key_id,
                device_name=config.device.name,
                limits=self.options.lan_limits or ConnectionLimits(),
                static_dir=viewer_web_dir(),
                connect_sources=(
                    (websocket_origin(config.network.relay_url),) if config.network.relay_url else ()
                ),
                https_port=config.network.https_port if tls else None,
                ssl_context=tls.ssl_context() if tls else None,
                ca_certificate=tls.ca_der if tls else None,
            ),
            signaling,
        )
        self.lan = lan
        dbus = DBusService(controller, bus=config.control.bus, bus_address=self.options.bus_address)
        self._keystore = keystore
        components: list[tuple[str, Component]] = [
            ("camera", hub),
            ("sessions", sessions),
            ("lan-server", lan),
            ("network-mode", modes),
        ]
        if config.network.mdns:
            mdns = MdnsAdvertiser(
                device_id=identity.key_id,
                device_name=config.device.name,
                port=lambda: lan.port,
                bind_address=config.network.lan_address,
            )
            components.append(("mdns", mdns))  # start() returns at once and never raises
        components += [("controller", controller), ("dbus", dbus)]
        for name, component in components:
            try:
                await component.start()
            except Exception as exc:
                raise StartupError(f"{name}: {exc}") from exc
            self._started.append((name, component))
            if component is hub:
                await self._camera_settled(hub, health)

    async def _device_tls(self, device_id: str) -> DeviceTls:
        network = self.config.network
        hosts = [*lan_addresses(network.lan_address), f"{socket.gethostname()}.local", "localhost"]
        try:
            tls = await asyncio.to_thread(
                ensure_device_tls,
                self.config.state.directory / "tls",
                device_id=device_id,
                device_name=self.config.device.name,
                hosts=hosts,
            )
        except DeviceTlsError as exc:
            raise StartupError(f"HTTPS: {exc}") from exc
        log.info("HTTPS on the LAN: device CA fingerprint (SHA-256) %s", tls.ca_fingerprint)
        return tls

    @staticmethod
    def _watch_revocations(keystore: Keystore, signaling: Signaling) -> None:
        """A revoked viewer's live channels and sessions end at once, whichever thread revoked it."""
        loop = asyncio.get_running_loop()

        def on_peer(event: PeerEvent, peer: Peer) -> None:
            if event != "revoked":
                return
            try:
                loop.call_soon_threadsafe(signaling.peer_revoked, peer.peer_id)
            except RuntimeError:  # the loop is closed: nothing is live any more
                log.debug("revocation of %s after shutdown", peer.peer_id)

        keystore.add_listener(on_peer)

    async def _camera_settled(self, hub: FrameHub, health: HealthSettings) -> None:
        """An always-on camera counts as serving once frames flow, or once it is clearly missing or
        failed (reported, not fatal); an on-demand camera is deliberately idle until a viewer comes."""
        if not hub.settings.always_on:
            return
        deadline = asyncio.get_running_loop().time() + health.first_frame_timeout_s + health.start_timeout_s
        unsettled = (CameraState.IDLE, CameraState.STARTING, CameraState.RESTARTING, CameraState.STALLED)
        while hub.state in unsettled:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)

    def _maybe_open_pairing(self) -> None:
        controller = self.controller
        if controller is None or not self.config.pairing.open_when_unpaired:
            return
        if self._keystore.peers() or self._keystore.problem:
            return
        try:
            controller.start_pairing()
        except Exception:
            log.exception("could not open the first pairing window")

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        started = dict(self._started)

        def stops(*names: str) -> list[Callable[[], Awaitable[None]]]:
            return [started[n].stop for n in names if n in started]

        budgets = self.options.budgets
        viewers: list[Callable[[], Awaitable[None]]] = []
        signaling = self.signaling
        if signaling is not None and "lan-server" in started:
            viewers.append(signaling.stop)
        viewers += stops("network-mode", "sessions")
        self.stage_results = await run_stages(
            [
                Stage("viewers", viewers, budgets.viewers),
                Stage(
                    "control",
                    [*stops("dbus", "controller", "mdns", "lan-server"), self._flush_keystore],
                    budgets.control,
                ),
                Stage("camera", stops("camera"), budgets.camera),
                Stage("tasks", [lambda: self.tasks.cancel_all(budgets.tasks)], budgets.tasks + 0.1),
            ]
        )
        self._started.clear()

    async def _flush_keystore(self) -> None:
        """Last-seen times held in memory reach the disk (they are written at most once a minute)."""
        keystore = getattr(self, "_keystore", None)
        if keystore is not None:
            try:
                await asyncio.to_thread(keystore.flush)
            except Exception as exc:
                log.warning("last-seen times not saved: %s", exc)

    def pipeline_health(self) -> Health:
        hub = self.hub
        if hub is None:
            return Health(ok=False, reason="camera not set up")
        ok = hub.pipeline_ok()
        return Health(ok=ok, reason="" if ok else hub.status.summary())

    def status_line(self) -> str:
        controller = self.controller
        if controller is None:
            return "starting"
        st = controller.status()
        pairing = ", pairing open" if st.pairing_active else ""
        return f"{st.mode} mode, camera {st.camera}, {st.viewers} viewer(s){pairing}"


class StartupError(Exception):
    """A part the daemon cannot serve without failed to start; the message names it."""


def webrtc_settings(
    config: Config, mode: str | None = None, offered: tuple[IceServer, ...] = ()
) -> WebRtcSettings:
    """Local Network Mode gathers host candidates only; internet mode adds the configured STUN
    servers and what the relay offered (STUN, and TURN with short-lived credentials).

    ``mode`` overrides the config file's (the owner switched at runtime). Raises ValueError for a
    configured server URL that cannot be used (TURN needs the credentials the relay issues).
    """
    network = config.network
    local = (mode or network.mode) == "local"
    configured = tuple(IceServer(url) for url in network.ice_servers)
    servers = () if local else configured + tuple(s for s in offered if s not in configured)
    return WebRtcSettings(
        max_viewers=config.viewers.max_viewers,
        local_network_mode=local,
        ice_servers=servers,
        gather_timeout_s=network.ice_gather_timeout_s,
    )


async def run_daemon(config: Config, options: RunOptions | None = None) -> int:
    daemon = Daemon(config, SystemdNotifier(), options)
    with contextlib.suppress(asyncio.CancelledError):
        return await daemon.run()
    return EXIT_FAILURE
