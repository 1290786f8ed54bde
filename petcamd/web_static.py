"""The web viewer's files and the security headers on every response, at the relay's https origin
and at the device's own LAN origin.

Whoever serves the viewer's script could serve one that leaks keys (docs/web-viewer.md, "What each
origin protects"), so both servers serve exactly the files in one directory, read-only, with a
Content-Security-Policy that allows no inline script and no other origin for code, and never let a
cache keep the pairing page.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from petcamd.protocol.relay import websocket_origin

__all__ = [
    "StaticFiles",
    "content_security_policy",
    "header_hook",
    "quiet_malformed_requests",
    "security_headers",
    "viewer_web_dir",
    "websocket_origin",
]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
}


def viewer_web_dir() -> Path:
    """The web viewer shipped inside the package (petcamd/viewer/web), wherever it is installed."""
    return Path(__file__).resolve().parent / "viewer" / "web"


def content_security_policy(connect: Sequence[str] = ()) -> str:
    """Code, styles and everything else from this origin only; connections also to ``connect``.

    ``connect`` names WebSocket origins explicitly: older Safari does not count ws: as 'self'.
    """
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob:",
            "font-src 'self'",
            " ".join(("connect-src 'self'", *dict.fromkeys(connect))),
            "manifest-src 'self'",
            "worker-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def security_headers(connect: Sequence[str] = (), *, https: bool = False) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": content_security_policy(connect),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


def header_hook(
    headers: Mapping[str, str] | Callable[[web.Request], Mapping[str, str]],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare hook adding ``headers`` (fixed, or computed per request) to every
    HTTP response; anything a handler did not mark cacheable is ``no-store``."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        if response.status == 101:  # a WebSocket upgrade carries no document
            return
        for name, value in (headers(request) if callable(headers) else headers).items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")

    return add_headers


class StaticFiles:
    """GET and HEAD for the files under ``root``: no listing, no dot files, no way out of ``root``."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = self._resolve(request.match_info.get("path", ""))
        if path is None:
            raise web.HTTPNotFound(text="not found")
        # The pairing page (and any HTML) must never be kept by a cache; the rest revalidates.
        cache = "no-store" if path.suffix == ".html" else "no-cache"
        content_type = (
            _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        return web.FileResponse(path, headers={"Cache-Control": cache, "Content-Type": content_type})

    def _resolve(self, relative: str) -> Path | None:
        parts = [part for part in relative.split("/") if part]
        if any(part.startswith(".") or "\\" in part or "\0" in part for part in parts):
            return None
        candidate = self._root.joinpath(*parts)
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if resolved != self._root and self._root not in resolved.parents:
            return None
        if resolved.is_dir():
            resolved = resolved / "index.html"
        return resolved if resolved.is_file() else None


def _malformed_request(record: logging.LogRecord) -> bool:
    """False for aiohttp's record of a request that failed to parse (answered 400 already)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, HttpProcessingError)


def quiet_malformed_requests() -> None:
    """Keep aiohttp from logging every unparsable request at ERROR with a traceback.

    Anyone who can reach the port can send them, as fast as TCP allows and before any per-address
    limit applies (those count WebSocket connections), and the message may quote the request's
    bytes: on a device with a small SD card that is a way to flood the journal and bury real
    errors. aiohttp answers 400 and closes either way; exceptions in handlers are still logged.
    Idempotent.
    """
    server_log = logging.getLogger("aiohttp.server")
    if _malformed_request not in server_log.filters:
        server_log.addFilter(_malformed_request)
