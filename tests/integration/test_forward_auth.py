"""Forward-auth mode behind real proxies: nginx (auth_request) and Caddy (forward_auth), each
started on loopback from the example file the docs show (examples/forward-auth/).

Two suites, each run through both proxies:

- the self-check: the proxy in front of a stand-in auth server that implements the
  forward-auth contract for a handful of cases. It proves the configuration files alone
  (auth_request / forward_auth wiring, identity headers copied, client-sent ones stripped,
  denials and redirects reaching the client, one description of the request) and runs on
  every branch;
- the real gateway in forward-auth mode, on the shared test policy with 127.0.0.1 trusted.
  These need `gateway.server.start(..., mode="forward-auth")` and are skipped, saying so,
  until the gateway has it.

Every test asserts what the upstream (the conftest echo app) received, or that it received
nothing. A missing nginx or caddy skips its tests with the apt-get line that installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

import gateway.server
from gateway.app import Gateway
from gateway.config import parse_policy
from gateway.devclerk import DevClerk
from gateway.server import Listeners
from gateway.settings import Address
from tests.integration import proxies
from tests.integration.conftest import LOOPBACK, Upstream, policy_text
from tests.integration.proxies import KINDS, RunningProxy, free_port, running_proxy

FORWARD_AUTH_AVAILABLE = "mode" in inspect.signature(gateway.server.start).parameters
needs_forward_auth_mode = pytest.mark.skipif(
    not FORWARD_AUTH_AVAILABLE,
    reason="gateway.server.start() has no `mode` parameter on this branch yet (issue 14, "
    "forward-auth mode): the real-gateway tests behind nginx/Caddy run once it has",
)

BROWSER = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Dest": "document"}
IDENTITY = (
    "X-Clerk-User-Id",
    "X-Clerk-Session-Id",
    "X-Clerk-Role",
    "X-Clerk-Org-Id",
    "X-Clerk-Org-Slug",
    "X-Clerk-Org-Role",
    "X-Clerk-Org-Permissions",
)
# What a client might send to pass for someone else; none of it may reach the upstream.
SPOOFS = {
    "X-Clerk-User-Id": "user_2admin",
    "x-clerk-role": "admin",
    "X-Clerk-Org-Id": "org_evil",
    "X-Clerk-Org-Role": "org:admin",
    "X_Clerk_Org_Permissions": "org:everything",
    "X-Clerk-Webhook-Verified": "true",
}
# ...nor may it describe the original request to the auth server in the proxy's place.
DESCRIPTION_SPOOFS = {
    "X-Original-Method": "GET",
    "X-Original-URI": "/public/x",
    "X-Original-URL": "http://evil.example/public/x",
    "X-Forwarded-Method": "GET",
    "X-Forwarded-Uri": "/public/x",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
}


def clerkish(name: str) -> bool:
    """A header name an upstream could read as an X-Clerk-* header (WSGI folds `_` to `-`)."""
    return name.lower().replace("_", "-").startswith("x-clerk-")


# ---- talking to the proxy ------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def all(self, name: str) -> list[str]:
        return self.headers.getall(name, [])


async def raw_http(
    port: int,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    within: float = 10.0,
) -> Answer:
    """One request with the target sent byte for byte (no client-side path clean-up)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {LOOPBACK}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed.add(name.strip(), value.strip())
    if parsed.get("Transfer-Encoding", "").lower() == "chunked":
        body = dechunk(body)
    elif "Content-Length" in parsed:
        body = body[: int(parsed["Content-Length"])]
    return Answer(int(status_line.split(" ")[1]), CIMultiDictProxy(parsed), body)


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]


