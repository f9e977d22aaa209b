"""The hostile review, replayed on raw sockets (issue 10): each test is an attack that
worked before the fix and must fail now."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from gateway.devclerk import SigningKey
from tests.helpers import wait_until
from tests.integration.conftest import Running, raw_connection, raw_request, raw_upstream

SMUGGLED = (
    b"GET /admin/users HTTP/1.1\r\nHost: a\r\n"
    b"X-Clerk-User-Id: user_2admin\r\nX-Clerk-Role: admin\r\n\r\n"
)


@pytest.fixture
def policy_edit() -> Callable[[str], str]:
    """Short head and body timeouts, a tight upstream read timeout for /upload."""

    def edit(text: str) -> str:
        upstream_url = re.search(r"^upstream: (\S+)$", text, re.MULTILINE)
        assert upstream_url is not None
        text = text.replace(
            "limits:\n",
            "limits:\n  request_head_timeout_s: 1\n  body_idle_timeout_s: 1\n",
        )
        text = text.replace(
            "upstreams:\n",
            f"upstreams:\n  tight:\n    url: {upstream_url.group(1)}\n    read_timeout_s: 0.5\n",
        )
        text = text.replace(
            "jwks_refresh_interval_s: 3600\n",
            "jwks_refresh_interval_s: 3600\n  jwks_fetch_timeout_s: 1\n",
        )
        return text.replace(
            "routes:\n",
            "routes:\n  - {path: /upload, methods: [POST], access: public, upstream: tight}\n",
        )

    return edit


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class LazyUpstream:
    """Answers every request head at once and reads the declared body only afterwards,
    as aiohttp and Node do: a body that never comes swallows the next request's bytes."""

    REQUEST_LINE = re.compile(rb"[A-Z]+ /[^ ]* HTTP/1\.1")

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.heads: list[bytes] = []
        self.desyncs: list[bytes] = []  # heads that are not a request: framing went wrong
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                headers: dict[bytes, bytes] = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(b":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                if not self.REQUEST_LINE.fullmatch(lines[0]):
                    self.desyncs.append(head)
                self.requests.append((lines[0], headers))
                self.heads.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    await self._read_chunked(reader)
                elif length := int(headers.get(b"content-length", b"0")):
                    await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> None:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers


# ---- 1. request smuggling through Upgrade ------------------------------------------------


@pytest.mark.parametrize("protocol", [b"foo", b"h2c", b"websocket"])
async def test_an_upgrade_with_a_body_cannot_smuggle_a_request(
    gw: Running, protocol: bytes
) -> None:
    lazy = LazyUpstream()
    second = b"POST /dead/y HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (
        len(SMUGGLED),
        SMUGGLED,
    )
    async with raw_upstream(gw, lazy.serve):
        # the attacker first learns the exact size of the head the gateway forwards...
        assert (await raw_request(gw.port, second))[0] == 200
        forwarded = len(lazy.heads[-1])
        # ...then sends an upgrade declaring that size as its body, and the same request again
        first = (
            b"GET /dead/x HTTP/1.1\r\nHost: a\r\nUpgrade: %s\r\nConnection: Upgrade\r\n"
            b"Content-Length: %d\r\n\r\n" % (protocol, forwarded)
        )
        status, headers, body = await raw_request(gw.port, first)
        assert (status, json.loads(body)["reason"]) == (400, "request-malformed")
        assert headers["connection"] == "close"
        assert (await raw_request(gw.port, second))[0] == 200
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):  # give a smuggled request time to show up
                await wait_until(lambda: len(lazy.requests) > 2)
    lines = [line for line, _ in lazy.requests]
    assert lines == [b"POST /dead/y HTTP/1.1", b"POST /dead/y HTTP/1.1"]
    assert not any(b"x-clerk-role" in headers for _, headers in lazy.requests)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /dead/x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"CONNECT /dead/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT /dead/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["upgrade-chunked", "connect-origin-form", "connect-with-body"],
)
async def test_connect_and_chunked_upgrades_are_refused(gw: Running, data: bytes) -> None:
    lazy = LazyUpstream()
    async with raw_upstream(gw, lazy.serve):
        status, headers, body = await raw_request(gw.port, data)
    assert (status, json.loads(body)["reason"]) == (400, "request-malformed")
    assert headers["connection"] == "close"
    assert lazy.requests == []


