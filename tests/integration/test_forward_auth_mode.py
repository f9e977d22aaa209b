"""Forward-auth mode, driven as an ingress drives it: the gateway decides the request the
proxy's headers describe, with the same policy, and answers instead of forwarding.

One table of requests runs through both modes (proxy and forward-auth) and must get the
same decision: one decision function, two ways to deliver it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.devclerk import DevClerk
from gateway.server import Listeners, start
from gateway.settings import Address
from tests.integration.conftest import LOOPBACK, Upstream, policy_text

BROWSER = {"Accept": "text/html", "Sec-Fetch-Dest": "document"}


@dataclass
class Both:
    proxy: Listeners
    auth: Listeners
    clerk: DevClerk
    upstream: Upstream
    http: aiohttp.ClientSession

    def url(self, listeners: Listeners, path: str) -> str:
        return f"http://{LOOPBACK}:{listeners.public_address.port}{path}"


@pytest.fixture
async def both(
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    tmp_path: Path,
) -> AsyncIterator[Both]:
    state, server = upstream
    text = policy_text(devclerk, clerk_server, str(server.make_url("")).rstrip("/"))
    text = text.replace("trusted_proxies: [10.99.0.0/16]", "trusted_proxies: [127.0.0.1/32]")
    proxy_path = tmp_path / "proxy.yaml"
    proxy_path.write_text(text)
    # forward-auth: the same routes without the webhook route (its body never comes)
    auth_path = tmp_path / "auth.yaml"
    auth_path.write_text(
        text.replace("  - {path: /api/webhooks/clerk, methods: [POST], access: webhook}\n", "")
    )
    proxy = await start(
        Gateway(str(proxy_path), env={}), Address(LOOPBACK, 0), Address(LOOPBACK, 0)
    )
    auth = await start(
        Gateway(str(auth_path), env={}),
        Address(LOOPBACK, 0),
        Address(LOOPBACK, 0),
        mode="forward-auth",
    )
    for listeners in (proxy, auth):
        assert listeners.gateway.keys is not None
        assert await listeners.gateway.keys.wait_ready(5)
    async with aiohttp.ClientSession() as http:
        yield Both(proxy, auth, devclerk, state, http)
    await proxy.close()
    await auth.close()


async def ask(
    both: Both, method: str, path: str, headers: dict[str, str], nginx: bool
) -> aiohttp.ClientResponse:
    """What an ingress sends to the forward-auth endpoint for `method path`."""
    if nginx:
        described = {
            "X-Original-Method": method,
            "X-Original-URL": f"https://app.example.com{path}",
        }
    else:
        described = {
            "X-Forwarded-Method": method,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "app.example.com",
            "X-Forwarded-Uri": path,
        }
    r = await both.http.get(
        both.url(both.auth, "/auth"), headers={**headers, **described}, allow_redirects=False
    )
    await r.read()
    return r


CASES = [
    # (description, method, path, who, browser)
    ("anonymous API request to a protected route", "GET", "/api/x", None, False),
    ("anonymous navigation to a protected route", "GET", "/dashboard", None, True),
    ("a member on an admin route, API", "GET", "/admin/users", "member", False),
    ("a member on an admin route, navigation", "GET", "/admin/users", "member", True),
    ("an admin on an admin route", "GET", "/admin/users", "admin", False),
    ("anonymous on a public route", "GET", "/public/x", None, False),
    ("a member on a public route", "GET", "/public/x", "member", False),
    ("a deny route", "GET", "/internal/x", "admin", False),
    ("a path trick toward the admin area", "GET", "/public/../admin/x", None, False),
    ("an ambiguous path", "GET", "/admin%2fx", None, False),
    ("a folded spelling of the admin area", "GET", "/ADMIN/x", "member", False),
    ("a POST to a protected route", "POST", "/api/x", "member", False),
    ("a missing org permission", "GET", "/reports/q1", "member", False),
    ("a pending session", "GET", "/api/x", "pending", False),
]


def _headers(both: Both, who: str | None, browser: bool) -> dict[str, str]:
    headers = dict(BROWSER) if browser else {}
    if who == "pending":
        headers["Authorization"] = f"Bearer {both.clerk.mint('user_p', claims={'sts': 'pending'})}"
    elif who is not None:
        headers["Authorization"] = f"Bearer {both.clerk.mint('user_' + who, role=who)}"
    return headers


@pytest.mark.parametrize(
    ("description", "method", "path", "who", "browser"), CASES, ids=[c[0] for c in CASES]
)
async def test_both_modes_decide_alike(
    both: Both, description: str, method: str, path: str, who: str | None, browser: bool
) -> None:
    headers = _headers(both, who, browser)
    proxied = await both.http.request(
        method,
        aiohttp.client.URL(both.url(both.proxy, path), encoded=True),
        headers={**headers, "Host": "app.example.com", "X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    await proxied.read()
    answered = await ask(both, method, path, headers, nginx=False)
    assert answered.status == proxied.status, description
    if proxied.status >= 300:
        assert (await answered.json()) == (await proxied.json()), description
        assert answered.headers.get("Location") == proxied.headers.get("Location"), description
        return
    # allowed: the proxy forwarded with identity headers; the check answers them
    forwarded = {k: v for k, v in both.upstream.last["headers"] if k.lower().startswith("x-clerk-")}
    answered_identity = {
        k: v for k, v in answered.headers.items() if k.lower().startswith("x-clerk-")
    }
    assert answered_identity == forwarded, description
    assert await answered.read() == b""


async def test_the_nginx_form_turns_redirects_into_401_and_403(both: Both) -> None:
    r = await ask(both, "GET", "/dashboard?tab=1", BROWSER, nginx=True)
    assert r.status == 401
    assert "Location" not in r.headers
    assert r.headers["X-Clerk-Redirect"] == (
        "/sign-in?redirect_url=https%3A%2F%2Fapp.example.com%2Fdashboard%3Ftab%3D1"
    )
    member = {**BROWSER, "Authorization": f"Bearer {both.clerk.mint('user_m', role='member')}"}
    r = await ask(both, "GET", "/admin/x", member, nginx=True)
    assert (r.status, r.headers["X-Clerk-Redirect"]) == (403, "/unauthorized")
    r = await ask(both, "GET", "/api/x", {}, nginx=True)  # an API request: no redirect at all
    assert r.status == 401
    assert "X-Clerk-Redirect" not in r.headers


async def test_the_traefik_form_passes_the_redirect_on(both: Both) -> None:
    r = await ask(both, "GET", "/dashboard", BROWSER, nginx=False)
    assert r.status == 307
    assert (
        r.headers["Location"] == "/sign-in?redirect_url=https%3A%2F%2Fapp.example.com%2Fdashboard"
    )


async def test_an_untrusted_proxy_is_refused(
    devclerk: DevClerk, clerk_server: TestServer, tmp_path: Path
) -> None:
    path = tmp_path / "auth.yaml"
    text = policy_text(devclerk, clerk_server, "http://127.0.0.1:9")
    path.write_text(
        text.replace("  - {path: /api/webhooks/clerk, methods: [POST], access: webhook}\n", "")
    )
    auth = await start(
        Gateway(str(path), env={}), Address(LOOPBACK, 0), Address(LOOPBACK, 0), mode="forward-auth"
    )
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.get(
                f"http://{LOOPBACK}:{auth.public_address.port}/",
                headers={
                    "X-Forwarded-Method": "GET",
                    "X-Forwarded-Uri": "/public/x",
                    "X-Forwarded-Host": "a",
                },
            )
            assert (r.status, (await r.json())["reason"]) == (400, "proxy-untrusted")
    finally:
        await auth.close()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Forwarded-Method": "GET"},
        {"X-Original-URL": "ftp://x/y", "X-Original-Method": "GET"},
    ],
    ids=["nothing", "no uri", "not http"],
)
async def test_a_check_that_describes_no_request_is_400(
    both: Both, headers: dict[str, str]
) -> None:
    r = await both.http.get(both.url(both.auth, "/"), headers=headers)
    assert (r.status, (await r.json())["reason"]) == (400, "request-malformed")


async def test_identity_headers_are_answered_never_taken_from_the_client(both: Both) -> None:
    token = both.clerk.mint("user_a", role="member")
    r = await ask(
        both,
        "GET",
        "/api/x",
        {
            "Authorization": f"Bearer {token}",
            "X-Clerk-User-Id": "user_2admin",
            "X-Clerk-Role": "admin",
        },
        nginx=False,
    )
    assert r.status == 200
    assert r.headers["X-Clerk-User-Id"] == "user_a"
    assert r.headers["X-Clerk-Role"] == "member"
    anonymous = await ask(both, "GET", "/public/x", {"X-Clerk-User-Id": "user_2admin"}, nginx=False)
    assert anonymous.status == 200
    assert "X-Clerk-User-Id" not in anonymous.headers


async def test_the_access_log_and_metrics_label_checks_like_requests(both: Both) -> None:
    seen: list[dict[str, object]] = []
    both.auth.gateway.access_log.sink = seen.append
    await ask(both, "GET", "/api/x", {}, nginx=True)
    assert seen[-1]["path"] == "/api/x"
    assert (seen[-1]["decision"], seen[-1]["reason"], seen[-1]["status"]) == (
        "deny",
        "session-token-missing",
        401,
    )
    metrics = (
        await (
            await both.http.get(f"http://{LOOPBACK}:{both.auth.admin_address.port}/metrics")
        ).read()
    ).decode()
    assert 'reason="session-token-missing"' in metrics


async def test_answers_carry_the_ingress_request_id_and_log_the_original_host(
    both: Both,
) -> None:
    seen: list[dict[str, object]] = []
    both.auth.gateway.access_log.sink = seen.append
    token = both.clerk.mint("user_1", role="member")
    allowed = await ask(
        both,
        "GET",
        "/public/x",
        {"Authorization": f"Bearer {token}", "X-Request-Id": "ingress-req-1"},
        nginx=True,
    )
    denied = await ask(both, "GET", "/api/x", {"X-Forwarded-For": "203.0.113.9"}, nginx=False)
    assert (allowed.status, allowed.headers["X-Request-Id"]) == (200, "ingress-req-1")
    assert denied.status == 401
    assert [e["request_id"] for e in seen] == ["ingress-req-1", denied.headers["X-Request-Id"]]
    assert [e["host"] for e in seen] == ["app.example.com", "app.example.com"]
    assert seen[1]["client"] == "203.0.113.9"


# ---- Clerk's handshake through an ingress -------------------------------------------------


@pytest.fixture
async def handshaking(
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    tmp_path: Path,
) -> AsyncIterator[Both]:
    """A forward-auth gateway with the handshake on, for the app at https://app.example.com."""
    state, server = upstream
    text = policy_text(devclerk, clerk_server, str(server.make_url("")).rstrip("/"))
    text = (
        text.replace("trusted_proxies: [10.99.0.0/16]", "trusted_proxies: [127.0.0.1/32]")
        .replace("  handshake: false", "  handshake: true")
        .replace(
            f"authorized_parties: [{devclerk.origin}]",
            "authorized_parties: [https://app.example.com]",
        )
        .replace("  - {path: /api/webhooks/clerk, methods: [POST], access: webhook}\n", "")
    )
    path = tmp_path / "auth.yaml"
    path.write_text(text)
    auth = await start(
        Gateway(str(path), env={}), Address(LOOPBACK, 0), Address(LOOPBACK, 0), mode="forward-auth"
    )
    assert auth.gateway.keys is not None
    assert await auth.gateway.keys.wait_ready(5)
    async with aiohttp.ClientSession() as http:
        yield Both(auth, auth, devclerk, state, http)
    await auth.close()