@dataclass
class Through:
    """A proxy under test, the upstream behind it and a client in front of it."""

    proxy: RunningProxy
    upstream: Upstream
    http: aiohttp.ClientSession

    @property
    def kind(self) -> str:
        return self.proxy.kind

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.proxy.base + path, headers=sent, data=data, allow_redirects=False
        ) as r:
            return Answer(r.status, r.headers, await r.read())

    async def get(
        self, path: str, token: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Answer:
        return await self.request("GET", path, token, headers)

    async def raw(self, target: str, token: str | None = None, **headers: str) -> Answer:
        sent = list(headers.items())
        if token is not None:
            sent.append(("Authorization", f"Bearer {token}"))
        return await raw_http(self.proxy.port, "GET", target, sent)

    def seen_identity(self) -> dict[str, str]:
        """The X-Clerk-* headers (any spelling) the upstream received with the last request."""
        return {k.lower(): v for k, v in self.upstream.last["headers"] if clerkish(k)}

    def original(self, path: str) -> str:
        """The original absolute URL the client asked the proxy for, as redirect_url holds it."""
        return quote(f"http://{self.proxy.host}{path}", safe="")

    def explain(self, answer: Answer) -> str:
        return (
            f"{self.kind} answered {answer.status} {dict(answer.headers)} {answer.body[:300]!r}"
            f"\n{self.proxy.logs()}"
        )


@pytest.fixture(params=KINDS)
def proxy_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # no cookie jar: every cookie a test sends is written in its headers
    async with aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


def address(server: TestServer) -> str:
    return f"{LOOPBACK}:{server.port}"


# ---- the harness itself -------------------------------------------------------------------


def test_a_missing_proxy_skips_and_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxies.shutil, "which", lambda name: None)
    monkeypatch.setattr(proxies, "_KNOWN_PATHS", {"nginx": (), "caddy": ()})
    for kind, package in (("nginx", "nginx-light"), ("caddy", "caddy")):
        with pytest.raises(pytest.skip.Exception, match=f"apt-get install {package}"):
            proxies.require(kind)


def test_the_docs_show_the_tested_files_verbatim() -> None:
    doc = (proxies.EXAMPLES.parents[1] / "docs" / "forward-auth.md").read_text()
    for kind, fence in (("nginx", "```nginx\n"), ("caddy", "```caddyfile\n")):
        template = proxies.TEMPLATES[kind]
        assert fence + template.read_text() + "```\n" in doc, f"paste {template} into the docs"


def test_examples_have_every_placeholder_filled() -> None:
    for kind in KINDS:
        text = proxies.render(kind, gateway="g:1", upstream="u:2", listen="l:3")
        assert "{{" not in text
        assert "g:1" in text
        assert "u:2" in text
        assert "l:3" in text


# ---- the self-check: the configuration files against a stand-in auth server ---------------


