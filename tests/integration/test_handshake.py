"""Browser sessions through Clerk's handshake, end to end: a browser (aiohttp with a cookie
jar, following redirects itself) against the gateway and the Clerk stand-in's frontend
API, which lives on `localhost` while the app is on `127.0.0.1`, so each keeps its own
cookies as Clerk's frontend API and an app do on their own domains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.demo import Hop, follow, free_port
from gateway.devclerk import DevClerk, SigningKey, new_rsa_key
from gateway.server import start
from gateway.settings import Address
from tests.integration.conftest import LOOPBACK, Upstream, policy_text

NAVIGATION = {"Accept": "text/html", "Sec-Fetch-Dest": "document"}
FETCH = {"Accept": "application/json", "Sec-Fetch-Dest": "empty"}


@dataclass
class Browser:
    gateway: Gateway
    clerk: DevClerk
    upstream: Upstream
    base: str  # the app, through the gateway
    frontend: str  # the stand-in's frontend API, on its own host name
    http: aiohttp.ClientSession  # the browser: one cookie jar for both hosts
    policy: Path

    async def visit(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[list[Hop], str]:
        return await follow(self.http, "GET", self.base + path, headers or NAVIGATION, limit=20)

    async def sign_in(self, user: str, path: str = "/dashboard") -> tuple[list[Hop], str]:
        form = {"user": user, "redirect_url": self.base + path}
        return await follow(self.http, "POST", f"{self.frontend}/sign-in", NAVIGATION, form)

    async def once(
        self, method: str, path: str, headers: dict[str, str], **kw: Any
    ) -> aiohttp.ClientResponse:
        """One request, redirects not followed."""
        resp = await self.http.request(
            method, self.base + path, headers=headers, allow_redirects=False, **kw
        )
        await resp.read()
        return resp

    def cookie(self, name: str) -> str | None:
        for cookie in self.http.cookie_jar:
            if cookie.key == name and cookie["domain"] in ("", LOOPBACK):
                return cookie.value
        return None

    def set_cookie(self, name: str, value: str) -> None:
        self.http.cookie_jar.update_cookies({name: value}, aiohttp.client.URL(self.base))

    def metric(self, result: str) -> int:
        return self.gateway.metrics.handshakes.get(result, 0)


@pytest.fixture
def policy_edit() -> Callable[[str, str], str]:
    return lambda text, frontend: text


@pytest.fixture
async def browser(
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    tmp_path: Path,
    policy_edit: Callable[[str, str], str],
) -> AsyncIterator[Browser]:
    state, server = upstream
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    frontend = f"http://localhost:{clerk_server.port}"
    devclerk.frontend_url = frontend
    text = policy_text(devclerk, clerk_server, str(server.make_url("")).rstrip("/"))
    off = "  handshake: false  # on in test_handshake.py; here a cookie is a plain token\n"
    assert off in text
    text = text.replace(off, f"  proxy_url: {frontend}\n").replace(
        f"authorized_parties: [{devclerk.origin}]", f"authorized_parties: [{base}]"
    )
    text = text.replace("routes:\n", f"sign_in_url: {frontend}/sign-in\nroutes:\n", 1)
    text = policy_edit(text, frontend)
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    gateway = Gateway(str(path), env={})
    listeners = await start(gateway, Address(LOOPBACK, port), Address(LOOPBACK, 0))
    assert gateway.keys is not None
    assert await gateway.keys.wait_ready(5)
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for IP hosts, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        yield Browser(gateway, devclerk, state, base, frontend, http, path)
    await listeners.close()


def route(hops: list[Hop]) -> list[str]:
    """Each hop as `status host path`, for readable assertions."""
    out = []
    for hop in hops:
        parts = urlsplit(hop.url)
        out.append(f"{hop.status} {parts.hostname} {parts.path}")
    return out


def upstream_cookie(entry: dict[str, Any]) -> str:
    return next((v for k, v in entry["headers"] if k.lower() == "cookie"), "")


# ---- the first visit and sign-in ------------------------------------------------------------


async def test_a_first_visit_is_sent_through_the_handshake_with_clerks_parameters(
    browser: Browser,
) -> None:
    r = await browser.once("GET", "/dashboard?tab=1", NAVIGATION)
    assert r.status == 307
    location = urlsplit(r.headers["Location"])
    assert f"{location.scheme}://{location.netloc}" == browser.frontend
    assert location.path == "/v1/client/handshake"
    assert parse_qsl(location.query) == [
        ("redirect_url", f"{browser.base}/dashboard?tab=1"),
        ("__clerk_api_version", "2026-05-12"),
        ("suffixed_cookies", "false"),
        ("__clerk_hs_reason", "dev-browser-missing"),
        ("format", "nonce"),
    ]
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["x-clerk-auth-status"] == "handshake"
    assert r.headers["x-clerk-auth-reason"] == "dev-browser-missing"
    assert r.headers.getall("Set-Cookie") == [
        "__clerk_redirect_count=1; SameSite=Lax; HttpOnly; Max-Age=2"
    ]
    assert browser.upstream.requests == []
    assert browser.metric("started") == 1


async def test_signed_out_the_browser_ends_on_the_sign_in_page_with_its_way_back(
    browser: Browser,
) -> None:
    hops, page = await browser.visit("/dashboard")
    assert route(hops) == [
        "307 127.0.0.1 /dashboard",  # handshake: dev-browser-missing
        "307 localhost /v1/client/handshake",  # back with a nonce
        "307 127.0.0.1 /dashboard",  # the nonce resolved: dev browser set, signed out
        "307 127.0.0.1 /dashboard",  # signed out: to sign-in
        "200 localhost /sign-in",
    ]
    assert f'value="{browser.base}/dashboard"' in page  # the sign-in form's redirect_url
    assert browser.cookie("__client_uat") == "0"
    assert browser.cookie("__clerk_db_jwt") is not None
    assert browser.upstream.requests == []
    assert browser.metric("resolved") == 1


async def test_after_sign_in_the_upstream_sees_the_user_and_nothing_of_the_handshake(
    browser: Browser,
) -> None:
    await browser.visit("/dashboard")
    hops, _ = await browser.sign_in("alice", "/dashboard?tab=1")
    assert route(hops) == [
        "303 localhost /sign-in",
        "307 localhost /v1/client/handshake",
        "307 127.0.0.1 /dashboard",  # the nonce resolved: Clerk's cookies set
        "200 127.0.0.1 /dashboard",
    ]
    seen = browser.upstream.last
    headers = dict(seen["headers"])
    assert headers["X-Clerk-User-Id"] == "user_2alice"
    assert seen["raw_path"] == "/dashboard?tab=1"  # no handshake parameter left
    cookie = upstream_cookie(seen)
    assert "__session=" in cookie
    assert "__clerk_redirect_count" not in cookie
    assert "__clerk_handshake" not in cookie
    assert len(browser.upstream.requests) == 1  # the handshake's legs never reached it


async def test_the_session_outlives_its_60_s_token(browser: Browser) -> None:
    await browser.visit("/")
    await browser.sign_in("alice")
    first = browser.cookie("__session")
    assert first is not None
    # the browser's token has expired (iat after the sign-in, exp in the past)
    client_uat = int(browser.cookie("__client_uat") or 0)
    expired = browser.clerk.mint(
        "user_2alice", now=client_uat, lifetime_s=-30, claims={"azp": browser.base}
    )
    browser.set_cookie("__session", expired)
    # an API call does not redirect: 401 with Clerk's reason, the page will refresh
    r = await browser.once("GET", "/api/protected/me", FETCH)
    assert r.status == 401
    assert (await r.json())["reason"] == "token-expired"
    assert r.headers["x-clerk-auth-status"] == "signed-out"
    assert r.headers["x-clerk-auth-reason"] == (
        "session-token-expired-refresh-non-eligible-no-refresh-cookie"
    )
    # the next page view is refreshed, with no sign-in page on the way
    hops, _ = await browser.visit("/dashboard")
    assert route(hops) == [
        "307 127.0.0.1 /dashboard",
        "307 localhost /v1/client/handshake",
        "307 127.0.0.1 /dashboard",
        "200 127.0.0.1 /dashboard",
    ]
    query = dict(parse_qsl(urlsplit(browser.clerk.handshake_requests[-1]["redirect_url"]).query))
    assert query == {}
    assert browser.clerk.handshake_requests[-1]["__clerk_hs_reason"] == (
        "session-token-expired-refresh-non-eligible-no-refresh-cookie"
    )
    assert browser.clerk.handshake_requests[-1]["__session"] == expired
    assert browser.cookie("__session") not in (None, first, expired)
    assert dict(browser.upstream.last["headers"])["X-Clerk-User-Id"] == "user_2alice"


async def test_sign_out_in_another_tab_reaches_the_next_navigation(browser: Browser) -> None:
    await browser.visit("/")
    await browser.sign_in("alice")
    hops, _ = await follow(
        browser.http,
        "GET",
        f"{browser.frontend}/sign-out?redirect_url={browser.base}/",
        NAVIGATION,
    )
    assert route(hops)[-1] == "200 127.0.0.1 /"
    assert browser.cookie("__client_uat") == "0"
    r = await browser.once("GET", "/dashboard", NAVIGATION)
    assert r.status == 307
    assert r.headers["Location"].startswith(f"{browser.frontend}/sign-in?redirect_url=")
    assert r.headers["x-clerk-auth-reason"] == "session-token-and-uat-missing"


# ---- what never handshakes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", FETCH),
        ("GET", {"Accept": "*/*"}),
        ("POST", {"Accept": "text/html", "Sec-Fetch-Dest": "document"}),  # a form post
    ],
)
async def test_api_requests_get_401_with_clerks_reason_never_a_redirect(
    browser: Browser, method: str, headers: dict[str, str]
) -> None:
    browser.set_cookie("__client_uat", "1700000000")
    browser.set_cookie("__clerk_db_jwt", "dvb_test")
    r = await browser.once(method, "/dashboard", headers)
    assert r.status == 401
    assert "Location" not in r.headers
    assert (await r.json()) == {"error": "unauthorized", "reason": "session-token-missing"}
    assert r.headers["x-clerk-auth-reason"] == "client-uat-but-no-session-token"
    assert browser.metric("started") == 0


async def test_webhook_and_deny_routes_never_handshake(browser: Browser) -> None:
    r = await browser.once("GET", "/internal/x", NAVIGATION)
    assert r.status == 403
    r = await browser.once("POST", "/api/webhooks/clerk", NAVIGATION, data=b"{}")
    assert r.status == 400
    assert browser.metric("started") == 0


async def test_a_header_token_never_takes_the_cookie_path(browser: Browser) -> None:
    token = browser.clerk.mint("user_2alice", claims={"azp": browser.base})
    browser.set_cookie("__client_uat", "1700000000")  # would handshake on the cookie path
    r = await browser.once("GET", "/dashboard", {**NAVIGATION, "Authorization": f"Bearer {token}"})
    assert r.status == 200
    assert browser.metric("started") == 0


# ---- loops and failures ---------------------------------------------------------------------


async def test_a_handshake_that_never_yields_a_session_stops_after_three(browser: Browser) -> None:
    await browser.visit("/")
    await browser.sign_in("alice")
    # Clerk's session was renewed later than any token it mints (a clock step, or keys of
    # another instance): every token is older than __client_uat, every visit handshakes
    for client in browser.clerk.clients.values():
        client.client_uat = int(time.time()) + 3600
    # (and the counter of the sign-in's own handshake, which lives 2 s, is gone)
    browser.http.cookie_jar.clear(lambda c: c.key in ("__session", "__clerk_redirect_count"))
    hops, page = await browser.visit("/dashboard")
    statuses = route(hops)
    assert statuses.count("307 localhost /v1/client/handshake") == 3
    assert statuses[-1] == "200 localhost /sign-in"  # signed out, never a fourth round
    assert browser.metric("loop-stopped") == 1
    assert "Sign in" in page


async def test_a_nonce_that_cannot_be_resolved_goes_on_by_the_cookies(
    browser: Browser,
) -> None:
    """Clerk's SDK logs a failed resolution and goes on with the cookie path: here a
    browser without a session is started on a handshake (dev instance: no dev-browser
    token), with the handshake's parameters gone from the URL it will come back to."""
    browser.clerk.handshake_payload_status = 500
    nonce = "nonce-that-fails"
    r = await browser.once("GET", f"/dashboard?__clerk_handshake_nonce={nonce}&x=1", NAVIGATION)
    assert r.status == 307
    assert r.headers["Location"].startswith(f"{browser.frontend}/v1/client/handshake?")
    back = dict(parse_qsl(urlsplit(r.headers["Location"]).query))["redirect_url"]
    assert back == f"{browser.base}/dashboard?x=1"
    assert r.headers["x-clerk-auth-reason"] == "dev-browser-missing"
    assert browser.metric("failed") == 1
    assert browser.upstream.requests == []
    # the same nonce again is not sent to Clerk again
    hits = browser.clerk.handshake_payload_hits
    await browser.once("GET", f"/dashboard?__clerk_handshake_nonce={nonce}", NAVIGATION)
    assert browser.clerk.handshake_payload_hits == hits
    # and a nonce that cannot be one is never sent at all
    await browser.once("GET", "/dashboard?__clerk_handshake_nonce=a%20b", NAVIGATION)
    assert browser.clerk.handshake_payload_hits == hits


