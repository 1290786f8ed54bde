"""The web viewer in a real headless Chromium against a real daemon: pairing from the QR code's link,
live video, reloads, a daemon restart, revocation, and a used pairing code; then the same through a
real petcam-relay serving the page over HTTPS with the daemon in internet mode.

The page is opened on a made-up host name that only the browser resolves (to 127.0.0.1), so it is
*not* a secure context, as on a phone opening http://<camera address>:8080, and a script that runs
before any of the page's own deletes ``crypto.subtle`` anyway: the page must work on pure-JS crypto.

With PETCAMD_WEB_SCREENSHOTS=<directory> set, the tests also write the screenshots of
docs/screenshots/ there (scripts/web-screenshots); the layout checks run either way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from petcamd.config import Config, parse_config
from petcamd.control.controller import Controller
from petcamd.notify import SystemdNotifier
from petcamd.supervisor import Daemon, RunOptions
from petcamd.web_static import viewer_web_dir
from tests.chromium import Chromium, Page
from tests.netns import Namespace, Topology, in_netns, require_netns
from tests.ports import free_port
from tests.test_lan_signaling import small_camera
from tests.test_relay_mode import FAST_RELAY, RelayProcess
from tests.test_relay_tls import make_certificate
from tests.test_webrtc_harness import wait_for

pytestmark = pytest.mark.usefixtures("isolated_network")

HOST = "petcam.test"
"""Resolved by the browser only (--host-resolver-rules): an http origin that is not a secure context."""
CAMERA_NAME = "Living room"
PHONE = (390, 844)
DESKTOP = (1280, 800)
SCREENSHOTS = os.environ.get("PETCAMD_WEB_SCREENSHOTS")

NO_SUBTLE = "delete Crypto.prototype.subtle;"
# Counts frames the video element presents (requestVideoFrameCallback), per document.
FRAME_COUNTER = """
window.__frames = 0;
document.addEventListener('DOMContentLoaded', () => {
  const video = document.getElementById('video');
  if (!video) return;
  const tick = () => { window.__frames++; video.requestVideoFrameCallback(tick); };
  video.requestVideoFrameCallback(tick);
});
"""
INIT_SCRIPTS = (NO_SUBTLE, FRAME_COUNTER)


ICE_ADDRESS = "10.213.0.1"
"""The daemon's and the browser's only address for media, on a veth pair in the test's namespace."""