async def test_an_upstream_connection_that_refused_an_upgrade_is_never_reused(
    gw: Running,
) -> None:
    lazy = LazyUpstream()
    async with raw_upstream(gw, lazy.serve):
        upgrade = (
            b"GET /dead/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        status, headers, _ = await raw_request(gw.port, upgrade)
        assert status == 200  # the upstream said no to the upgrade
        assert headers["connection"] == "close"
        assert (await raw_request(gw.port, b"GET /dead/next HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 200
    assert lazy.connections == 2


# ---- 2. limits enforced as bytes arrive ---------------------------------------------------


async def _served_within(gw: Running, seconds: float) -> None:
    started = time.monotonic()
    assert (await gw.get("/public/other")).status == 200
    assert time.monotonic() - started < seconds


async def test_an_endless_header_is_cut_off_as_it_arrives(gw: Running) -> None:
    before = rss_bytes()
    sent = 0
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        answer = asyncio.create_task(reader.read(4096))
        chunk = b"a" * 16384
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(30):
                while sent < 8 << 20 and not answer.done():
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                    if sent % (1 << 20) == 0:
                        await _served_within(gw, 1.0)  # other clients are not slowed down
        async with asyncio.timeout(5):
            response = await answer
    assert response.startswith(b"HTTP/1.1 431 "), response[:80]
    assert sent < 4 << 20, f"the gateway read {sent} bytes of one header before refusing it"
    assert rss_bytes() - before < 32 << 20
    await _served_within(gw, 1.0)


async def test_a_head_of_many_headers_is_capped_in_total(gw: Running) -> None:
    lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))
    status, _, body = await raw_request(gw.port, b"GET /public/x HTTP/1.1\r\nHost: a\r\n" + lines)
    assert (status, json.loads(body)["reason"]) == (431, "request-header-too-large")


async def test_an_endless_upstream_response_head_is_a_prompt_502(gw: Running) -> None:
    written = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            while written < 64 << 20:
                writer.write(b"a" * 65536)
                await writer.drain()
                written += 65536
        writer.close()

    before = rss_bytes()
    async with raw_upstream(gw, endless):
        started = time.monotonic()
        r = await gw.get("/dead/x")
        assert r.status == 502
        assert time.monotonic() - started < 5
    assert written < 32 << 20
    assert rss_bytes() - before < 32 << 20


# ---- 3. head and body timeouts ------------------------------------------------------------


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the gateway sends until it closes the connection (bounded in time)."""
    async with asyncio.timeout(seconds):
        return await reader.read()


@pytest.mark.parametrize(
    "partial",
    [b"G", b"GET /public/x HTTP/1.1\r\nHost: a\r\n", b"GET /\r\n"],
    ids=["one-byte", "unfinished-head", "http-0.9"],
)
async def test_an_unfinished_head_is_closed_after_the_head_timeout(
    gw: Running, partial: bytes
) -> None:
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(partial)
        await writer.drain()
        answer = await _closed_within(reader, 4)
    assert answer.startswith((b"HTTP/1.1 408 ", b"HTTP/1.1 400 ")), answer[:60]


async def test_slowloris_is_closed_although_bytes_keep_coming(gw: Running) -> None:
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(b"GET /public/x HTTP/1.1\r\n")
        answer = asyncio.create_task(reader.read())
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(6):
                while not answer.done():
                    writer.write(b"X-A: b\r\n")  # a header line every 0.2 s, forever
                    await writer.drain()
                    await asyncio.sleep(0.2)
        body = await asyncio.wait_for(answer, 1)
    assert body.startswith(b"HTTP/1.1 408 "), body[:60]
    assert b'"reason": "request-head-timeout"' in body


async def test_a_silent_connection_is_closed(gw: Running) -> None:
    async with raw_connection(gw.port) as (reader, _):
        assert await _closed_within(reader, 4) == b""


async def test_a_stalled_webhook_body_is_408(gw: Running) -> None:
    headers, body = gw.clerk.signed_webhook(gw.clerk.user_event("user.created"))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(
            b"POST /api/webhooks/clerk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            + head.encode()
            + b"\r\n%x\r\n%s\r\n" % (10, body[:10])
        )
        await writer.drain()  # ...and the rest never comes
        answer = await _closed_within(reader, 4)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:60]
    assert b"request-body-timeout" in answer
    assert gw.upstream.requests == []


async def test_a_stalled_upload_is_408_and_never_completed_upstream(gw: Running) -> None:
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(
            b"POST /public/up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        await writer.drain()
        answer = await _closed_within(reader, 4)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:60]


# ---- 4. long uploads ----------------------------------------------------------------------


async def test_an_upload_flowing_longer_than_the_read_timeout_succeeds(gw: Running) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(10):  # 2 s in all, well past read_timeout_s: 0.5
            yield b"x" * 10_000
            await asyncio.sleep(0.2)

    r = await gw.request("POST", "/upload", data=trickle())
    assert r.status == 200
    assert (await r.json())["size"] == 100_000


# ---- 5. reloads that would lock users out -------------------------------------------------


async def test_a_reload_to_an_unreachable_key_source_is_rejected(gw: Running) -> None:
    token = gw.clerk.mint("user_2alice")
    text = gw.policy_path.read_text()
    gw.policy_path.write_text(re.sub(r"api_url: \S+", "api_url: http://127.0.0.1:9", text))
    assert await gw.gateway.reload() is False
    r = await gw.get("/api/x", token)
    assert r.status == 200  # still verified with the running policy's keys
    ready = await gw.http.get(gw.admin + "/readyz")
    assert ready.status == 200
    metrics = await (await gw.http.get(gw.admin + "/metrics")).text()
    assert 'clerk_gateway_policy_reloads_total{result="failure"} 1.0' in metrics


# ---- 6. spellings that case-insensitive servers fold ------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/ADMIN/x",
        "/Admin/x",
        "/admin./x",
        "/admin%20/x",
        "/admin.%20/x",
        "/Internal/x",
        "/INTERNAL",
    ],
)
async def test_folded_spellings_of_another_route_are_refused(gw: Running, path: str) -> None:
    member = gw.clerk.mint("user_2alice", role="member")
    r = await gw.get(path, member)
    assert r.status == 400
    assert (await r.json())["reason"] == "path-ambiguous"
    assert gw.upstream.requests == []


@pytest.mark.parametrize("path", ["/public/MyDoc.pdf", "/public/v1.2/", "/public/a%20b"])
async def test_spellings_that_fold_to_the_same_route_pass(gw: Running, path: str) -> None:
    r = await gw.get(path)
    assert r.status == 200
    assert gw.upstream.last["raw_path"] == path


@pytest.mark.parametrize(("setting", "status"), [("true", 403), ("false", 200)])
async def test_an_explicit_setting_folds_or_matches_exactly(
    gw: Running, setting: str, status: int
) -> None:
    gw.policy_path.write_text(gw.policy_path.read_text() + f"case_insensitive_paths: {setting}\n")
    assert await gw.gateway.reload()
    member = gw.clerk.mint("user_2alice", role="member")
    r = await gw.get("/ADMIN/x", member)
    assert r.status == status
    if status == 200:
        assert gw.upstream.last["raw_path"] == "/ADMIN/x"  # forwarded as sent, never folded


# ---- 7. the rest --------------------------------------------------------------------------

OVERRIDES = [
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Real-IP",
    "True-Client-IP",
    "X-Forwarded-Prefix",
    "X-Forwarded-Port",
    "X-Forwarded-Ssl",
    "X-Forwarded-Server",
    "X-Forwarded-Scheme",
]
DISGUISED = ["X.Clerk.User.Id", "x~clerk~role", "X_Clerk.Org_Id", "X.CLERK.anything"]


async def test_headers_that_servers_trust_never_come_from_a_client(gw: Running) -> None:
    sent = {name: "/admin" for name in OVERRIDES} | {name: "user_2admin" for name in DISGUISED}
    member = gw.clerk.mint("user_2alice", role="member")
    for token in (None, member):
        r = await gw.get("/public/x", token, headers=sent)
        assert r.status == 200
        seen = {k.lower() for k, _ in gw.upstream.last["headers"]}
        assert not seen & {n.lower() for n in sent}


async def test_a_trusted_proxy_may_send_them_and_strip_headers_adds_more(gw: Running) -> None:
    text = gw.policy_path.read_text().replace(
        "trusted_proxies: [10.99.0.0/16]", "trusted_proxies: [127.0.0.1/32]"
    )
    gw.policy_path.write_text(text + "strip_headers: [X-Remote-User]\n")
    assert await gw.gateway.reload()
    r = await gw.get(
        "/public/x",
        headers={"X-Real-IP": "203.0.113.9", "X-Clerk-User-Id": "x", "X-Remote-User": "x"},
    )
    assert r.status == 200
    seen = {k.lower(): v for k, v in gw.upstream.last["headers"]}
    assert seen["x-real-ip"] == "203.0.113.9"
    assert "x-clerk-user-id" not in seen
    assert "x-remote-user" not in seen


async def test_strip_headers_holds_for_names_the_gateway_reads_itself(gw: Running) -> None:
    """strip_headers naming X-Request-Id, User-Agent and traceparent: what the client sent
    under those names never reaches the upstream, even from a trusted proxy (whose
    X-Request-Id and traceparent the gateway would otherwise pass on), and the gateway
    acts as if they were never sent (its own id, a new trace, no user agent logged)."""
    text = gw.policy_path.read_text().replace(
        "trusted_proxies: [10.99.0.0/16]", "trusted_proxies: [127.0.0.1/32]"
    )
    strip = "strip_headers: [X-Request-Id, User-Agent, Traceparent]\n"
    gw.policy_path.write_text(text + strip)
    assert await gw.gateway.reload()
    valid_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    seen_lines: list[dict[str, object]] = []
    gw.gateway.access_log.sink = seen_lines.append
    for trace in ("from-the-client", valid_trace):
        sent = {"X-Request-Id": "from-the-client", "User-Agent": "from-the-client"}
        r = await gw.get("/public/x", headers={**sent, "Traceparent": trace})
        assert r.status == 200
        received = gw.upstream.last["headers"]
        assert not [(k, v) for k, v in received if "from-the-client" in v or v == valid_trace]
        seen = {k.lower(): v for k, v in received}
        assert seen["x-request-id"] == r.headers["X-Request-Id"]  # the gateway's own
        assert "user-agent" not in seen
        assert seen["traceparent"][3:35] != valid_trace[3:35]  # a trace of its own
    assert [line["user_agent"] for line in seen_lines] == [None, None]
    assert "from-the-client" not in json.dumps(seen_lines)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_the_bearer_scheme_is_case_insensitive(gw: Running, scheme: str) -> None:
    token = gw.clerk.mint("user_2alice")
    r = await gw.get("/api/x", headers={"Authorization": f"{scheme} {token}"})
    assert r.status == 200
    seen = dict(gw.upstream.last["headers"])
    assert seen["X-Clerk-User-Id"] == "user_2alice"


async def test_an_unknown_kid_does_not_wait_for_a_hanging_key_server(
    gw: Running, spare_keys: list
) -> None:  # type: ignore[type-arg]
    gw.clerk.delay_s = 30
    stranger = gw.clerk.mint("user_2alice", key=SigningKey("ins_unknown", spare_keys[0]))
    started = time.monotonic()
    r = await gw.get("/api/x", stranger)
    assert r.status == 401
    assert (await r.json())["reason"] == "jwk-kid-mismatch"
    assert time.monotonic() - started < 2.5
    known = gw.clerk.mint("user_2alice")
    assert (await gw.get("/api/x", known)).status == 200  # known keys never wait


async def test_refused_clients_do_not_disturb_others(gw: Running) -> None:
    """Many connections holding half a head each: others are still served promptly."""
    conns = []
    try:
        for _ in range(200):
            _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"G")
            conns.append(writer)
        await _served_within(gw, 1.0)
        # the head timeout (1 s) answers every one of them, and the linger closes them
        await wait_until(lambda: len(gw.listeners.tracker.connections) <= 1, within=8)
        async with aiohttp.ClientSession() as http, http.get(gw.base + "/public/x") as r:
            assert r.status == 200
    finally:
        for writer in conns:
            writer.close()