async def test_a_nonce_is_resolved_once_by_clerk_and_not_replayable_here(
    browser: Browser,
) -> None:
    client = browser.clerk.sign_in("alice")
    directives = browser.clerk.handshake_directives(client, origin=browser.base)
    nonce = browser.clerk.issue_nonce(directives)
    first = await browser.once("GET", f"/dashboard?__clerk_handshake_nonce={nonce}", NAVIGATION)
    assert first.status == 307
    assert first.headers["Location"] == f"{browser.base}/dashboard"
    assert any(c.startswith("__session=") for c in first.headers.getall("Set-Cookie"))
    again = await browser.once("GET", f"/dashboard?__clerk_handshake_nonce={nonce}", NAVIGATION)
    assert not any(c.startswith("__session=ey") for c in again.headers.getall("Set-Cookie", []))
    assert browser.metric("failed") == 1


async def test_concurrent_requests_with_one_nonce_ask_clerk_once(browser: Browser) -> None:
    browser.clerk.handshake_payload_delay_s = 0.3
    client = browser.clerk.sign_in("alice")
    nonce = browser.clerk.issue_nonce(browser.clerk.handshake_directives(client))
    before = browser.clerk.handshake_payload_hits
    results = await asyncio.gather(
        *(browser.once("GET", f"/?__clerk_handshake_nonce={nonce}", NAVIGATION) for _ in range(5))
    )
    assert [r.status for r in results] == [307] * 5
    assert browser.clerk.handshake_payload_hits - before == 1