@pytest.fixture
def isolated_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[Namespace]:
    """Browser, daemon and relay in a network namespace of their own: `lo` for HTTP and WebSockets,
    and a veth pair (both ends inside) carrying the default route, for WebRTC.

    Why not the host's loopback, as the `loopback_ice` fixture does for Python viewers: a page
    without camera permission (on http it can never have one) gets no list of interfaces from
    Chrome, which then offers only the address of its default route and answers from whatever
    address the kernel picks. On the host that is eth0's address, answered from 127.0.0.1, and
    aioice drops the pair ("source address mismatch"); bookworm's aioice then fails ICE before the
    browser's own checks arrive. In this namespace the default route's address is the veth's, the
    daemon's ICE is pinned to it, and nothing but this namespace is reachable at all.
    The test's thread (the event loop's) enters the namespace, so everything it starts or opens,
    the in-process daemon, Chromium and the relay process, lives there.
    """
    require_netns()
    import aioice.ice  # the hook the loopback_ice fixture uses, with another address

    def veth_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [ICE_ADDRESS] if use_ipv4 else []

    monkeypatch.setattr(aioice.ice, "get_host_addresses", veth_only)
    with Topology("web") as topology:
        ns = topology.namespace("viewer")
        # No IPv6 link-local address appearing a moment later: Chrome would see the network
        # change and fail the page's requests in flight (ERR_NETWORK_CHANGED).
        ns.run("sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
        topology.link(ns, "veth0", ns, "veth1")
        ns.ip("addr", "add", f"{ICE_ADDRESS}/24", "dev", "veth0")
        ns.ip("route", "add", "default", "dev", "veth0")
        with in_netns(ns.name):
            yield ns


def daemon_config(tmp_path: Path, *, port: int = 0, relay_url: str = "") -> Config:
    return parse_config(
        {
            "device": {"name": CAMERA_NAME},
            "camera": {"source": "test", "always_on": True},
            "network": {
                "lan_address": "127.0.0.1",
                "lan_port": port,
                "mdns": False,
                **({"mode": "internet", "relay_url": relay_url} if relay_url else {}),
            },
            "pairing": {"display": "none", "open_when_unpaired": False},
            "state": {"directory": str(tmp_path / "device-state")},
            "control": {"bus": "session"},
        }
    )


class InProcessDaemon:
    """The whole daemon on this event loop (so `loopback_ice` applies), restartable on its port."""

    def __init__(
        self,
        tmp_path: Path,
        bus_address: str,
        *,
        relay_url: str = "",
        relay_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._tmp_path = tmp_path
        self._bus_address = bus_address
        self._relay_url = relay_url
        self._relay_ssl = relay_ssl
        self.port = 0
        self.daemon: Daemon | None = None
        self._run: asyncio.Task[int] | None = None

    async def start(self) -> Daemon:
        config = daemon_config(self._tmp_path, port=self.port, relay_url=self._relay_url)
        options = RunOptions(
            bus_address=self._bus_address,
            install_signal_handlers=False,
            source=small_camera(),
            relay=FAST_RELAY if self._relay_url else None,
            relay_ssl=self._relay_ssl,
        )
        daemon = Daemon(config, SystemdNotifier({}), options)
        self._run = asyncio.create_task(daemon.run())
        ready = asyncio.ensure_future(daemon.ready.wait())
        await asyncio.wait({ready, self._run}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not daemon.ready.is_set():
            ready.cancel()
            raise AssertionError(
                f"the daemon did not become ready: {self._run.done() and self._run.result()}"
            )
        assert daemon.lan is not None
        assert daemon.lan.port is not None
        self.port = daemon.lan.port
        self.daemon = daemon
        return daemon

    async def stop(self) -> None:
        if self.daemon is None or self._run is None:
            return
        self.daemon.request_stop()
        assert await asyncio.wait_for(self._run, 15) == 0
        self.daemon = None

    def live_sessions(self) -> int:
        assert self.daemon is not None
        assert self.daemon.sessions is not None
        return len(self.daemon.sessions.sessions)

    @property
    def controller(self) -> Controller:
        assert self.daemon is not None
        assert self.daemon.controller is not None
        return self.daemon.controller

    def pairing_url(self, host: str = HOST) -> str:
        """The QR code's URL, its origin's host replaced by ``host`` (same port)."""
        url = urllib.parse.urlsplit(self.controller.start_pairing().url)
        netloc = f"{host}:{url.port}" if url.port else host
        return urllib.parse.urlunsplit((url.scheme, netloc, url.path or "/", url.query, url.fragment))


@contextlib.asynccontextmanager
async def running(tmp_path: Path, bus_address: str, **kwargs: Any) -> AsyncIterator[InProcessDaemon]:
    daemon = InProcessDaemon(tmp_path, bus_address, **kwargs)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def frames(page: Page) -> int:
    return int(await page.evaluate("window.__frames ?? 0"))


async def wait_frames(page: Page, count: int, timeout_s: float) -> float:
    """Waits until the page presented ``count`` frames; returns how long that took."""
    started = time.monotonic()
    await page.wait_for(f"window.__frames >= {count}", timeout_s)
    return time.monotonic() - started


async def pair(page: Page, url: str, name: str = "Test phone") -> None:
    await page.goto(url)
    await page.wait_for("document.querySelector('main').dataset.view === 'pair'", 20)
    await page.evaluate(f"document.getElementById('viewer-name').value = {name!r}")
    await page.click("#pair-button")


async def check_layout(page: Page, view: str, name: str) -> None:
    """No sideways scrolling on a phone or a desktop; screenshots when asked for."""
    for (width, height), label in ((PHONE, "phone"), (DESKTOP, "desktop")):
        await page.set_viewport(width, height, mobile=label == "phone")
        await asyncio.sleep(0.3)  # a layout and a frame at the new size
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{view} at {width}x{height} scrolls sideways by {overflow} px"
        assert await page.evaluate("document.querySelector('main').dataset.view") == view
        if SCREENSHOTS:
            save_screenshot(f"{name}-{label}.png", await page.screenshot())
    await page.set_viewport(*PHONE, mobile=True)


def save_screenshot(name: str, png: bytes) -> None:
    directory = Path(SCREENSHOTS or ".")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(png)


def assert_clean(page: Page) -> None:
    """No script errors and nothing the Content-Security-Policy had to block."""
    assert page.errors == [], page.errors
    blocked = [line for line in page.console if "Content Security Policy" in line or "Uncaught" in line]
    assert blocked == [], blocked


@pytest.mark.timeout(90)
async def test_pair_watch_reload_and_a_used_code(tmp_path: Path, bus_address: str) -> None:
    async with (
        running(tmp_path, bus_address) as daemon,
        Chromium.launch(tmp_path, hosts=[HOST]) as browser,
    ):
        url = daemon.pairing_url()
        page = await browser.new_page(init_scripts=INIT_SCRIPTS)
        await page.goto(url)
        await page.wait_for("document.querySelector('main').dataset.view === 'pair'", 20)
        # The insecure-origin path: no WebCrypto at all, only getRandomValues.
        context = await page.evaluate(
            "({secure: isSecureContext, subtle: typeof crypto.subtle, random: typeof crypto.getRandomValues})"
        )
        assert context == {"secure": False, "subtle": "undefined", "random": "function"}
        assert CAMERA_NAME in await page.evaluate("document.getElementById('pair-heading').textContent")
        await check_layout(page, "pair", "pairing")

        started = time.monotonic()
        await page.evaluate("document.getElementById('viewer-name').value = 'Test phone'")
        await page.click("#pair-button")
        await page.wait_for("window.__frames >= 1", 20)
        first_frame_s = time.monotonic() - started
        await wait_frames(page, 90, 30)
        print(f"pair -> first frame {first_frame_s * 1000:.0f} ms")

        # Paired and stored; the secret is gone from the address bar.
        assert [p.name for p in daemon.controller.peers()] == ["Test phone"]
        assert await page.evaluate("location.hash") == ""
        assert await page.evaluate("location.href") == f"http://{HOST}:{daemon.port}/"
        stats = await page.wait_for(
            "document.getElementById('stat-resolution').textContent.includes('\u00d7') &&"
            " ({path: document.getElementById('stat-path').textContent,"
            "   resolution: document.getElementById('stat-resolution').textContent,"
            "   fps: document.getElementById('stat-fps').textContent,"
            "   bitrate: document.getElementById('stat-bitrate').textContent,"
            "   signaling: document.getElementById('stat-signaling').textContent,"
            "   state: document.querySelector('main').dataset.state})",
            10,
        )
        assert stats["path"] == "LAN direct"
        assert stats["resolution"] == "320 \u00d7 240"
        assert stats["fps"].endswith("fps")
        assert stats["bitrate"].endswith("bit/s")
        assert stats["signaling"] == "direct"
        assert stats["state"] == "live"
        await check_layout(page, "player", "playing")

        # A reload watches again with the stored pairing: no new pairing, same single peer.
        await page.reload()
        reload_s = await wait_frames(page, 30, 30)
        print(f"reload -> 30 frames {reload_s * 1000:.0f} ms")
        assert await page.evaluate("document.querySelector('main').dataset.view") == "player"
        assert [p.name for p in daemon.controller.peers()] == ["Test phone"]

        # Another browser (its own storage) opening the same, now used, code is told so.
        other = await browser.new_page(isolated=True, init_scripts=INIT_SCRIPTS)
        await pair(other, url, "Second phone")
        await other.wait_for("document.querySelector('main').dataset.problem === 'code-used'", 20)
        text = await other.evaluate("document.getElementById('view-problem').innerText")
        assert "no longer valid" in text
        assert "petcamctl pair" in text
        assert await other.evaluate("location.hash") == ""
        assert [p.name for p in daemon.controller.peers()] == ["Test phone"]
        assert_clean(page)
        assert_clean(other)


@pytest.mark.timeout(90)
async def test_resumes_after_a_daemon_restart_and_stops_when_revoked(
    tmp_path: Path, bus_address: str
) -> None:
    async with (
        running(tmp_path, bus_address) as daemon,
        Chromium.launch(tmp_path, hosts=[HOST]) as browser,
    ):
        page = await browser.new_page(init_scripts=INIT_SCRIPTS)
        await pair(page, daemon.pairing_url())
        await wait_frames(page, 30, 30)
        (peer,) = daemon.controller.peers()

        # Same state directory, same port: the page finds the camera again by itself.
        restarted = time.monotonic()
        await daemon.stop()
        await page.wait_for("document.querySelector('main').dataset.problem === 'offline'", 9)
        offline = await page.evaluate("document.getElementById('overlay').innerText")
        assert f"{CAMERA_NAME} is not reachable" in offline
        assert await page.evaluate("document.querySelector('main').dataset.state") == "reconnecting"
        before = await frames(page)
        stopped_s = time.monotonic() - restarted
        await daemon.start()
        await page.wait_for(
            f"document.querySelector('main').dataset.state === 'live' && window.__frames >= {before + 15}",
            10 - (time.monotonic() - restarted),
        )
        resumed_s = time.monotonic() - restarted
        print(f"offline shown after {stopped_s * 1000:.0f} ms; video again after {resumed_s * 1000:.0f} ms")
        assert resumed_s < 10

        # Revoked while watching: the camera says so (authenticated), the page stops and says why.
        await asyncio.to_thread(daemon.controller.revoke_peer, peer.peer_id)
        await page.wait_for("document.querySelector('main').dataset.problem === 'revoked'", 10)
        assert await page.evaluate("document.querySelector('main').dataset.view") == "problem"
        text = await page.evaluate("document.getElementById('view-problem').innerText")
        assert "revoked" in text
        assert "new pairing code" in text
        assert await wait_for(lambda: daemon.live_sessions() == 0, 5)
        await check_layout(page, "problem", "error")

        # After a reload the camera refuses the session hello: not paired (any more).
        await page.reload()
        await page.wait_for("document.querySelector('main').dataset.problem === 'not-paired'", 20)
        text = await page.evaluate("document.getElementById('view-problem').innerText")
        assert "does not know this browser" in text
        assert "keeps its pairing" in text  # an ERROR frame is unverified: nothing is deleted
        stored = await page.evaluate(
            "new Promise((resolve) => { const r = indexedDB.open('petcam-viewer'); r.onsuccess = () =>"
            " { const q = r.result.transaction('devices').objectStore('devices').count();"
            " q.onsuccess = () => resolve(q.result); }; })",
            await_promise=True,
        )
        assert stored == 1
        assert_clean(page)


def spki_hash(certificate: Path) -> str:
    """What --ignore-certificate-errors-spki-list takes: base64 SHA-256 of the public key info."""
    public_key = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@contextlib.asynccontextmanager
async def https_relay(directory: Path) -> AsyncIterator[tuple[str, Path]]:
    """A real petcam-relay process serving the viewer over HTTPS with its own certificate for
    127.0.0.1; yields its origin and the certificate."""
    cert, key = make_certificate(directory, "relay")
    port = free_port()
    origin = f"https://127.0.0.1:{port}"
    relay = RelayProcess(directory / "relay", port, origin)
    plain = relay.config.read_text()
    assert "[logging]" in plain
    served = f'static_dir = "{viewer_web_dir()}"\n[tls]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
    relay.config.write_text(plain.replace("[logging]", served + "[logging]"))
    await relay.start()
    try:
        yield origin, cert
    finally:
        await relay.stop()


@pytest.mark.timeout(90)
async def test_pair_and_watch_through_the_relay_over_https(tmp_path: Path, bus_address: str) -> None:
    async with https_relay(tmp_path) as (origin, cert):
        trusting = ssl.create_default_context(cafile=str(cert))
        relay_url = origin.replace("https:", "wss:") + "/"
        async with (
            running(tmp_path, bus_address, relay_url=relay_url, relay_ssl=trusting) as daemon,
            Chromium.launch(tmp_path, trusted_spki=[spki_hash(cert)]) as browser,
        ):
            assert daemon.daemon is not None
            assert daemon.daemon.modes is not None
            assert daemon.daemon.modes.relay is not None
            await daemon.daemon.modes.relay.wait_registered(15)
            url = daemon.controller.start_pairing().url
            assert url.startswith(f"{origin}/#")  # internet mode: the QR code opens the relay's page

            page = await browser.new_page(init_scripts=INIT_SCRIPTS)
            await pair(page, url)
            await wait_frames(page, 90, 30)
            # A secure context this time (https), still with no WebCrypto: the same code path.
            context = await page.evaluate("({secure: isSecureContext, subtle: typeof crypto.subtle})")
            assert context == {"secure": True, "subtle": "undefined"}
            assert await page.evaluate("location.href") == f"{origin}/"
            assert [p.name for p in daemon.controller.peers()] == ["Test phone"]
            stats = await page.wait_for(
                "document.getElementById('stat-path').textContent !== '\u2013' &&"
                " ({path: document.getElementById('stat-path').textContent,"
                "   signaling: document.getElementById('stat-signaling').textContent})",
                10,
            )
            # Signaling went through the relay; the media still flows directly (both ends are here).
            assert stats == {"path": "LAN direct", "signaling": "via relay"}

            await page.reload()
            await wait_frames(page, 30, 30)
            assert await page.evaluate("document.getElementById('stat-signaling').textContent") == "via relay"
            assert [p.name for p in daemon.controller.peers()] == ["Test phone"]
            assert_clean(page)
