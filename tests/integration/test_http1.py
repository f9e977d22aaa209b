"""The HTTP/1.1 engine on raw sockets: strictness against smuggling, framing, keep-alive."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.integration.conftest import Running, raw_connection, raw_request, raw_upstream

SMUGGLING = [
    (
        "Content-Length and Transfer-Encoding",
        b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "duplicate Content-Length",
        b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ),
    (
        "invalid chunk size",
        b"POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ),
    ("obs-fold", b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n"),
    (
        "a transfer-coding other than chunked",
        b"POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    ("bare LF line endings", b"GET /public/x HTTP/1.1\nHost: a\n\n"),
    ("space in a header name", b"GET /public/x HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n"),
    (
        "negative Content-Length",
        b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    ),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
]


@pytest.mark.parametrize(("description", "data"), SMUGGLING, ids=[s[0] for s in SMUGGLING])
async def test_ambiguous_framing_is_refused_and_never_forwarded(
    gw: Running, description: str, data: bytes
) -> None:
    status, headers, body = await raw_request(gw.port, data)
    assert status == 400, description
    assert json.loads(body)["reason"] == "request-malformed"
    assert headers["connection"] == "close"
    assert gw.upstream.requests == []


async def test_keep_alive_and_pipelining(gw: Running) -> None:
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(
            b"GET /public/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /public/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        await writer.drain()
        seen = []
        async with asyncio.timeout(10):
            for _ in range(3):
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                length = int(
                    next(
                        line.split(":")[1]
                        for line in head.split("\r\n")
                        if line.lower().startswith("content-length")
                    )
                )
                body = await reader.readexactly(length)
                seen.append((head.split(" ")[1], body))
        assert [s for s, _ in seen] == ["200", "200", "401"]
        assert [json.loads(b)["raw_path"] for _, b in seen[:2]] == ["/public/1", "/public/2"]


async def test_http_1_0_gets_a_closed_connection(gw: Running) -> None:
    status, headers, _ = await raw_request(gw.port, b"GET /public/x HTTP/1.0\r\nHost: a\r\n\r\n")
    assert status == 200
    assert headers["connection"] == "close"


async def test_head_has_no_body(gw: Running) -> None:
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(
            b"HEAD /public/x HTTP/1.1\r\nHost: a\r\n\r\nGET /public/y HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(10):
            first = await reader.readuntil(b"\r\n\r\n")
            second = await reader.readuntil(b"\r\n\r\n")  # straight after: HEAD sent no body
        assert first.startswith(b"HTTP/1.1 200")
        assert second.startswith(b"HTTP/1.1 200")


async def test_informational_and_streamed_upstream_responses(gw: Running) -> None:
    async def informational(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Up: 1\r\n\r\nclose-delimited body"
        )
        await writer.drain()
        writer.close()

    async with raw_upstream(gw, informational):
        r = await gw.get("/dead/x")
        assert r.status == 200
        assert r.headers["X-Up"] == "1"
        assert await r.read() == b"close-delimited body"
        assert r.headers.get("Transfer-Encoding") == "chunked"  # re-framed for keep-alive


async def test_a_stale_pooled_connection_is_retried_once(gw: Running) -> None:
    """An upstream that closes an idle keep-alive connection just as the gateway reuses it
    (the race every keep-alive pool meets): the request goes again on a fresh connection."""
    served: list[int] = []  # connection number of each request answered

    async def closes_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(served) and max(served) + 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            served.append(number)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            # keep-alive... until the next request arrives: then close without answering
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async with raw_upstream(gw, closes_idle):
        assert (await gw.get("/dead/first")).status == 200
        r = await gw.get("/dead/second")  # on the pooled connection the upstream drops
        assert r.status == 200
        assert served == [0, 1]  # answered on a second, fresh connection
        # a request with a streamed body is never sent twice: 502 rather than a guess
        status, _, _ = await raw_request(
            gw.port,
            b"POST /dead/third HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nbody\r\n0\r\n\r\n",
        )
        assert status == 502


async def test_unread_request_body_on_a_denial_closes_the_connection(gw: Running) -> None:
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
        )
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401")
        assert b"Connection: close" in head


async def test_upstream_response_headers_are_filtered(gw: Running) -> None:
    r = await gw.get("/public/x")
    assert "X-Secret-Hop" not in r.headers  # named in the upstream's Connection header
    assert r.headers["Set-Cookie"] == "a=1"


async def test_too_many_headers_is_431(gw: Running) -> None:
    data = (
        b"GET /public/x HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(200))
        + b"\r\n"
    )
    status, _, body = await raw_request(gw.port, data)
    assert (status, json.loads(body)["reason"]) == (431, "request-header-too-large")


async def test_an_early_response_never_leaves_a_half_sent_body_in_the_pool(gw: Running) -> None:
    received: list[bytearray] = []  # everything each upstream connection was sent

    async def early_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = bytearray()
        received.append(seen)
        answered = 0
        try:
            while chunk := await reader.read(65536):
                seen += chunk
                # answer every request head at once, without waiting for its body
                while seen.count(b" HTTP/1.1\r\n") > answered:
                    answered += 1
                    writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    release = asyncio.Event()

    async def slow_body():  # type: ignore[no-untyped-def]
        yield b"first part of a long upload"
        await release.wait()
        yield b"the rest"

    async with raw_upstream(gw, early_upstream):
        upload = asyncio.create_task(gw.request("POST", "/dead/upload", data=slow_body()))
        async with asyncio.timeout(10):
            while not received or b"first part" not in received[0]:
                await asyncio.sleep(0.01)
        r = await gw.get("/dead/next")
        assert r.status == 413
        release.set()
        assert (await upload).status == 413
        assert received[0].startswith(b"POST /dead/upload HTTP/1.1\r\n")
        # the next request went out on a fresh connection, never behind the unsent body
        assert b"GET /dead/next" not in received[0]
        assert any(conn.startswith(b"GET /dead/next HTTP/1.1\r\n") for conn in received[1:])


@pytest.mark.parametrize(
    ("raw", "status", "forwarded"),
    [
        (b"/public/caf\xc3\xa9", 400, None),  # llhttp (strict) wants URLs percent-encoded
        (b"/public/caf%C3%A9", 200, "/public/caf%C3%A9"),
        (b"/public/caf%c3%a9", 200, "/public/caf%C3%A9"),
        (b"/public/\xff", 400, None),
    ],
)
async def test_raw_non_ascii_paths(
    gw: Running, raw: bytes, status: int, forwarded: str | None
) -> None:
    got, _, body = await raw_request(
        gw.port, b"GET " + raw + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert got == status
    if forwarded is not None:
        assert json.loads(body)["raw_path"] == forwarded


async def test_expect_100_continue_is_answered_once_allowed(gw: Running) -> None:
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(
            b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
    assert gw.upstream.last["body"] == "hello"
    assert "expect" not in {k.lower() for k, _ in gw.upstream.last["headers"]}


async def test_expect_100_continue_denied_gets_the_final_status_only(gw: Running) -> None:
    status, headers, _ = await raw_request(
        gw.port,
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    assert status == 401
    assert headers["connection"] == "close"  # the body was never sent: do not wait for it


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
)
async def test_a_refused_upgrade_closes_the_connection(gw: Running, data: bytes) -> None:
    status, headers, _ = await raw_request(gw.port, data)
    assert status in (400, 401)
    assert headers["connection"] == "close"
    assert gw.upstream.requests == []
