"""The gateway end to end: real upstream, real Clerk stand-in, real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.devclerk import DevClerk
from gateway.server import start
from gateway.settings import Address
from tests.helpers import wait_until
from tests.integration.conftest import (
    LOOPBACK,
    Running,
    echoed,
    pattern_block,
    raw_connection,
    raw_request,
)

BROWSER = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Dest": "document"}


def in_flight(gw: Running) -> float:
    value = gw.gateway.metrics.registry.get_sample_value("clerk_gateway_requests_in_flight")
    assert value is not None
    return value


def headers_seen(gw: Running) -> dict[str, str]:
    return {k.lower(): v for k, v in gw.upstream.last["headers"]}


# ---- the hardening guide's checks --------------------------------------------------------


async def test_1_dashboard_without_session_redirects_browsers_to_sign_in(gw: Running) -> None:
    r = await gw.get("/dashboard?tab=1", headers=BROWSER)
    assert r.status == 307
    assert (
        r.headers["Location"]
        == f"/sign-in?redirect_url=http%3A%2F%2F127.0.0.1%3A{gw.port}%2Fdashboard%3Ftab%3D1"
    )
    assert r.headers["Cache-Control"] == "no-store"
    assert gw.upstream.requests == []


async def test_2_protected_api_without_auth_is_401(gw: Running) -> None:
    r = await gw.get("/api/things")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert await r.json() == {"error": "unauthorized", "reason": "session-token-missing"}


async def test_401_reason_codes_for_bad_tokens(gw: Running) -> None:
    expired = gw.clerk.mint("user_1", lifetime_s=-10)
    r = await gw.get("/api/things", expired)
    assert (r.status, (await r.json())["reason"]) == (401, "token-expired")
    assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    r = await gw.get("/api/things", "garbage")
    assert (await r.json())["reason"] == "token-invalid"
    r = await gw.get("/api/things", gw.clerk.mint("user_1", claims={"azp": "https://evil.example"}))
    assert (await r.json())["reason"] == "token-invalid-authorized-parties"


async def test_4_admin_as_member_redirects_browsers_to_unauthorized(gw: Running) -> None:
    member = gw.clerk.mint("user_1", role="member")
    r = await gw.get("/admin", member, headers=BROWSER)
    assert (r.status, r.headers["Location"]) == (307, "/unauthorized")
    r = await gw.get("/admin", member)
    assert (r.status, await r.json()) == (403, {"error": "forbidden", "reason": "role-required"})


async def test_admin_as_admin_is_forwarded_with_identity(gw: Running) -> None:
    r = await gw.get("/admin/panel", gw.clerk.mint("user_9", role="admin"))
    assert r.status == 200
    seen = headers_seen(gw)
    assert seen["x-clerk-user-id"] == "user_9"
    assert seen["x-clerk-role"] == "admin"
    assert seen["x-clerk-session-id"].startswith("sess_")


async def test_5_the_upstream_decides_on_trusted_identity(gw: Running) -> None:
    # The gateway forwards a DELETE with the verified identity; the app applies its rule.
    r = await gw.request("DELETE", "/api/posts/1", gw.clerk.mint("user_bob", role="member"))
    assert r.status == 200
    assert gw.upstream.last["method"] == "DELETE"
    assert headers_seen(gw)["x-clerk-user-id"] == "user_bob"


async def test_org_permission_requirement(gw: Running) -> None:
    org = {"id": "org_1", "slg": "acme", "rol": "admin", "per": "read,manage", "fpm": "1"}
    allowed = gw.clerk.mint("user_1", org=org, claims={"fea": "o:reports"})
    r = await gw.get("/reports/q1", allowed)
    assert r.status == 200
    seen = headers_seen(gw)
    assert (seen["x-clerk-org-id"], seen["x-clerk-org-slug"], seen["x-clerk-org-role"]) == (
        "org_1",
        "acme",
        "org:admin",
    )
    assert seen["x-clerk-org-permissions"] == "org:reports:read"
    r = await gw.get("/reports/q1", gw.clerk.mint("user_1"))
    assert (await r.json())["reason"] == "org-permission-required"


async def test_pending_sessions(gw: Running) -> None:
    pending = gw.clerk.mint("user_1", claims={"sts": "pending"})
    assert (await (await gw.get("/api/x", pending)).json())["reason"] == "session-pending"
    assert (await gw.get("/pending-ok/x", pending)).status == 200


async def test_a_pending_session_sends_no_identity_to_a_public_route(gw: Running) -> None:
    """The identity block a pending session was given where the route accepts it (built
    once, kept with the token) is not reused where the session counts as signed out."""
    pending = gw.clerk.mint("user_pending", claims={"sts": "pending"})
    assert (await gw.get("/pending-ok/x", pending)).status == 200
    assert headers_seen(gw)["x-clerk-user-id"] == "user_pending"
    assert (await gw.get("/public/page", pending)).status == 200
    assert "x-clerk-user-id" not in headers_seen(gw)


# ---- identity headers cannot be forged ----------------------------------------------------

SPOOFS = {
    "X-Clerk-User-Id": "user_admin",
    "x-clerk-role": "admin",
    "X_Clerk_Org_Role": "org:admin",
    "X-CLERK-WEBHOOK-VERIFIED": "true",
    "X-Clerk-Anything": "x",
}


@pytest.mark.parametrize("path", ["/", "/public/page", "/api/things"])
async def test_spoofed_identity_headers_never_reach_the_upstream(gw: Running, path: str) -> None:
    token = gw.clerk.mint("user_real", role="member")
    r = await gw.get(path, token, headers=SPOOFS)
    assert r.status == 200
    seen = headers_seen(gw)
    assert seen["x-clerk-user-id"] == "user_real"
    assert seen["x-clerk-role"] == "member"
    for name in (
        "x-clerk-org-role",
        "x_clerk_org_role",
        "x-clerk-webhook-verified",
        "x-clerk-anything",
    ):
        assert name not in seen, name


async def test_spoofed_headers_stripped_for_anonymous_public_requests(gw: Running) -> None:
    assert (await gw.get("/public/x", headers=SPOOFS)).status == 200
    assert not any(
        k.lower().replace("_", "-").startswith("x-clerk-") for k, _ in gw.upstream.last["headers"]
    )


async def test_public_route_forwards_a_valid_identity_and_ignores_a_bad_one(gw: Running) -> None:
    await gw.get("/", gw.clerk.mint("user_5"))
    assert headers_seen(gw)["x-clerk-user-id"] == "user_5"
    r = await gw.get("/", "garbage")
    assert r.status == 200
    assert "x-clerk-user-id" not in headers_seen(gw)


async def test_claim_with_control_characters_is_never_sent(gw: Running) -> None:
    token = gw.clerk.mint("user_1", role="admin\r\nX-Injected: yes")
    r = await gw.get("/api/x", token)
    assert r.status == 200
    seen = headers_seen(gw)
    assert "x-clerk-role" not in seen
    assert "x-injected" not in seen


# ---- paths ---------------------------------------------------------------------------------

ADVERSARIAL = [
    ("/admin/../admin/x", "/admin/x"),
    ("//admin/x", "/admin/x"),
    ("/%61dmin/x", "/admin/x"),
    ("/public/%2e%2e/admin/x", "/admin/x"),
    ("/public//../admin/x", "/admin/x"),
]


@pytest.mark.parametrize(("raw", "normal"), ADVERSARIAL)
async def test_adversarial_paths_are_decided_and_forwarded_normalised(
    gw: Running, raw: str, normal: str
) -> None:
    member = gw.clerk.mint("user_1", role="member")
    status, _, body = await raw_request(
        gw.port,
        f"GET {raw} HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {member}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status == 403, raw  # decided as /admin/x: role required
    admin = gw.clerk.mint("user_2", role="admin")
    status, _, body = await raw_request(
        gw.port,
        f"GET {raw}?q=%2F..;x HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status == 200
    assert echoed(body)["raw_path"] == f"{normal}?q=%2F..;x"  # query byte for byte


@pytest.mark.parametrize(
    "raw",
    ["/admin%2fx", "/public/..%2Fadmin", "/a;b", "/a%00", "/..", "http://evil/admin", "/a%5Cb"],
)
async def test_ambiguous_paths_are_400(gw: Running, raw: str) -> None:
    status, _, body = await raw_request(
        gw.port, f"GET {raw} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode()
    )
    assert (status, json.loads(body)) == (400, {"error": "bad_request", "reason": "path-ambiguous"})
    assert gw.upstream.requests == []


async def test_deny_route(gw: Running) -> None:
    r = await gw.get("/internal/x", gw.clerk.mint("user_1", role="admin"), headers=BROWSER)
    assert (r.status, (await r.json())["reason"]) == (403, "route-denied")


# ---- proxying -------------------------------------------------------------------------------


async def test_forwarded_headers_from_an_untrusted_client_are_replaced(gw: Running) -> None:
    r = await gw.get(
        "/",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "evil",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=6.6.6.6",
            "Host": "app.example.com:8443",
        },
    )
    assert r.status == 200
    seen = headers_seen(gw)
    assert seen["x-forwarded-for"] == LOOPBACK
    assert seen["x-forwarded-host"] == "app.example.com:8443"
    assert seen["x-forwarded-proto"] == "http"
    assert "forwarded" not in seen
    assert seen["host"] == "app.example.com:8443"  # preserved by default


async def test_host_rewritten_when_the_upstream_says_so(gw: Running) -> None:
    await gw.get("/rewritten/x", headers={"Host": "app.example.com"})
    seen = headers_seen(gw)
    assert seen["host"].startswith("127.0.0.1:")
    assert seen["x-forwarded-host"] == "app.example.com"


async def test_hop_by_hop_headers_are_removed_both_ways(gw: Running) -> None:
    r = await gw.get(
        "/public/x",
        headers={
            "Connection": "keep-alive, X-Private",
            "X-Private": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-Kept": "1",
        },
    )
    seen = headers_seen(gw)
    assert "x-private" not in seen
    assert "keep-alive" not in seen
    assert "te" not in seen
    assert seen["x-kept"] == "1"
    assert "X-Secret-Hop" not in r.headers  # named in the upstream's Connection header
    assert r.headers["X-Upstream"] == "yes"
    assert r.headers.getall("Set-Cookie") == ["a=1"]


async def test_methods_and_bodies_pass_unchanged(gw: Running) -> None:
    token = gw.clerk.mint("user_1")
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = await gw.request(
            method,
            "/api/m",
            token,
            data=b"\x00\x01body\xff",
            headers={"Content-Type": "application/octet-stream", "Content-Encoding": "identity"},
        )
        assert r.status == 200
        assert gw.upstream.last["method"] == method
        assert gw.upstream.last["body"] == "\x00\x01body\xff"


async def test_chunked_request_body(gw: Running) -> None:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"part{i};".encode()

    r = await gw.request("POST", "/api/chunked", gw.clerk.mint("user_1"), data=gen())
    assert r.status == 200
    assert gw.upstream.last["body"] == "part0;part1;part2;part3;part4;"


async def test_100_mib_upload_and_download_stream_through(gw: Running) -> None:
    token = gw.clerk.mint("user_1", lifetime_s=600)
    size = 100 * 1024 * 1024
    block = pattern_block()
    expected = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    for _ in range(size // len(block)):
        expected.update(block)
    r = await gw.request("POST", "/upload", token, data=body())
    assert await r.json() == {"size": size, "sha256": expected.hexdigest()}
    async with gw.http.get(
        gw.base + f"/download/{size}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
        got = hashlib.sha256()
        received = 0
        async for chunk in resp.content.iter_chunked(1 << 20):
            got.update(chunk)
            received += len(chunk)
    assert received == size
    assert got.hexdigest() == expected.hexdigest()


async def test_upstream_down_is_502(gw: Running) -> None:
    r = await gw.get("/dead/x")
    assert (r.status, await r.json()) == (
        502,
        {"error": "bad_gateway", "reason": "upstream-unreachable"},
    )


async def test_slow_upstream_is_504(gw: Running) -> None:
    r = await gw.get("/slow/x?s=3")
    assert (r.status, await r.json()) == (
        504,
        {"error": "gateway_timeout", "reason": "upstream-timeout"},
    )


async def test_request_line_and_header_limits(gw: Running) -> None:
    r = await gw.get("/" + "a" * 3000)
    assert (r.status, (await r.json())["reason"]) == (414, "request-line-too-long")
    r = await gw.get("/", headers={"X-Big": "b" * 5000})
    assert (r.status, (await r.json())["reason"]) == (431, "request-header-too-large")


async def test_client_disconnect_cancels_the_upstream_request(gw: Running) -> None:
    _reader, writer = await asyncio.open_connection(LOOPBACK, gw.port)
    writer.write(b"GET /public/held HTTP/1.1\r\nHost: app\r\n\r\n")
    await writer.drain()
    await wait_until(lambda: bool(gw.upstream.requests))
    assert in_flight(gw) == 1
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: in_flight(gw) == 0)


async def test_websocket_echo_allowed(gw: Running) -> None:
    token = gw.clerk.mint("user_ws")
    async with gw.http.ws_connect(
        gw.base + "/ws/chat",
        headers={"Authorization": f"Bearer {token}", "X-Clerk-Role": "admin"},
        protocols=("chat",),
    ) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
        await ws.send_bytes(b"abc")
        assert (await ws.receive(timeout=5)).data == b"cba"
    seen = headers_seen(gw)
    assert seen["x-clerk-user-id"] == "user_ws"
    assert "x-clerk-role" not in seen


async def test_websocket_denied_without_a_session(gw: Running) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await gw.http.ws_connect(gw.base + "/ws/chat")
    assert err.value.status == 401
    assert gw.upstream.requests == []


# ---- keys -----------------------------------------------------------------------------------


async def test_no_keys_yet_is_503_not_a_sign_in_redirect(gw: Running, devclerk: DevClerk) -> None:
    devclerk.status = 500  # Clerk is down before a second gateway ever fetched its keys
    gateway = Gateway(str(gw.policy_path), env={})
    listeners = await start(gateway, Address(LOOPBACK, 0), Address(LOOPBACK, 0))
    try:
        base = f"http://{LOOPBACK}:{listeners.public_address.port}"
        r = await gw.http.get(
            base + "/dashboard",
            headers={"Authorization": f"Bearer {gw.clerk.mint('user_1')}", **BROWSER},
            allow_redirects=False,
        )
        assert (r.status, await r.json()) == (
            503,
            {"error": "unavailable", "reason": "jwk-remote-failed-to-load"},
        )
        assert r.headers["Retry-After"] == "5"
        ready = await gw.http.get(f"http://{LOOPBACK}:{listeners.admin_address.port}/readyz")
        assert ready.status == 503
    finally:
        await listeners.close()


# ---- the gateway's own failures -------------------------------------------------------------


@pytest.mark.parametrize("where", ["synchronous", "asynchronous"])
async def test_a_failure_inside_the_gateway_is_a_logged_counted_500(
    gw: Running, where: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> object:
        raise RuntimeError("a bug")

    async def broken_async(*_args: object) -> object:
        raise RuntimeError("a bug")

    # The bug is planted in the key cache, which stays Python in the compiled build (a
    # compiled class's methods cannot be replaced), on the path each case takes.
    keys = gw.gateway.runtime.verifier.keys
    token = gw.clerk.mint("user_1")
    if where == "synchronous":  # verification with the keys held
        monkeypatch.setattr(keys, "keyset", broken)
    else:  # the token names a key still to be fetched: the task path
        token = gw.clerk.mint("user_1", headers={"kid": "ins_not_fetched_yet"})
        monkeypatch.setattr(keys, "may_fetch", lambda _kid: True)
        monkeypatch.setattr(keys, "resolve", broken_async)
    r = await gw.get("/api/x", token)
    assert (r.status, await r.json()) == (500, {"error": "internal", "reason": "internal-error"})
    assert r.headers["Connection"] == "close"
    (record,) = [rec for rec in caplog.records if rec.exc_info and "a bug" in str(rec.exc_info[1])]
    assert record.request_id == r.headers["X-Request-Id"]  # the line the client can point at
    monkeypatch.undo()
    metrics = await (await gw.http.get(gw.admin + "/metrics")).text()
    assert 'reason="internal-error",route="default",status="500"' in metrics
    assert (await gw.get("/api/x", gw.clerk.mint("user_1"))).status == 200  # still serving


# ---- operations -----------------------------------------------------------------------------


async def test_health_ready_and_metrics(gw: Running) -> None:
    assert (await gw.http.get(gw.admin + "/healthz")).status == 200
    r = await gw.http.get(gw.admin + "/readyz")
    assert (r.status, await r.json()) == (200, {"status": "ready", "reason": None})
    token = gw.clerk.mint("user_1", role="member")
    await gw.get("/admin/x", token)
    await gw.get("/api/y")
    text = await (await gw.http.get(gw.admin + "/metrics")).text()
    assert (
        'clerk_gateway_requests_total{access="admin",decision="deny",reason="role-required",route="routes[2]",status="403"} 1.0'
        in text
    )
    assert (
        'clerk_gateway_requests_total{access="protected",decision="deny",reason="session-token-missing",route="default",status="401"} 1.0'
        in text
    )
    assert "clerk_gateway_request_duration_seconds_bucket" in text
    assert "clerk_gateway_jwks_ready 1.0" in text
    assert 'clerk_gateway_jwks_fetches_total{result="success"} 1.0' in text
    assert "clerk_gateway_requests_in_flight" in text
    assert token not in text


async def test_log_lines_are_json_and_never_hold_the_token(gw: Running) -> None:
    token = gw.clerk.mint("user_log", role="member")
    stream = io.StringIO()
    gw.gateway.access_log.stream = stream
    await gw.get("/api/z?__session=secret-query", token, headers={"Cookie": f"__session={token}"})
    gw.gateway.access_log.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["msg"] == "request"
    assert entry["user_id"] == "user_log"
    assert entry["path"] == "/api/z"
    assert entry["route"] == "default"
    assert entry["status"] == 200
    assert entry["upstream_status"] == 200
    assert token not in lines[0]
    assert "secret-query" not in lines[0]


async def test_hot_reload_good_then_bad(gw: Running) -> None:
    text = gw.policy_path.read_text()
    gw.policy_path.write_text(
        text.replace(
            "- {path: /internal/**, access: deny}", "- {path: /internal/**, access: public}"
        )
    )
    assert await gw.gateway.reload()
    assert (await gw.get("/internal/x")).status == 200
    gw.policy_path.write_text(text.replace("access: deny", "access: sometimes"))
    assert not await gw.gateway.reload()
    assert (await gw.get("/internal/x")).status == 200  # the last good policy keeps running
    metrics = await (await gw.http.get(gw.admin + "/metrics")).text()
    assert 'clerk_gateway_policy_reloads_total{result="success"} 1.0' in metrics
    assert 'clerk_gateway_policy_reloads_total{result="failure"} 1.0' in metrics


async def test_hot_reload_on_file_change(gw: Running) -> None:
    gw.gateway.watch(0.05)
    text = gw.policy_path.read_text()
    gw.policy_path.write_text(
        text.replace(
            "- {path: /internal/**, access: deny}",
            "- {path: /internal/**, access: public}   # changed",
        )
    )
    await wait_until(
        lambda: any(
            r.access.value == "public" and "/internal/**" in r.pattern_text
            for r in gw.gateway.runtime.policy.routes
        ),
        within=5,
    )
    assert (await gw.get("/internal/x")).status == 200


async def test_timeout_and_disconnect_on_pooled_connections(gw: Running) -> None:
    # Warm the pools so the next requests run on idle pooled connections.
    assert (await gw.get("/slow/x?s=0")).status == 200
    r = await gw.get("/slow/x?s=3")
    assert (r.status, (await r.json())["reason"]) == (504, "upstream-timeout")
    assert (await gw.get("/public/warm")).status == 200
    async with raw_connection(gw.port) as (_reader, writer):
        writer.write(b"GET /public/held HTTP/1.1\r\nHost: app\r\n\r\n")
        await writer.drain()
        await wait_until(lambda: gw.upstream.requests[-1]["raw_path"] == "/public/held")
        assert in_flight(gw) == 1
    await wait_until(lambda: in_flight(gw) == 0)
    gw.upstream.release.set()
    assert (await gw.get("/public/after")).status == 200
