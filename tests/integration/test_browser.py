"""A real browser (Debian's headless Chromium, driven by Selenium through the system
chromedriver) signs in on the Clerk stand-in, uses the app through the gateway past its
session token's lifetime, signs out in another tab, and has a cross-site form POST refused.

The stand-in's frontend API is on `localhost`, the app on `127.0.0.1`: two sites, with
their own cookies, as Clerk's frontend API and an app are on their own domains.
Without /usr/bin/chromium and /usr/bin/chromedriver (apt: chromium chromium-driver) these
tests are skipped, and the skip says so.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.demo import free_port
from gateway.devclerk import DevClerk
from gateway.server import start
from gateway.settings import Address
from tests.integration.conftest import LOOPBACK, Upstream, policy_text

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MISSING = [p for p in (CHROMIUM, DRIVER) if not Path(p).exists()]
LIFETIME_S = 2  # the stand-in's session tokens, instead of Clerk's 60 s

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency")

pytestmark = [
    pytest.mark.skipif(
        bool(MISSING),
        reason=(
            f"BROWSER TESTS SKIPPED: {', '.join(MISSING)} not found; "
            "install with `apt-get install chromium chromium-driver`"
        ),
    ),
    pytest.mark.timeout(120),
]

T = TypeVar("T")


@dataclass
class Site:
    gateway: Gateway
    clerk: DevClerk
    upstream: Upstream
    app: str  # http://127.0.0.1:<gateway>
    frontend: str  # http://localhost:<stand-in>
    evil: str  # another site, with a form that posts to the app


def chrome(*extra_flags: str) -> Any:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={tempfile.mkdtemp(prefix='clerk-gateway-chromium-')}",
        *extra_flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(20)
    return driver


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def site(
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
) -> AsyncIterator[Site]:
    state, server = upstream
    port = free_port()
    app = f"http://{LOOPBACK}:{port}"
    frontend = f"http://localhost:{clerk_server.port}"
    devclerk.frontend_url = frontend
    devclerk.session_lifetime_s = LIFETIME_S
    text = policy_text(devclerk, clerk_server, str(server.make_url("")).rstrip("/"))
    off = "  handshake: false  # on in test_handshake.py; here a cookie is a plain token\n"
    text = (
        text.replace(off, f"  proxy_url: {frontend}\n  clock_skew_ms: 0\n")
        .replace(f"authorized_parties: [{devclerk.origin}]", f"authorized_parties: [{app}]")
        .replace("routes:\n", f"sign_in_url: {frontend}/sign-in\nroutes:\n", 1)
    )
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    gateway = Gateway(str(path), env={})
    listeners = await start(gateway, Address(LOOPBACK, port), Address(LOOPBACK, 0))
    assert gateway.keys is not None
    assert await gateway.keys.wait_ready(5)

    async def evil_page(request: web.Request) -> web.Response:
        form = (
            f'<form id="f" method="post" action="{app}/dashboard">'
            '<input name="title" value="pwned"></form>'
            '<script>document.getElementById("f").submit()</script>'
        )
        return web.Response(text=form, content_type="text/html")

    evil = web.Application()
    evil.router.add_get("/", evil_page)
    evil_server = await aiohttp_server(evil)
    # another site: `localhost` is not 127.0.0.1's site, and it is not the stand-in's port
    yield Site(gateway, devclerk, state, app, frontend, f"http://localhost:{evil_server.port}/")
    await listeners.close()


async def off_loop(call: Callable[[], T]) -> T:
    """Selenium blocks: run it in a thread while the servers keep serving on the loop."""
    return await asyncio.wait_for(asyncio.to_thread(call), 60)


def open_page(driver: Any, url: str) -> tuple[str, str]:
    driver.get(url)
    return driver.current_url, driver.find_element("tag name", "body").text


def sign_in(driver: Any, who: str) -> tuple[str, str]:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element("css selector", f'input[value="{who}"]').click()
    button = driver.find_element("css selector", 'button[type="submit"]')
    button.click()
    # a click does not wait for the navigation it starts: wait (bounded) until the sign-in
    # page is gone and the page it led to has loaded, or a busy machine reads the old URL
    wait = WebDriverWait(driver, 20)
    wait.until(expected_conditions.staleness_of(button))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    return driver.current_url, driver.find_element("tag name", "body").text


def upstream_user(site: Site) -> str | None:
    if not site.upstream.requests:
        return None
    return dict(site.upstream.last["headers"]).get("X-Clerk-User-Id")


async def test_a_browser_stays_signed_in_past_the_token_and_signs_out(
    site: Site, browser: Any
) -> None:
    # signed out: the handshake, then the stand-in's sign-in page
    url, text = await off_loop(lambda: open_page(browser, f"{site.app}/dashboard"))
    assert url.startswith(f"{site.frontend}/sign-in?redirect_url="), url
    assert "Sign in" in text
    assert site.upstream.requests == []

    # sign in as alice: back on the page, signed in
    url, text = await off_loop(lambda: sign_in(browser, "alice"))
    assert url == f"{site.app}/dashboard", url
    assert '"X-Clerk-User-Id", "user_2alice"' in text  # the upstream echoes what it got
    assert upstream_user(site) == "user_2alice"
    session = site.upstream.last

    # past the token's lifetime: the next page view is refreshed through the handshake
    await asyncio.sleep(LIFETIME_S + 1.5)
    handshakes = len(site.clerk.handshake_requests)
    url, text = await off_loop(lambda: open_page(browser, f"{site.app}/dashboard"))
    assert url == f"{site.app}/dashboard", url
    assert '"X-Clerk-User-Id", "user_2alice"' in text  # the upstream echoes what it got
    assert len(site.clerk.handshake_requests) == handshakes + 1
    assert site.clerk.handshake_requests[-1]["__clerk_hs_reason"].startswith(
        "session-token-expired"
    )
    assert upstream_user(site) == "user_2alice"
    assert (
        dict(site.upstream.last["headers"])["X-Clerk-Session-Id"]
        == (dict(session["headers"])["X-Clerk-Session-Id"])
    )

    # sign out in another tab, on the stand-in
    def sign_out_in_another_tab() -> None:
        first = browser.current_window_handle
        browser.switch_to.new_window("tab")
        browser.get(f"{site.frontend}/sign-out")
        browser.close()
        browser.switch_to.window(first)

    await off_loop(sign_out_in_another_tab)
    # still within the token's lifetime, the app's cookies do not know yet; once it
    # expires, the next navigation asks Clerk and is sent to sign-in
    await asyncio.sleep(LIFETIME_S + 1.5)
    seen = len(site.upstream.requests)
    url, _ = await off_loop(lambda: open_page(browser, f"{site.app}/dashboard"))
    assert url.startswith(f"{site.frontend}/sign-in?redirect_url="), url
    assert len(site.upstream.requests) == seen


async def test_a_cross_site_form_post_with_the_session_is_refused(site: Site, browser: Any) -> None:
    await off_loop(lambda: open_page(browser, f"{site.app}/dashboard"))
    await off_loop(lambda: sign_in(browser, "alice"))
    assert upstream_user(site) == "user_2alice"
    session = next(c for c in browser.get_cookies() if c["name"] == "__session")

    # Clerk's cookies are SameSite=Lax, so Chromium leaves them off a cross-site POST; to
    # prove the gateway's own check, the session cookie is made one that a browser does
    # send cross-site (SameSite=None), as an older browser or a looser cookie would
    def loosen() -> None:
        browser.execute_cdp_cmd(
            "Network.setCookie",
            {
                "name": "__session",
                "value": session["value"],
                "url": site.app,
                "path": "/",
                "sameSite": "None",
                "secure": True,
            },
        )

    await off_loop(loosen)
    seen = len(site.upstream.requests)
    await off_loop(lambda: open_page(browser, site.evil))

    def refused() -> str:
        from selenium.common.exceptions import WebDriverException

        text = ""
        for _ in range(50):  # the form submits itself; wait for the answer, 10 s at most
            try:
                text = browser.find_element("tag name", "body").text
            except WebDriverException:  # the page is being replaced by the POST's answer
                text = ""
            if "reason" in text:
                return text
            time.sleep(0.2)
        return text

    text = await off_loop(refused)
    assert "csrf-origin-mismatch" in text, text
    # never forwarded (the browser's own favicon requests aside)
    assert [r for r in site.upstream.requests[seen:] if r["method"] == "POST"] == []
