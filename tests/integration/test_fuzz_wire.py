"""Fuzzing the request parser boundary (issue 10): random splits and mutations of valid
and smuggling requests, pipelined on one connection. Whatever the gateway does with them,
the upstream may only ever see requests the gateway decided to forward, and never an
identity header it did not set."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import LOOPBACK, Running, raw_upstream
from tests.integration.test_hardening import LazyUpstream
from tests.integration.test_hardening import policy_edit as hardening_policy_edit

policy_edit = hardening_policy_edit  # short head and body timeouts keep each example quick

SMUGGLED = b"GET /dead/admin HTTP/1.1\r\nHost: a\r\nX-Clerk-Role: admin\r\n\r\n"

TEMPLATES: list[bytes] = [
    b"GET /dead/a HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /dead/b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /dead/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /dead/d HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: %d\r\n\r\n"
    % len(SMUGGLED)
    + SMUGGLED,
    b"POST /dead/e HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    % len(SMUGGLED)
    + SMUGGLED,
    b"POST /dead/f HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n"
    % len(SMUGGLED)
    + SMUGGLED,
    b"POST /dead/g HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(SMUGGLED)
    + SMUGGLED
    + b"\r\n0\r\n\r\n",
    b"GET /dead/h HTTP/1.1\r\nHost: a\r\nX-Clerk-User-Id: user_2admin\r\nX_Clerk_Role: admin\r\n\r\n",
    b"GET /dead/i HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET /admin/j HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /dead/k HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    b"GET /dead/l HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "case", "crlf"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] = draw(st.sampled_from(b' :\r\n\t\x00-_0123456789abcdefX;,"\x7f\xff'))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b" ", b"\r\n", b"\n", b"\r", b":", b"0", b"\t"]))
        elif kind == "delete":
            del data[at]
        elif kind == "case":
            data[at : at + 8] = data[at : at + 8].swapcase()
        else:
            data[at:at] = b"\r\n"
    return bytes(data)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """1-3 pipelined requests, and where to split them into separate writes."""
    parts = draw(st.lists(mutated(), min_size=1, max_size=3))
    data = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    return data, cuts


async def send(port: int, data: bytes, cuts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        previous = 0
        for cut in [*cuts, len(data)]:
            writer.write(data[previous:cut])
            previous = cut
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0)
        # read until the gateway closes or falls silent (half-closing would abort the
        # requests in flight, as nginx does)
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(3):
                while True:
                    try:
                        async with asyncio.timeout(0.15):
                            if not await reader.read(65536):
                                break
                    except TimeoutError:
                        break
    finally:
        writer.close()


def forwarded_paths(entries: list[dict[str, Any]]) -> Counter[str]:
    """What the gateway decided to forward (an upstream failure is still 'allow')."""
    return Counter(str(e.get("path")) for e in entries if e.get("decision") == "allow")


@pytest.fixture
async def lazy(gw: Running) -> AsyncIterator[LazyUpstream]:
    """One upstream for every example of a test: it answers each head at once and reads
    declared bodies afterwards, so a request the gateway framed wrongly shows up here."""
    upstream = LazyUpstream()
    async with raw_upstream(gw, upstream.serve):
        yield upstream


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=streams())
async def test_the_upstream_only_sees_what_the_gateway_decided(
    gw: Running, lazy: LazyUpstream, stream: tuple[bytes, list[int]]
) -> None:
    data, cuts = stream
    lazy.requests.clear()
    lazy.desyncs.clear()
    decided: list[dict[str, Any]] = []
    gw.gateway.access_log.sink = decided.append
    await send(gw.port, data, cuts)
    await asyncio.sleep(0.05)  # a smuggled request would arrive about now
    # the upstream read every request where the gateway framed it (no body left unsent or
    # sent twice, nothing read as the start of a request that was not one)...
    assert not lazy.desyncs, (data, lazy.desyncs)
    seen = Counter(
        line.split(b" ")[1].partition(b"?")[0].decode("latin-1") for line, _ in lazy.requests
    )
    allowed = forwarded_paths(decided)
    assert seen <= allowed, (data, seen, allowed)
    for line, headers in lazy.requests:
        clerk = [n for n in headers if n.replace(b"_", b"-").startswith(b"x-clerk-")]
        assert not clerk, (data, line, headers)
    assert all(not line.startswith(b"GET /admin") for line, _ in lazy.requests)
