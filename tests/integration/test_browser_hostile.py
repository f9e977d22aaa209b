# ruff: noqa: PT018
"""Cookie tossing in headless Chromium: cookies planted on the parent domain by a sibling
subdomain against the gateway on app.example.test (host-resolver rules map *.example.test
to 127.0.0.1). Never a redirect loop, never a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.demo import free_port
from gateway.devclerk import DevClerk
from gateway.server import start
from gateway.settings import Address
from tests.integration.conftest import LOOPBACK, Upstream, policy_text
from tests.integration.test_browser import MISSING, chrome, off_loop

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency")
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"BROWSER TESTS SKIPPED: {MISSING} not found"),
    pytest.mark.timeout(120),
]


@pytest.fixture
def driver() -> Iterator[Any]:
    d = chrome("--host-resolver-rules=MAP *.example.test 127.0.0.1")
    try:
        yield d
    finally:
        d.quit()


@dataclass
class Sites:
    gateway: Gateway
    clerk: DevClerk
    upstream: Upstream
    app: str  # http://app.example.test:<gateway port>
    plant: Callable[[list[str]], str]  # cookies to plant -> the sibling page's URL


@pytest.fixture
async def sites(
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
) -> AsyncIterator[Sites]:
    state, server = upstream
    port = free_port()
    frontend = f"http://localhost:{clerk_server.port}"
    devclerk.frontend_url = frontend
    text = policy_text(devclerk, clerk_server, str(server.make_url("")).rstrip("/"))
    off = "  handshake: false  # on in test_handshake.py; here a cookie is a plain token\n"
    text = text.replace(off, f"  proxy_url: {frontend}\n").replace(
        "routes:\n", f"sign_in_url: {frontend}/sign-in\nroutes:\n", 1
    )
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    gateway = Gateway(str(path), env={})
    listeners = await start(gateway, Address(LOOPBACK, port), Address(LOOPBACK, 0))
    assert gateway.keys is not None and await gateway.keys.wait_ready(5)
    planted: list[str] = []

    async def sibling(request: web.Request) -> web.Response:
        resp = web.Response(text="<p>a sibling subdomain</p>", content_type="text/html")
        for cookie in planted:
            resp.headers.add("Set-Cookie", cookie)
        return resp

    app = web.Application()
    app.router.add_get("/", sibling)
    sibling_server = await aiohttp_server(app)

    def plant(cookies: list[str]) -> str:
        planted[:] = cookies
        return f"http://evil.example.test:{sibling_server.port}/"

    yield Sites(gateway, devclerk, state, f"http://app.example.test:{port}", plant)
    await listeners.close()


async def test_a_planted_nonce_cookie_never_makes_a_redirect_loop(
    sites: Sites, driver: Any
) -> None:
    """docs/browser-sessions.md: "Never a loop." A failed resolution on a public route
    redirects to the same URL, with no counter, and clears the cookie host-only: a
    Domain= cookie survives, so Chromium stops at ERR_TOO_MANY_REDIRECTS (20 rounds).
    Clerk's SDK logs the failure and goes on (no redirect)."""
    sibling = sites.plant(["__clerk_handshake_nonce=planted; Domain=example.test; Path=/"])
    await off_loop(lambda: driver.get(sibling))
    await off_loop(lambda: driver.get(f"{sites.app}/public/x"))
    failed = sites.gateway.metrics.handshakes.get("failed", 0)
    assert failed <= 3, f"{failed} failed resolutions, page: {driver.title!r}"
    assert len(sites.upstream.requests) == 1


async def test_planted_session_cookies_never_make_every_page_a_500(
    sites: Sites, driver: Any
) -> None:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = json.dumps({"iss": sites.clerk.issuer, "iat": 10**400}).encode()
    header = part(b'{"alg":"RS256"}')
    token = f"{header}.{part(claims)}.{part(b'x')}"
    sibling = sites.plant(
        [
            f"__session={token}; Domain=example.test; Path=/",
            f"__client_uat_{sites.clerk.cookie_suffix}=1; Domain=example.test; Path=/",
        ]
    )
    await off_loop(lambda: driver.get(sibling))
    await off_loop(lambda: driver.get(f"{sites.app}/public/x"))
    body = await off_loop(lambda: driver.find_element("tag name", "body").text)
    assert "internal-error" not in body
    assert len(sites.upstream.requests) == 1