async def test_a_handshake_jwt_is_verified_with_the_instances_keys(browser: Browser) -> None:
    client = browser.clerk.sign_in("alice")
    directives = browser.clerk.handshake_directives(client, origin=browser.base)
    good = browser.clerk.handshake_token(directives)
    r = await browser.once("GET", f"/dashboard?__clerk_handshake={good}", NAVIGATION)
    assert r.status == 307
    assert r.headers["Location"] == f"{browser.base}/dashboard"
    assert browser.metric("resolved") == 1
    # signed with a key that is not the instance's: nothing is set
    forged = browser.clerk.handshake_token(
        directives, key=SigningKey(browser.clerk.signer.kid, new_rsa_key())
    )
    r = await browser.once("GET", f"/?__clerk_handshake={forged}", NAVIGATION)
    assert not any("__session=ey" in c for c in r.headers.getall("Set-Cookie", []))
    assert browser.metric("failed") == 1


async def test_a_payload_sets_only_clerks_cookies(browser: Browser) -> None:
    nonce = browser.clerk.issue_nonce(
        ["__client_uat=0; Path=/", "app_session=attacker; Path=/", "__session=; Max-Age=0"]
    )
    r = await browser.once("GET", f"/?__clerk_handshake_nonce={nonce}", NAVIGATION)
    assert r.headers.getall("Set-Cookie") == ["__client_uat=0; Path=/", "__session=; Max-Age=0"]


