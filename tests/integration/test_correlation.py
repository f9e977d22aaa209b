"""Request ids, trace context and the access line, end to end: what the client, the upstream
and the log each see of one request, and that they agree."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from gateway.correlation import valid_traceparent
from gateway.upstream import _VERDICTS
from tests.integration.conftest import LOOPBACK, Running, raw_request, raw_upstream

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def seen_upstream(gw: Running) -> dict[str, list[str]]:
    """The last request's headers at the upstream, by lower-case name, every value."""
    found: dict[str, list[str]] = {}
    for name, value in gw.upstream.last["headers"]:
        found.setdefault(name.lower(), []).append(value)
    return found


@contextmanager
def access_lines(gw: Running) -> Iterator[list[dict[str, Any]]]:
    """The access lines written inside the block, parsed (the real line, not a sink)."""
    stream = io.StringIO()
    gw.gateway.access_log.stream = stream
    lines: list[dict[str, Any]] = []
    yield lines
    gw.gateway.access_log.flush()
    lines += [json.loads(line) for line in stream.getvalue().splitlines()]


async def trust_loopback(gw: Running) -> None:
    """The test client becomes a trusted proxy."""
    text = gw.policy_path.read_text()
    gw.policy_path.write_text(
        text.replace("trusted_proxies: [10.99.0.0/16]", "trusted_proxies: [127.0.0.0/8]")
    )
    assert await gw.gateway.reload()


async def test_client_upstream_and_log_see_one_request_id(gw: Running) -> None:
    with access_lines(gw) as lines:
        r = await gw.get(
            "/public/x",
            headers={"X-Request-Id": "chosen-by-the-client", "User-Agent": "probe/1.0"},
        )
    assert r.status == 200
    (sent,) = r.headers.getall("X-Request-Id")
    assert sent != "chosen-by-the-client"  # from an untrusted client: replaced
    assert seen_upstream(gw)["x-request-id"] == [sent]
    (line,) = lines
    assert line["request_id"] == sent
    assert line["client"] == LOOPBACK
    assert line["host"] == f"{LOOPBACK}:{gw.port}"
    assert line["user_agent"] == "probe/1.0"


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "forwarded"),
    [
        ("GET", "/api/y", {}, 401, False),  # the gateway's own denial
        ("HEAD", "/api/y", {}, 401, False),
        ("GET", "/api/y", {"Accept": "text/html"}, 307, False),  # to the sign-in page
        ("GET", "/internal/x", {}, 403, False),
        ("POST", "/api/webhooks/clerk", {}, 400, False),  # no Svix headers
        ("GET", "/dead/x", {}, 502, True),  # forwarded, and the upstream failed
        ("GET", "/public/%2e%2e/%2fadmin", {}, 400, False),
    ],
)
async def test_every_answer_of_the_gateways_own_carries_it(
    gw: Running, method: str, path: str, headers: dict[str, str], status: int, forwarded: bool
) -> None:
    with access_lines(gw) as lines:
        r = await gw.request(method, path, headers=headers)
        traced = await gw.request(method, path, headers={**headers, "traceparent": TRACEPARENT})
    assert (r.status, traced.status) == (status, status)
    (sent,) = r.headers.getall("X-Request-Id")
    first, second = lines
    assert (first["status"], first["request_id"]) == (status, sent)
    assert second["request_id"] == traced.headers["X-Request-Id"] != sent
    # a trace begins only where a request leaves the gateway; an incoming one is named
    if forwarded:
        assert len(first["trace_id"]) == 32
    else:
        assert first["trace_id"] is None
    assert second["trace_id"] == TRACEPARENT[3:35]


async def test_a_refused_head_carries_one_too_and_its_line_says_which(gw: Running) -> None:
    seen: list[dict[str, Any]] = []
    gw.gateway.access_log.sink = seen.append
    oversized = b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    status, headers, _ = await raw_request(gw.port, oversized)
    assert status == 431
    (line,) = seen
    assert (line["reason"], line["client"]) == ("request-header-too-large", LOOPBACK)
    assert line["request_id"] == headers["x-request-id"]


