"""A real headless Chromium (Debian's `chromium` package) driven over the DevTools protocol.

No selenium or playwright: one aiohttp WebSocket to the browser speaking CDP in "flattened" mode
(every page is a session id on that one socket). The browser runs in its own process group so a
fixture can kill it and every helper process it started, whatever state it is in.

Flags that matter for the viewer tests:
- ``--allow-loopback-in-peer-connection`` and ``WebRtcHideLocalIpsWithMdns`` off: WebRTC may use
  loopback and puts plain addresses in its candidates, never mDNS names (resolving those would
  need multicast). A page without camera permission still gets only the address of the default
  route from Chrome, so the web viewer tests give it a network namespace of its own.
- ``--host-resolver-rules``: made-up host names map to 127.0.0.1 and every other name fails to
  resolve, so the browser reaches nothing but loopback. A page on such a name is not a secure
  context (only https and loopback names are), which is what a phone on a LAN origin sees.
- background services (updates, sync, safe browsing, metrics) off: no traffic beyond the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Chromium", "ChromiumError", "Page", "chromium_binary"]

START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0

_DISABLED_FEATURES = (
    "WebRtcHideLocalIpsWithMdns",
    "Translate",
    "OptimizationHints",
    "MediaRouter",
    "DialMediaRouteProvider",
    "AutofillServerCommunication",
    "CertificateTransparencyComponentUpdater",
    "InterestFeedContentSuggestions",
    "PrivacySandboxSettings4",
)


class ChromiumError(AssertionError):
    """The browser failed, or a page did something a test did not expect."""


def chromium_binary() -> str:
    """Debian's chromium (scripts/ensure-system-deps installs it for `make test`)."""
    path = shutil.which("chromium")
    if path is None:
        raise ChromiumError("chromium is not installed: `make test-venv` installs the Debian package")
    return path


@dataclass
class Page:
    """One tab, attached as a CDP session. Console output and uncaught errors are collected."""

    browser: Chromium
    session_id: str
    target_id: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def goto(self, url: str, timeout_s: float = 30.0) -> None:
        """Navigates and waits for the load event of the new document."""
        loaded = self.browser.expect_event("Page.loadEventFired", self.session_id)
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise ChromiumError(f"navigation to {url} failed: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout_s)

    async def reload(self, timeout_s: float = 30.0) -> None:
        loaded = self.browser.expect_event("Page.loadEventFired", self.session_id)
        await self.send("Page.reload", ignoreCache=True)
        await asyncio.wait_for(loaded, timeout_s)

    async def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable values only)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise ChromiumError(f"page script failed: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout_s: float, *, interval_s: float = 0.1) -> Any:
        """Polls until ``expression`` is truthy in the page; returns its value. Survives reloads."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while True:
            with contextlib.suppress(ChromiumError):  # a navigation in progress has no context
                last = await self.evaluate(expression)
                if last:
                    return last
            if time.monotonic() >= deadline:
                raise ChromiumError(
                    f"timed out after {timeout_s:g} s waiting for {expression!r} (last value {last!r});"
                    f" page state: {await self.describe()}"
                )
            await asyncio.sleep(interval_s)

    async def describe(self) -> str:
        """What the viewer page shows, for failure messages."""
        try:
            return (
                str(
                    await self.evaluate(
                        "JSON.stringify({url: location.href,"
                        " data: {...document.querySelector('main')?.dataset},"
                        " text: document.body?.innerText?.slice(0, 600)})"
                    )
                )
                + f"; console: {self.console[-15:]}; errors: {self.errors[-5:]}"
            )
        except ChromiumError as exc:
            return f"(page unavailable: {exc})"

    async def click(self, selector: str) -> None:
        """Clicks like a person would: at the element's centre, through the input pipeline."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if not box:
            raise ChromiumError(f"nothing matches {selector!r}")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def set_viewport(self, width: int, height: int, *, mobile: bool, scale: float = 1.0) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=scale,
            mobile=mobile,
        )

    async def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        result = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        with contextlib.suppress(ChromiumError, ConnectionError, asyncio.TimeoutError):
            await self.browser.send("Target.closeTarget", {"targetId": self.target_id})