async def test_the_redirect_url_ignores_forwarded_host_from_untrusted_clients(
    browser: Browser,
) -> None:
    headers = {**NAVIGATION, "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
    r = await browser.once("GET", "/dashboard", headers)
    back = dict(parse_qsl(urlsplit(r.headers["Location"]).query))["redirect_url"]
    assert back == f"{browser.base}/dashboard"


# ---- cookie sessions and CSRF ---------------------------------------------------------------


async def signed_in(browser: Browser) -> None:
    await browser.visit("/")
    await browser.sign_in("alice")
    assert browser.cookie("__session") is not None


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "same-site"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({}, 200),  # no Origin: not a browser
        ({"Origin": "SELF"}, 200),
    ],
)
async def test_cookie_sessions_refuse_cross_site_state_changes(
    browser: Browser, headers: dict[str, str], status: int
) -> None:
    await signed_in(browser)
    if headers.get("Origin") == "SELF":
        headers = {"Origin": browser.base}
    r = await browser.once("POST", "/dashboard", {**FETCH, **headers}, data=b"x")
    assert r.status == status
    if status == 403:
        assert (await r.json()) == {"error": "forbidden", "reason": "csrf-origin-mismatch"}
    else:
        assert dict(browser.upstream.last["headers"])["X-Clerk-User-Id"] == "user_2alice"


async def test_a_header_token_is_no_csrf_risk(browser: Browser) -> None:
    await signed_in(browser)
    token = browser.clerk.mint("user_2alice", claims={"azp": browser.base})
    headers = {**FETCH, "Sec-Fetch-Site": "cross-site", "Authorization": f"Bearer {token}"}
    r = await browser.once("POST", "/dashboard", headers, data=b"x")
    assert r.status == 200


async def test_a_route_may_turn_the_check_off(browser: Browser) -> None:
    text = browser.policy.read_text().replace(
        "  - {path: /pending-ok/**",
        "  - {path: /callback, access: protected, csrf: false}\n  - {path: /pending-ok/**",
    )
    browser.policy.write_text(text)
    assert await browser.gateway.reload()
    await signed_in(browser)
    cross = {**FETCH, "Sec-Fetch-Site": "cross-site"}
    r = await browser.once("POST", "/callback", cross, data=b"x")
    assert r.status == 200
    r = await browser.once("POST", "/dashboard", cross, data=b"x")
    assert r.status == 403
