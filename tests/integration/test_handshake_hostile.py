# ruff: noqa: F811  (fixtures imported from sibling modules)
"""The browser-session path (handshake on) under hostile input, against a real gateway and
the Clerk stand-in on loopback: cookies and Hosts that must never be a 500, handshake
returns that fail without a loop or a sign-out, made-up nonces that must not spend the
Backend API quota, and what the upstream must never receive.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.clerk.backend import PER_CLIENT_BURST
from tests.integration.test_handshake import (  # noqa: F401  (the `browser` fixture)
    FETCH,
    NAVIGATION,
    Browser,
    browser,
    upstream_cookie,
)


@pytest.fixture
def policy_edit() -> Callable[[str, str], str]:
    # the contract's default header limit (the shared test policy lowers it to 4096)
    return lambda text, frontend: text.replace("max_header_bytes: 4096", "max_header_bytes: 16384")


def unsigned(claims: dict[str, Any]) -> str:
    """A JWT-shaped string nobody signed (all a cookie needs to be read by the cookie rules)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "RS256", "kid": "ins_x", "typ": "JWT"}).encode())
    return f"{header}.{part(json.dumps(claims).encode())}.{part(b'sig')}"


# ---- 500s from cookies and Host ------------------------------------------------------------


@pytest.mark.parametrize("name", ["__clerk_redirect_count", "__client_uat"])
async def test_a_long_digit_cookie_is_no_internal_error(browser: Browser, name: str) -> None:
    # `_integer` calls int() on >4300 digits: ValueError (Python's int max str digits)
    r = await browser.once("GET", "/", {**NAVIGATION, "Cookie": f"{name}=" + "9" * 4400})
    assert r.status != 500


async def test_a_session_cookie_with_a_huge_iat_is_no_internal_error(browser: Browser) -> None:
    # ~600 bytes of cookies a browser stores (and a sibling subdomain can plant with
    # Domain=): `_use_suffixed` -> `_iat` -> float(10**400) raises OverflowError, so every
    # request of that browser, public pages included, is a 500
    clerk = browser.clerk
    token = unsigned({"iss": clerk.issuer, "iat": 10**400})
    cookie = f"__session={token}; __client_uat_{clerk.cookie_suffix}=1"
    for path, headers in (("/", NAVIGATION), ("/public/x", FETCH)):
        r = await browser.once("GET", path, {**headers, "Cookie": cookie})
        assert r.status != 500, path


@pytest.mark.parametrize("host", ["[oops", "a]b"])
async def test_a_bracketed_host_is_no_internal_error_on_a_handshake(
    browser: Browser, host: str
) -> None:
    # handshake_url -> _without -> urlsplit raises ValueError("Invalid IPv6 URL")
    r = await browser.once("GET", "/dashboard", {**NAVIGATION, "Host": host})
    assert r.status != 500


# ---- the return leg: failed resolutions ----------------------------------------------------


async def test_a_stale_nonce_cookie_does_not_sign_out_a_valid_session(browser: Browser) -> None:
    """A failed resolution goes on by the cookies the browser holds, as Clerk's SDK does
    (stale nonce cookies happen: clerk/javascript #9636, #8560): a valid session stays
    signed in."""
    await browser.visit("/")
    await browser.sign_in("alice")
    assert browser.cookie("__session")
    browser.set_cookie("__clerk_handshake_nonce", "already-used")
    r = await browser.once("GET", "/dashboard", NAVIGATION)
    assert r.status == 200, r.headers.get("Location")
    # the forwarded page's response clears the stale cookie, so it is not resolved again
    cleared = r.headers.getall("Set-Cookie", [])
    assert "__clerk_handshake_nonce=; Path=/; Max-Age=0" in cleared
    assert browser.cookie("__clerk_handshake_nonce") is None


async def test_a_failed_resolution_from_a_cookie_is_no_redirect_to_the_same_url(
    browser: Browser,
) -> None:
    """A nonce cookie the gateway's host-only `Path=/` clearing cannot remove (Domain= set by
    a sibling subdomain, another Path) would be sent again on a redirect to the same URL:
    the page is served instead. See test_browser_hostile.py for Chromium."""
    url = "/public/x"
    r = await browser.once("GET", url, {**NAVIGATION, "Cookie": "__clerk_handshake_nonce=x"})
    assert not (r.status == 307 and r.headers["Location"].endswith(url))


async def test_distinct_nonces_do_not_each_call_the_backend_api(browser: Browser) -> None:
    """Made-up nonces must not spend the instance's Backend API quota (1000 req/10 s per
    secret key, shared by every service of the app): a client's budget is 20 at once,
    5 a second after."""
    before = browser.clerk.handshake_payload_hits
    for i in range(50):
        await browser.once("GET", f"/?__clerk_handshake_nonce=made-up-{i}", NAVIGATION)
    assert browser.clerk.handshake_payload_hits - before <= PER_CLIENT_BURST + 5  # + refills


# ---- what the upstream must never see ------------------------------------------------------


async def test_handshake_cookies_never_reach_the_upstream_with_a_header_token(
    browser: Browser,
) -> None:
    token = browser.clerk.mint("user_2alice", claims={"azp": browser.base})
    cookie = "__clerk_handshake_nonce=N; __clerk_handshake=J; __clerk_redirect_count=1; app=1"
    headers = {**FETCH, "Authorization": f"Bearer {token}", "Cookie": cookie}
    r = await browser.once("GET", "/dashboard", headers)
    assert r.status == 200
    assert "__clerk_" not in upstream_cookie(browser.upstream.last)


async def test_handshake_parameters_never_reach_the_upstream_on_api_requests(
    browser: Browser,
) -> None:
    r = await browser.once("GET", "/public/x?__clerk_handshake_nonce=SECRET&a=1", FETCH)
    assert r.status == 200
    assert "__clerk_handshake" not in browser.upstream.last["raw_path"]


async def test_the_upstream_gets_the_other_cookies_byte_for_byte(browser: Browser) -> None:
    """For 2 s after every handshake the browser sends `__clerk_redirect_count`: only that
    pair is cut; quoted values (Django/SimpleCookie `"a\\054b"`) and valueless cookies
    reach the upstream as the browser sent them."""
    cookie = 'msgs="a\\054b"; __clerk_redirect_count=1; flag; x=y'
    r = await browser.once("GET", "/public/x", {**FETCH, "Cookie": cookie})
    assert r.status == 200
    assert upstream_cookie(browser.upstream.last) == 'msgs="a\\054b"; flag; x=y'


async def test_a_cookie_token_without_azp_is_refused_and_said_plainly(
    browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    """With authorized_parties set, a token without `azp` is refused (the contract); since
    Clerk may mint such tokens on navigations, the log says what to do, once a minute."""
    clerk = browser.clerk
    token = clerk.mint("user_2alice", claims={"azp": None})
    cookie = f"__session={token}; __client_uat={int(time.time()) - 5}; __clerk_db_jwt=dvb_1"
    for _ in range(3):
        r = await browser.once("GET", "/dashboard", {**FETCH, "Cookie": cookie})
        assert r.status == 401
        assert (await r.json())["reason"] == "token-invalid-authorized-parties"
    said = [m for m in caplog.messages if "has no azp claim" in m]
    assert len(said) == 1
    assert token not in caplog.text