async def test_a_websocket_upgrade_carries_it(gw: Running) -> None:
    token = gw.clerk.mint("user_ws")
    async with gw.http.ws_connect(
        gw.base + "/ws/chat", headers={"Authorization": f"Bearer {token}"}, protocols=("chat",)
    ) as ws:
        (sent,) = ws._response.headers.getall("X-Request-Id")
    assert seen_upstream(gw)["x-request-id"] == [sent]


async def test_a_trusted_proxys_request_id_and_client_address_are_believed(gw: Running) -> None:
    await trust_loopback(gw)
    with access_lines(gw) as lines:
        r = await gw.get(
            "/public/x",
            headers={
                "X-Request-Id": "ingress-7f3a9c",
                "X-Forwarded-For": "198.51.100.1, 203.0.113.9",  # the client wrote the first
                "X-Forwarded-Host": "app.example.com",
            },
        )
        bad = await gw.get("/public/y", headers={"X-Request-Id": "has a space"})
    assert r.headers.getall("X-Request-Id") == ["ingress-7f3a9c"]
    assert seen_upstream(gw)["x-request-id"] != ["has a space"]
    assert bad.headers["X-Request-Id"] != "has a space"
    first, second = lines
    assert (first["request_id"], first["client"]) == ("ingress-7f3a9c", "203.0.113.9")
    assert first["host"] == "app.example.com"  # the host the client asked the proxy for
    assert second["client"] == LOOPBACK  # no X-Forwarded-For: the proxy itself
    assert second["host"] == f"{LOOPBACK}:{gw.port}"
    assert second["request_id"] == bad.headers["X-Request-Id"]


async def test_an_untrusted_clients_forwarded_for_is_not_the_client(gw: Running) -> None:
    with access_lines(gw) as lines:
        await gw.get(
            "/public/x",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "forged.example"},
        )
    assert lines[0]["client"] == LOOPBACK
    assert lines[0]["host"] == f"{LOOPBACK}:{gw.port}"


async def test_a_valid_traceparent_is_continued_an_invalid_one_replaced(gw: Running) -> None:
    with access_lines(gw) as lines:
        await gw.get("/public/x", headers={"traceparent": TRACEPARENT, "tracestate": "v=1"})
        continued = seen_upstream(gw)
        await gw.get("/public/x", headers={"traceparent": TRACEPARENT.upper(), "tracestate": "v"})
        replaced = seen_upstream(gw)
        await gw.get("/public/x")
        begun = seen_upstream(gw)
    assert continued["traceparent"] == [TRACEPARENT]
    assert continued["tracestate"] == ["v=1"]
    assert lines[0]["trace_id"] == TRACEPARENT[3:35]
    for seen, line in ((replaced, lines[1]), (begun, lines[2])):
        (made,) = seen["traceparent"]
        assert valid_traceparent(made.encode())
        assert made[3:35] == line["trace_id"] != TRACEPARENT[3:35]
        assert "tracestate" not in seen


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"X-Request-Id: %s\r\n", "echoed as received"),
        (b"x-request-id: %s\r\nX-REQUEST-ID: %s\r\n", "echoed twice, in other spellings"),
        (b"X-Request-Id: upstream-own-id\r\n", "the upstream's own"),
    ],
)
async def test_the_client_gets_the_request_id_once_whatever_the_upstream_says(
    gw: Running, answer: bytes, why: str
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            received = next(
                line.split(b": ", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-request-id:")
            )
            echoed = answer.replace(b"%s", received)
            writer.write(b"HTTP/1.1 200 OK\r\n%sContent-Length: 2\r\n\r\nok" % echoed)
            await writer.drain()

    async with raw_upstream(gw, serve):
        _VERDICTS.clear()
        for _ in range(3):  # the second and third on a pooled connection
            r = await gw.get("/dead/x")
            assert r.status == 200, why
            assert len(r.headers.getall("X-Request-Id")) == 1, why
            assert r.headers["X-Request-Id"] != "upstream-own-id", why
            assert await r.text() == "ok"
        # an echo makes every head different: without it, they have one shape, judged once
        assert len(_VERDICTS) == 1, why


async def test_keep_alive_clients_see_ids_of_their_own(gw: Running) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        ids = []
        for _ in range(5):
            async with http.get(gw.base + "/public/x") as r:
                ids.append(r.headers["X-Request-Id"])
    assert len(set(ids)) == 5