async def test_the_handshake_in_the_nginx_form_carries_every_cookie_numbered(
    handshaking: Both,
) -> None:
    clerk = handshaking.clerk
    r = await ask(handshaking, "GET", "/dashboard", BROWSER, nginx=True)
    assert r.status == 401
    assert r.headers["X-Clerk-Redirect"].startswith(
        "https://clerk.gateway-demo.localhost/v1/client/handshake?redirect_url="
        "https%3A%2F%2Fapp.example.com%2Fdashboard&"
    )
    counter = "__clerk_redirect_count=1; SameSite=Lax; HttpOnly; Max-Age=2"
    assert r.headers.getall("Set-Cookie") == [counter]
    assert r.headers["X-Clerk-Set-Cookie-1"] == counter
    # the return leg: the nonce resolved, Clerk's cookies set, on to the clean URL
    client = clerk.sign_in("alice")
    directives = clerk.handshake_directives(
        client, origin="https://app.example.com", suffixed=True, dev_browser=True
    )
    nonce = clerk.issue_nonce(directives)
    r = await ask(handshaking, "GET", f"/dashboard?__clerk_handshake_nonce={nonce}", BROWSER, True)
    assert r.status == 401
    assert r.headers["X-Clerk-Redirect"] == "https://app.example.com/dashboard"
    assert r.headers.getall("Set-Cookie") == directives
    numbered = [r.headers[f"X-Clerk-Set-Cookie-{n}"] for n in range(1, len(directives) + 1)]
    assert numbered == directives
    assert f"X-Clerk-Set-Cookie-{len(directives) + 1}" not in r.headers