class Chromium:
    """A headless Chromium process and its DevTools WebSocket. Use :meth:`launch`."""

    def __init__(self, proc: subprocess.Popen[bytes], ws: aiohttp.ClientWebSocketResponse, log: Path) -> None:
        self.proc = proc
        self.log = log
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(
        cls,
        directory: Path,
        *,
        hosts: Sequence[str] = (),
        trusted_spki: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> AsyncIterator[Chromium]:
        """Starts the browser with its profile in ``directory``; ``hosts`` resolve to 127.0.0.1.

        ``trusted_spki`` are base64 SHA-256 hashes of public keys whose certificates the browser
        accepts without a CA (a test relay's own certificate); the page stays a secure context.
        """
        profile = directory / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        # Named hosts go to 127.0.0.1, every other name fails; IP literals must be excluded by name.
        rules = [f"MAP {host} 127.0.0.1" for host in hosts]
        rules += ["MAP * ~NOTFOUND", "EXCLUDE localhost", "EXCLUDE 127.0.0.1"]
        args = [
            chromium_binary(),
            "--headless",
            "--no-sandbox",  # the tests run as root
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-breakpad",
            "--no-pings",
            "--metrics-recording-only",
            "--safebrowsing-disable-auto-update",
            "--password-store=basic",
            "--use-mock-keychain",
            "--mute-audio",
            "--allow-loopback-in-peer-connection",
            "--disable-features=" + ",".join(_DISABLED_FEATURES),
            "--host-resolver-rules=" + ", ".join(rules),
            *([f"--ignore-certificate-errors-spki-list={','.join(trusted_spki)}"] if trusted_spki else []),
            *extra_args,
            "about:blank",
        ]
        log = directory / "chromium.log"
        proc = _start(args, log, home=directory)
        browser: Chromium | None = None
        session: aiohttp.ClientSession | None = None
        try:
            url = await _devtools_url(profile / "DevToolsActivePort", proc, log)
            session = aiohttp.ClientSession()
            ws = await session.ws_connect(url, max_msg_size=0, autoping=True)
            browser = cls(proc, ws, log)
            yield browser
        finally:
            if browser is not None:
                await browser._shutdown()
            if session is not None:
                await session.close()
            _kill_group(proc)

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close", {}), 3)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.proc.wait, 3)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._ws.close()

    async def send(
        self, method: str, params: Mapping[str, Any] | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": dict(params or {})}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        try:
            await self._ws.send_str(json.dumps(message))
            return await asyncio.wait_for(future, COMMAND_TIMEOUT_S)
        finally:
            self._pending.pop(message["id"], None)

    def expect_event(self, method: str, session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``method`` event (of that session); register before causing it."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, future))
        return future

    async def new_page(
        self,
        *,
        isolated: bool = False,
        init_scripts: Sequence[str] = (),
        width: int = 390,
        height: int = 844,
        mobile: bool = True,
    ) -> Page:
        """A new tab; ``isolated`` puts it in a fresh browser context (its own storage, like another
        phone); ``init_scripts`` run in every document before any of the page's own scripts."""
        params: dict[str, Any] = {"url": "about:blank"}
        if isolated:
            context = await self.send("Target.createBrowserContext", {"disposeOnDetach": True})
            params["browserContextId"] = context["browserContextId"]
        target = await self.send("Target.createTarget", params)
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"], target["targetId"])
        self._pages[page.session_id] = page
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        for script in init_scripts:
            await page.send("Page.addScriptToEvaluateOnNewDocument", source=script)
        await page.set_viewport(width, height, mobile=mobile)
        return page

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.get(data["id"])
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(ChromiumError(f"CDP error: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            self._event(data.get("method", ""), data.get("params", {}), data.get("sessionId"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChromiumError("the browser closed its DevTools connection"))

    def _event(self, method: str, params: dict[str, Any], session_id: str | None) -> None:
        page = self._pages.get(session_id or "")
        if page is not None:
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                page.console.append(f"{params.get('type')}: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                page.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                page.console.append(f"{entry.get('level')} ({entry.get('source')}): {entry.get('text')}")
        remaining = []
        for waited, waited_session, future in self._waiters:
            if waited == method and waited_session in (None, session_id) and not future.done():
                future.set_result(params)
            elif not future.done():
                remaining.append((waited, waited_session, future))
        self._waiters = remaining


def _start(args: list[str], log: Path, *, home: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as log_file:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole by _kill_group
            env={**os.environ, "HOME": str(home)},
        )


def _read_port_file(port_file: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        port, path = port_file.read_text().split("\n")[:2]
        if port.strip() and path.strip():
            return f"ws://127.0.0.1:{int(port)}{path.strip()}"
    return None


async def _devtools_url(port_file: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    """The browser's DevTools WebSocket URL, from the file Chromium writes once it listens."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChromiumError(f"chromium exited with {proc.returncode}: {_tail(log)}")
        url = _read_port_file(port_file)
        if url is not None:
            return url
        await asyncio.sleep(0.05)
    raise ChromiumError(f"chromium did not open its DevTools port within {START_TIMEOUT_S:g} s: {_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the browser's whole process group (renderers, GPU and utility processes), then
    waits until none of them runs any more."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
