"""The web viewer's files at the relay origin: strict headers, no-store pairing page, no escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from yarl import URL

from petcamd.web_static import content_security_policy, websocket_origin
from tests.test_relay_harness import running_relay


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    (root / "icons").mkdir(parents=True)
    (root / "index.html").write_text('<!doctype html><script src="/app.js"></script>')
    (root / "app.js").write_text("console.log('viewer');\n")
    (root / "manifest.webmanifest").write_text('{"name": "petcam"}')
    (root / "icons" / "icon.svg").write_text("<svg/>")
    (root / ".hidden").write_text("secret")
    (tmp_path / "outside.txt").write_text("outside the root")
    (root / "escape.txt").symlink_to(tmp_path / "outside.txt")
    return root


async def test_pairing_page_and_assets_carry_strict_headers(site: Path) -> None:
    async with running_relay(server={"static_dir": str(site)}) as relay:
        async with relay.session.get(relay.url("/")) as response:
            assert response.status == 200
            assert "<script" in await response.text()
            headers = response.headers
            assert headers["Content-Type"] == "text/html; charset=utf-8"
            assert headers["Cache-Control"] == "no-store"
            csp = headers["Content-Security-Policy"]
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "no-referrer"
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["Strict-Transport-Security"].startswith("max-age=")
            assert headers["Cross-Origin-Opener-Policy"] == "same-origin"

        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["connect-src"] == "'self' wss://relay.test"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        # No origin other than the relay's own appears anywhere in the policy.
        sources = {s for value in directives.values() for s in value.split()}
        assert sources <= {"'none'", "'self'", "data:", "blob:", "wss://relay.test"}

        async with relay.session.get(relay.url("/index.html")) as response:
            assert response.headers["Cache-Control"] == "no-store"
        for path, content_type in [
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/manifest.webmanifest", "application/manifest+json"),
            ("/icons/icon.svg", "image/svg+xml"),
        ]:
            async with relay.session.get(relay.url(path)) as response:
                assert response.status == 200, path
                assert response.headers["Content-Type"] == content_type
                assert response.headers["Cache-Control"] == "no-cache"
                assert response.headers["Content-Security-Policy"] == csp
        async with relay.session.head(relay.url("/app.js")) as response:
            assert response.status == 200


@pytest.mark.parametrize(
    "path", ["/.hidden", "/escape.txt", "/../outside.txt", "/%2e%2e/outside.txt", "/missing.js", "/icons/"]
)
async def test_nothing_outside_the_files_is_served(site: Path, path: str) -> None:
    # encoded=True: the client sends the path exactly as written, dots and all.
    async with (
        running_relay(server={"static_dir": str(site)}) as relay,
        relay.session.get(URL(relay.url(path), encoded=True)) as response,
    ):
        assert response.status == 404, path
        assert response.headers["Cache-Control"] == "no-store"
        assert "Content-Security-Policy" in response.headers


async def test_endpoints_keep_precedence_over_static_files(site: Path) -> None:
    (site / "healthz").write_text("shadow")
    async with running_relay(server={"static_dir": str(site)}) as relay:
        async with relay.session.get(relay.url("/healthz")) as response:
            assert await response.json() == {"status": "ok"}
        viewer = await relay.viewer()
        assert not viewer.ws.closed
        async with relay.session.post(relay.url("/app.js")) as response:
            assert response.status == 405


def test_csp_follows_the_public_origin() -> None:
    relay = websocket_origin("https://Relay.Example.org:8443/")
    assert "connect-src 'self' wss://relay.example.org:8443;" in content_security_policy([relay])
    local = websocket_origin("http://127.0.0.1:8080")
    assert "connect-src 'self' ws://127.0.0.1:8080;" in content_security_policy([local])


@pytest.mark.parametrize(
    "relative", ["../outside.txt", "icons/../../outside.txt", "escape.txt", ".hidden", "a\\b"]
)
def test_resolve_refuses_escapes(site: Path, relative: str) -> None:
    from petcamd.web_static import StaticFiles

    files = StaticFiles(site)
    assert files._resolve(relative) is None
    assert files._resolve("icons/icon.svg") == (site / "icons" / "icon.svg").resolve()
    assert files._resolve("") == (site / "index.html").resolve()