async def test_the_handshake_for_traefik_and_caddy_is_a_plain_307(handshaking: Both) -> None:
    r = await ask(handshaking, "GET", "/dashboard", BROWSER, nginx=False)
    assert r.status == 307
    assert r.headers["Location"].startswith("https://clerk.gateway-demo.localhost/v1/client/")
    assert "X-Clerk-Set-Cookie-1" not in r.headers
    assert "X-Clerk-Redirect" not in r.headers


async def test_a_request_described_both_ways_is_refused(both: Both) -> None:
    """One description came from the client through a proxy that passes headers it does not
    set itself; the gateway never picks one."""
    token = both.clerk.mint("user_member", role="member")
    r = await both.http.get(
        both.url(both.auth, "/auth"),
        headers={
            "Authorization": f"Bearer {token}",
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "app.example.com",
            "X-Forwarded-Uri": "/admin/users",
            "X-Original-Method": "GET",
            "X-Original-URL": "https://app.example.com/public/x",
        },
        allow_redirects=False,
    )
    assert r.status == 400
    assert (await r.json())["reason"] == "request-malformed"


async def test_the_assertion_audience_is_the_host_name_however_the_client_spells_it(
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    tmp_path: Path,
) -> None:
    _, server = upstream
    text = policy_text(devclerk, clerk_server, str(server.make_url("")).rstrip("/"))
    text = text.replace("trusted_proxies: [10.99.0.0/16]", "trusted_proxies: [127.0.0.1/32]")
    text = text.replace("  - {path: /api/webhooks/clerk, methods: [POST], access: webhook}\n", "")
    path = tmp_path / "auth.yaml"
    path.write_text(text + "assertion:\n  issuer: https://gateway.test\n")
    auth = await start(
        Gateway(str(path), env={}), Address(LOOPBACK, 0), Address(LOOPBACK, 0), mode="forward-auth"
    )
    try:
        assert auth.gateway.keys is not None
        assert await auth.gateway.keys.wait_ready(5)
        token = devclerk.mint("user_a", role="member")
        audiences = set()
        async with aiohttp.ClientSession() as http:
            for host in ("app.example.com", "App.Example.COM:8443"):
                headers = {
                    "Authorization": f"Bearer {token}",
                    "X-Forwarded-Method": "GET",
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-Host": host,
                    "X-Forwarded-Uri": "/api/x",
                }
                url = f"http://{LOOPBACK}:{auth.public_address.port}/auth"
                async with http.get(url, headers=headers) as r:
                    assert r.status == 200
                    assertion = r.headers["X-Clerk-Gateway-Assertion"]
                claims = jwt.decode(assertion, options={"verify_signature": False})
                audiences.add(claims["aud"])
        assert audiences == {"app.example.com"}
    finally:
        await auth.close()