@dataclass
class StandIn:
    """The forward-auth contract for a few cases, small enough to read in one go.

    Routes: `/` and `/public/**` public, `/admin/**` needs role `admin`, the rest needs a
    session. A token is `standin.<user>.<role>` (Authorization or `__session` cookie); user
    `user_org` also has an organization. Each check is recorded as the auth server saw it.
    """

    checks: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.check)
        return app

    @property
    def last(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.checks[-1]["headers"]}

    async def check(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.checks.append(
            {"path": request.raw_path, "headers": list(request.headers.items()), "body": body}
        )
        h = request.headers
        nginx_form = any(k.lower().startswith("x-original-") for k in h)
        if nginx_form == any(k.lower() in ("x-forwarded-method", "x-forwarded-uri") for k in h):
            return self.error(400, "request-malformed")  # described twice, or not at all
        if nginx_form:
            method, target, url = h["X-Original-Method"], h["X-Original-URI"], h["X-Original-URL"]
        else:
            method, target = h["X-Forwarded-Method"], h["X-Forwarded-Uri"]
            url = f"{h['X-Forwarded-Proto']}://{h['X-Forwarded-Host']}{target}"
        raw_path = target.partition("?")[0]
        if "%2f" in raw_path.lower() or "%5c" in raw_path.lower():
            return self.error(400, "path-ambiguous")
        path = normalise(raw_path)
        user, role = self.session(request)
        if path == "/" or path == "/public" or path.startswith("/public/"):
            need = "public"
        elif path == "/admin" or path.startswith("/admin/"):
            need = "admin"
        else:
            need = "protected"
        if need != "public" and user is None:
            where = f"/sign-in?redirect_url={quote(url, safe='')}"
            status, reason = 401, "session-token-missing"
        elif need == "admin" and role != "admin":
            where, status, reason = "/unauthorized", 403, "role-required"
        else:
            return web.Response(status=200, headers=self.identity(user, role))
        browser = method in ("GET", "HEAD") and (
            h.get("Sec-Fetch-Dest") in ("document", "iframe")
            if "Sec-Fetch-Dest" in h
            else "text/html" in h.get("Accept", "")
        )
        if not browser:
            return self.error(status, reason)
        headers = CIMultiDict({"Cache-Control": "no-store"})
        cookies = ("standin_count=1", "standin_other=2")
        for cookie in cookies:
            headers.add("Set-Cookie", cookie)
        if nginx_form:  # nginx auth_request passes on only 2xx/401/403, and one Set-Cookie
            headers["X-Clerk-Redirect"] = where
            for n, cookie in enumerate(cookies, start=1):
                headers[f"X-Clerk-Set-Cookie-{n}"] = cookie
            return web.Response(status=status, headers=headers)
        headers["Location"] = where
        return web.Response(status=307, headers=headers)

    @staticmethod
    def session(request: web.Request) -> tuple[str | None, str | None]:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        token = token or request.cookies.get("__session")
        if not token or not token.startswith("standin."):
            return None, None
        _, user, role = token.split(".")
        return user, role or None

    @staticmethod
    def identity(user: str | None, role: str | None) -> dict[str, str]:
        if user is None:
            return {}
        out = {"X-Clerk-User-Id": user, "X-Clerk-Session-Id": "sess_standin"}
        if role:
            out["X-Clerk-Role"] = role
        if user == "user_org":
            out.update(
                {
                    "X-Clerk-Org-Id": "org_1",
                    "X-Clerk-Org-Slug": "acme",
                    "X-Clerk-Org-Role": "org:admin",
                    "X-Clerk-Org-Permissions": "org:reports:read,org:reports:write",
                }
            )
        return out

    @staticmethod
    def error(status: int, reason: str) -> web.Response:
        kind = {400: "bad_request", 401: "unauthorized", 403: "forbidden"}[status]
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        return web.json_response({"error": kind, "reason": reason}, status=status, headers=headers)


def normalise(raw: str) -> str:
    """Enough of the gateway's normalisation for the stand-in: dot segments, encoded dots."""
    segments: list[str] = []
    for segment in raw.replace("%2e", ".").replace("%2E", ".").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def standin_token(user: str, role: str = "") -> str:
    return f"standin.{user}.{role}"


@pytest.fixture
async def standin(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> tuple[StandIn, TestServer]:
    state = StandIn()
    return state, await aiohttp_server(state.app())


@pytest.fixture
async def via_standin(
    proxy_kind: str,
    standin: tuple[StandIn, TestServer],
    upstream: tuple[Upstream, TestServer],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> AsyncIterator[Through]:
    state, server = upstream
    async with running_proxy(
        proxy_kind, tmp_path, gateway=address(standin[1]), upstream=address(server)
    ) as proxy:
        yield Through(proxy, state, http)


async def test_standin_allowed_request_reaches_upstream_with_identity_and_body(
    via_standin: Through, standin: tuple[StandIn, TestServer]
) -> None:
    t, auth = via_standin, standin[0]
    r = await t.request(
        "POST", "/dashboard/save?q=1", standin_token("user_org", "admin"), data=b"x=1"
    )
    assert r.status == 200, t.explain(r)
    assert (t.upstream.last["method"], t.upstream.last["raw_path"]) == (
        "POST",
        "/dashboard/save?q=1",
    )
    assert t.upstream.last["body"] == "x=1"
    assert t.seen_identity() == {
        "x-clerk-user-id": "user_org",
        "x-clerk-session-id": "sess_standin",
        "x-clerk-role": "admin",
        "x-clerk-org-id": "org_1",
        "x-clerk-org-slug": "acme",
        "x-clerk-org-role": "org:admin",
        "x-clerk-org-permissions": "org:reports:read,org:reports:write",
    }
    # the check: the client's credentials, never the body, one description of the request
    check = auth.last
    assert auth.checks[-1]["body"] == b""
    assert "transfer-encoding" not in check
    assert check.get("content-length", "0") == "0"
    assert check["authorization"] == f"Bearer {standin_token('user_org', 'admin')}"
    if t.kind == "nginx":
        assert (check["x-original-method"], check["x-original-uri"]) == (
            "POST",
            "/dashboard/save?q=1",
        )
        assert check["x-original-url"] == f"http://{t.proxy.host}/dashboard/save?q=1"
        assert not {"x-forwarded-method", "x-forwarded-uri", "x-forwarded-host"} & check.keys()
    else:
        assert (check["x-forwarded-method"], check["x-forwarded-uri"]) == (
            "POST",
            "/dashboard/save?q=1",
        )
        assert (check["x-forwarded-host"], check["x-forwarded-proto"]) == (t.proxy.host, "http")
        assert not any(k.startswith("x-original-") for k in check)


async def test_standin_session_cookie_is_forwarded_to_the_check(via_standin: Through) -> None:
    t = via_standin
    cookie = f"theme=dark; __session={standin_token('user_c', 'member')}"
    r = await t.get("/dashboard", headers={**BROWSER, "Cookie": cookie})
    assert r.status == 200, t.explain(r)
    assert t.seen_identity() == {
        "x-clerk-user-id": "user_c",
        "x-clerk-session-id": "sess_standin",
        "x-clerk-role": "member",
    }


async def test_standin_client_identity_headers_never_reach_the_upstream(
    via_standin: Through,
) -> None:
    t = via_standin
    r = await t.get("/public/page", headers=SPOOFS)
    assert r.status == 200, t.explain(r)
    assert t.seen_identity() == {}
    # signed in, without an organization: the gateway's headers, and nothing for the others
    # (Caddy 2.6 would otherwise send the text of an unfilled placeholder)
    r = await t.get("/dashboard", standin_token("user_m", "member"), headers=SPOOFS)
    assert r.status == 200, t.explain(r)
    assert t.seen_identity() == {
        "x-clerk-user-id": "user_m",
        "x-clerk-session-id": "sess_standin",
        "x-clerk-role": "member",
    }
    # no role either: the role header is absent, not empty
    r = await t.get("/dashboard", standin_token("user_n"), headers=SPOOFS)
    assert r.status == 200, t.explain(r)
    assert t.seen_identity() == {"x-clerk-user-id": "user_n", "x-clerk-session-id": "sess_standin"}


@pytest.mark.parametrize("proxy_kind", ["caddy"])
async def test_standin_caddy_strips_every_x_clerk_header(via_standin: Through) -> None:
    # nginx without headers-more clears headers by name only: its example names the ones the
    # gateway sends, and docs/forward-auth.md says to add any other the policy configures
    t = via_standin
    spoofs = {"X-Clerk-Anything": "x", "X_Clerk-Mixed": "y", "X-Clerk_Other": "z"}
    r = await t.get("/dashboard", standin_token("user_m"), headers=spoofs)
    assert r.status == 200, t.explain(r)
    assert t.seen_identity() == {"x-clerk-user-id": "user_m", "x-clerk-session-id": "sess_standin"}


async def test_standin_client_cannot_describe_the_original_request(
    via_standin: Through, standin: tuple[StandIn, TestServer]
) -> None:
    t, auth = via_standin, standin[0]
    r = await t.get("/dashboard?x=1", headers=DESCRIPTION_SPOOFS)
    assert r.status == 401, t.explain(r)
    assert t.upstream.requests == []
    check = auth.last
    if t.kind == "nginx":
        assert check["x-original-uri"] == "/dashboard?x=1"
        assert check["x-original-url"] == f"http://{t.proxy.host}/dashboard?x=1"
        assert not {"x-forwarded-method", "x-forwarded-uri", "x-forwarded-host"} & check.keys()
    else:
        assert check["x-forwarded-uri"] == "/dashboard?x=1"
        assert (check["x-forwarded-host"], check["x-forwarded-proto"]) == (t.proxy.host, "http")
        assert not any(k.startswith("x-original-") for k in check)


async def test_standin_api_denials_pass_status_json_and_challenge(via_standin: Through) -> None:
    t = via_standin
    r = await t.get("/dashboard")
    assert (r.status, r.json()) == (
        401,
        {"error": "unauthorized", "reason": "session-token-missing"},
    ), t.explain(r)
    assert r.all("WWW-Authenticate") == ["Bearer"]
    r = await t.get("/admin/panel", standin_token("user_m", "member"))
    assert (r.status, r.json()) == (403, {"error": "forbidden", "reason": "role-required"})
    r = await t.request("POST", "/admin/panel", data=b"x" * 100_000)
    assert r.status == 401, t.explain(r)
    assert t.upstream.requests == []


async def test_standin_browser_denials_are_redirects(via_standin: Through) -> None:
    t = via_standin
    r = await t.get("/dashboard?tab=1", headers=BROWSER)
    assert r.status == 307, t.explain(r)
    assert r.headers["Location"] == f"/sign-in?redirect_url={t.original('/dashboard?tab=1')}"
    assert r.headers["Cache-Control"] == "no-store"
    # every cookie reaches the browser (through nginx, by the numbered copies)
    assert r.all("Set-Cookie") == ["standin_count=1", "standin_other=2"]
    assert "X-Clerk-Set-Cookie-1" not in r.headers
    r = await t.get("/admin", standin_token("user_m", "member"), headers=BROWSER)
    assert (r.status, r.headers["Location"]) == (307, "/unauthorized"), t.explain(r)
    r = await t.get("/admin", standin_token("user_m", "member"), headers={"Accept": "text/html"})
    assert (r.status, r.headers["Location"]) == (307, "/unauthorized"), t.explain(r)
    assert t.upstream.requests == []


async def test_standin_other_denials_reach_the_client_as_answered(via_standin: Through) -> None:
    # nginx turns an auth answer other than 2xx/401/403 into 500; the example asks again
    t = via_standin
    r = await t.raw("/public/..%2Fadmin")
    assert (r.status, r.json()) == (400, {"error": "bad_request", "reason": "path-ambiguous"}), (
        t.explain(r)
    )
    assert t.upstream.requests == []


@pytest.mark.parametrize(
    "target", ["/public/../admin", "/public/%2e%2e/admin", "/public//../admin"]
)
async def test_standin_decides_on_the_path_the_client_sent(
    via_standin: Through, standin: tuple[StandIn, TestServer], target: str
) -> None:
    t, auth = via_standin, standin[0]
    r = await t.raw(target)
    assert r.status == 401, t.explain(r)
    r = await t.raw(target, standin_token("user_m", "member"))
    assert r.status == 403, t.explain(r)
    assert t.upstream.requests == []
    # the auth server is given the target as sent: its normalisation decides, not the proxy's
    sent = auth.last["x-original-uri" if t.kind == "nginx" else "x-forwarded-uri"]
    assert sent == target


async def test_standin_websocket_upgrade_passes_after_the_check(
    via_standin: Through, standin: tuple[StandIn, TestServer]
) -> None:
    t, auth = via_standin, standin[0]
    async with t.http.ws_connect(
        t.proxy.base + "/ws/chat",
        headers={"Authorization": f"Bearer {standin_token('user_ws', 'member')}", **SPOOFS},
        protocols=("chat",),
    ) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    assert t.seen_identity() == {
        "x-clerk-user-id": "user_ws",
        "x-clerk-session-id": "sess_standin",
        "x-clerk-role": "member",
    }
    assert auth.last.get("upgrade") is None  # the check itself is a plain request
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await t.http.ws_connect(t.proxy.base + "/ws/chat")
    assert err.value.status == 401
    assert len(t.upstream.requests) == 1


async def test_standin_unreachable_auth_server_fails_closed(
    proxy_kind: str,
    upstream: tuple[Upstream, TestServer],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    state, server = upstream
    nobody = f"{LOOPBACK}:{free_port()}"
    async with running_proxy(proxy_kind, tmp_path, gateway=nobody, upstream=address(server)) as p:
        t = Through(p, state, http)
        for path in ("/public/page", "/dashboard"):
            r = await t.get(path, standin_token("user_m", "admin"))
            assert r.status == 502, t.explain(r)
    assert state.requests == []


# ---- the real gateway in forward-auth mode ------------------------------------------------


@dataclass
class ForwardAuthGateway:
    gateway: Gateway
    listeners: Listeners
    clerk: DevClerk

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.listeners.public_address.port}"


def forward_auth_policy(text: str, *, trust_loopback: bool = True) -> str:
    """The shared test policy for forward-auth: the proxies on 127.0.0.1 trusted, and no
    webhook route (webhooks need the body, so proxy mode)."""
    webhook = "  - {path: /api/webhooks/clerk, methods: [POST], access: webhook}\n"
    trusted = "trusted_proxies: [10.99.0.0/16]\n"
    if webhook not in text or trusted not in text:
        raise ValueError("the shared test policy (conftest.policy_text) changed: update this edit")
    text = text.replace(webhook, "")
    if trust_loopback:
        text = text.replace(trusted, "trusted_proxies: [10.99.0.0/16, 127.0.0.1/32]\n")
    return text


def test_forward_auth_policy_is_the_shared_one_with_loopback_trusted(
    devclerk: DevClerk, clerk_server: TestServer
) -> None:
    # runs on every branch: the edit still applies to conftest's policy, which still parses
    text = forward_auth_policy(policy_text(devclerk, clerk_server, "http://127.0.0.1:9"))
    result = parse_policy(text, "routes.yaml", for_run=True, env={})
    assert result.errors == (), result.errors
    assert result.policy is not None
    assert ip_network("127.0.0.1/32") in result.policy.trusted_proxies
    assert "webhook" not in text.partition("routes:")[2]


@contextlib.asynccontextmanager
async def forward_auth_gateway(
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: TestServer,
    workdir: Path,
    *,
    trust_loopback: bool = True,
    handshake: bool = False,
) -> AsyncIterator[ForwardAuthGateway]:
    """The gateway in-process, in forward-auth mode, on ephemeral loopback ports."""
    path = workdir / "routes.yaml"
    text = policy_text(devclerk, clerk_server, str(upstream.make_url("")).rstrip("/"))
    text = forward_auth_policy(text, trust_loopback=trust_loopback)
    if handshake:
        text = text.replace("  handshake: false", "  handshake: true")
    path.write_text(text)
    gw = Gateway(str(path), env={})
    listeners = await gateway.server.start(
        gw, Address(LOOPBACK, 0), Address(LOOPBACK, 0), drain_timeout_s=5, mode="forward-auth"
    )
    try:
        assert gw.keys is not None
        assert await gw.keys.wait_ready(5)
        yield ForwardAuthGateway(gw, listeners, devclerk)
    finally:
        await listeners.close()


@pytest.fixture
async def via_gateway(
    proxy_kind: str,
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> AsyncIterator[Through]:
    state, server = upstream
    async with (
        forward_auth_gateway(devclerk, clerk_server, server, tmp_path) as fa,
        running_proxy(proxy_kind, tmp_path, gateway=fa.address, upstream=address(server)) as p,
    ):
        yield Through(p, state, http)
    state.release.set()


@needs_forward_auth_mode
async def test_anonymous_api_request_is_401_json(via_gateway: Through) -> None:
    t = via_gateway
    r = await t.get("/dashboard")
    assert (r.status, r.json()) == (
        401,
        {"error": "unauthorized", "reason": "session-token-missing"},
    ), t.explain(r)
    assert r.all("WWW-Authenticate") == ["Bearer"]
    assert t.upstream.requests == []


@needs_forward_auth_mode
async def test_browser_navigation_is_redirected_to_sign_in(via_gateway: Through) -> None:
    t = via_gateway
    r = await t.get("/dashboard?tab=1", headers=BROWSER)
    assert r.status == 307, t.explain(r)
    assert r.headers["Location"] == f"/sign-in?redirect_url={t.original('/dashboard?tab=1')}"
    assert r.headers["Cache-Control"] == "no-store"
    # the same without Sec-Fetch-Dest: Accept decides
    r = await t.get("/admin/x", headers={"Accept": "text/html"})
    assert r.status == 307, t.explain(r)
    assert r.headers["Location"] == f"/sign-in?redirect_url={t.original('/admin/x')}"
    assert t.upstream.requests == []


@needs_forward_auth_mode
async def test_member_on_admin_route_is_403_or_the_unauthorized_page(
    via_gateway: Through, devclerk: DevClerk
) -> None:
    t, member = via_gateway, devclerk.mint("user_x", role="member")
    r = await t.get("/admin/panel", member)
    assert (r.status, r.json()) == (403, {"error": "forbidden", "reason": "role-required"}), (
        t.explain(r)
    )
    r = await t.get("/admin/panel", member, headers=BROWSER)
    assert (r.status, r.headers["Location"]) == (307, "/unauthorized"), t.explain(r)
    assert t.upstream.requests == []


@needs_forward_auth_mode
async def test_valid_session_reaches_upstream_with_identity(
    via_gateway: Through, devclerk: DevClerk
) -> None:
    t = via_gateway
    r = await t.request(
        "POST", "/admin/panel?q=1", devclerk.mint("user_9", role="admin"), data=b"payload"
    )
    assert r.status == 200, t.explain(r)
    assert (t.upstream.last["method"], t.upstream.last["body"]) == ("POST", "payload")
    seen = t.seen_identity()
    assert seen.pop("x-clerk-session-id").startswith("sess_")
    assert seen == {"x-clerk-user-id": "user_9", "x-clerk-role": "admin"}
    # every identity header the configuration copies
    org = {"id": "org_1", "slg": "acme", "rol": "admin", "per": "read,manage", "fpm": "1"}
    r = await t.get("/reports/q1", devclerk.mint("user_1", org=org, claims={"fea": "o:reports"}))
    assert r.status == 200, t.explain(r)
    seen = t.seen_identity()
    assert seen.pop("x-clerk-session-id").startswith("sess_")
    assert seen == {
        "x-clerk-user-id": "user_1",
        "x-clerk-org-id": "org_1",
        "x-clerk-org-slug": "acme",
        "x-clerk-org-role": "org:admin",
        "x-clerk-org-permissions": "org:reports:read",
    }
    # a browser's session cookie, forwarded by the proxy to the check
    cookie = f"__session={devclerk.mint('user_c', role='member')}"
    r = await t.get("/dashboard", headers={**BROWSER, "Cookie": cookie})
    assert r.status == 200, t.explain(r)
    assert t.seen_identity()["x-clerk-user-id"] == "user_c"


@needs_forward_auth_mode
async def test_client_sent_identity_never_reaches_upstream(
    via_gateway: Through, devclerk: DevClerk
) -> None:
    t = via_gateway
    r = await t.get("/public/page", headers=SPOOFS)  # anonymous, public route
    assert r.status == 200, t.explain(r)
    assert t.seen_identity() == {}
    r = await t.get("/dashboard", devclerk.mint("user_x", role="member"), headers=SPOOFS)
    assert r.status == 200, t.explain(r)
    seen = t.seen_identity()
    assert seen.pop("x-clerk-session-id").startswith("sess_")
    assert seen == {"x-clerk-user-id": "user_x", "x-clerk-role": "member"}


@needs_forward_auth_mode
async def test_client_cannot_describe_the_original_request(via_gateway: Through) -> None:
    t = via_gateway
    for path in ("/dashboard", "/admin/x"):
        r = await t.get(path, headers=DESCRIPTION_SPOOFS)
        assert r.status == 401, t.explain(r)
    assert t.upstream.requests == []


@needs_forward_auth_mode
@pytest.mark.parametrize(
    "target", ["/public/../admin", "/public/%2e%2e/admin", "/public//../admin"]
)
async def test_path_tricks_are_decided_on_the_normalised_path(
    via_gateway: Through, devclerk: DevClerk, target: str
) -> None:
    t = via_gateway
    r = await t.raw(target)
    assert (r.status, r.json()["reason"]) == (401, "session-token-missing"), t.explain(r)
    r = await t.raw(target, devclerk.mint("user_x", role="member"))
    assert (r.status, r.json()["reason"]) == (403, "role-required"), t.explain(r)
    assert t.upstream.requests == []


@needs_forward_auth_mode
@pytest.mark.parametrize("target", ["/public/..%2Fadmin", "/admin%2fx"])
async def test_ambiguous_path_is_400(via_gateway: Through, target: str) -> None:
    t = via_gateway
    r = await t.raw(target)
    assert (r.status, r.json()) == (400, {"error": "bad_request", "reason": "path-ambiguous"}), (
        t.explain(r)
    )
    assert t.upstream.requests == []


@needs_forward_auth_mode
async def test_public_route_passes_anonymously_without_identity(via_gateway: Through) -> None:
    t = via_gateway
    for path in ("/", "/public/page?x=1"):
        r = await t.get(path)
        assert r.status == 200, t.explain(r)
        assert t.upstream.last["raw_path"] == path
        assert t.seen_identity() == {}
    r = await t.get("/public/page", "garbage")  # an invalid token on a public route is ignored
    assert r.status == 200, t.explain(r)
    assert t.seen_identity() == {}


@needs_forward_auth_mode
async def test_websocket_through_the_proxy(via_gateway: Through, devclerk: DevClerk) -> None:
    t = via_gateway
    token = devclerk.mint("user_ws")
    async with t.http.ws_connect(
        t.proxy.base + "/ws/chat", headers={"Authorization": f"Bearer {token}"}, protocols=("chat",)
    ) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    assert t.seen_identity()["x-clerk-user-id"] == "user_ws"
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await t.http.ws_connect(t.proxy.base + "/ws/chat")
    assert err.value.status == 401


@needs_forward_auth_mode
async def test_proxy_missing_from_trusted_proxies_is_400(
    proxy_kind: str,
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    # what docs/forward-auth.md's troubleshooting says: a description from an untrusted
    # address is not believed
    state, server = upstream
    async with (
        forward_auth_gateway(devclerk, clerk_server, server, tmp_path, trust_loopback=False) as fa,
        running_proxy(proxy_kind, tmp_path, gateway=fa.address, upstream=address(server)) as p,
    ):
        t = Through(p, state, http)
        r = await t.get("/public/page")
        assert (r.status, r.json()["reason"]) == (400, "proxy-untrusted"), t.explain(r)
    assert state.requests == []


async def test_the_end_of_clerks_handshake_sets_every_cookie_through_the_proxy(
    proxy_kind: str,
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The browser comes back from Clerk's frontend API with a nonce: the gateway resolves
    it and the proxy must hand the browser every cookie of the payload (nginx keeps one
    Set-Cookie of an auth answer: the numbered copies carry the rest)."""
    state, server = upstream
    async with (
        forward_auth_gateway(devclerk, clerk_server, server, tmp_path, handshake=True) as fa,
        running_proxy(proxy_kind, tmp_path, gateway=fa.address, upstream=address(server)) as p,
    ):
        t = Through(p, state, http)
        client = devclerk.sign_in("alice")
        directives = devclerk.handshake_directives(
            client, origin=devclerk.origin, suffixed=True, dev_browser=True
        )
        assert len(directives) == 6
        nonce = devclerk.issue_nonce(directives)
        browser = {"Accept": "text/html", "Sec-Fetch-Dest": "document"}
        r = await t.get(f"/dashboard?tab=1&__clerk_handshake_nonce={nonce}", headers=browser)
        assert r.status == 307, t.explain(r)
        assert r.headers["Location"].endswith("/dashboard?tab=1"), t.explain(r)
        assert sorted(r.headers.getall("Set-Cookie")) == sorted(directives), t.explain(r)
        assert "X-Clerk-Set-Cookie-1" not in r.headers
        # a handshake start: one cookie, the counter
        r = await t.get("/dashboard", headers=browser)
        assert r.status == 307, t.explain(r)
        assert "/v1/client/handshake?" in r.headers["Location"]
        assert [c.split("=")[0] for c in r.headers.getall("Set-Cookie")] == [
            "__clerk_redirect_count"
        ]
    assert state.requests == []
