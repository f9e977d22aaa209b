# ruff: noqa: F811  (fixtures imported from sibling modules)
"""The per-policy memos (targets, Cookie headers) against anonymous junk: bounded in bytes,
oldest first out, so a flood of distinct 16 KB headers neither grows a worker by hundreds of
megabytes nor keeps real users' headers out of the memo afterwards."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

import pytest

from tests.integration.test_handshake import FETCH, Browser, browser  # noqa: F401


@pytest.fixture
def policy_edit() -> Callable[[str, str], str]:
    # the contract's default limits (the shared test policy lowers them)
    return lambda text, frontend: text.replace(
        "max_header_bytes: 4096", "max_header_bytes: 16384"
    ).replace("max_request_line_bytes: 2048", "max_request_line_bytes: 8192")


@pytest.mark.timeout(300)
async def test_anonymous_junk_does_not_fill_the_caches_with_hundreds_of_megabytes(
    browser: Browser,
) -> None:
    gate = asyncio.Semaphore(32)

    async def junk(i: int) -> None:
        async with gate:
            cookie = f"__clerk_redirect_count=1; __session=x{secrets.token_hex(7000)}"
            await browser.once("GET", f"/dashboard/{i}?" + "q" * 7500, {**FETCH, "Cookie": cookie})

    await asyncio.gather(*(junk(i) for i in range(4200)))
    rt = browser.gateway.runtime
    held = sum(
        len(k) + len(v.token or "") + len(v.forwarded or b"") for k, v in rt._cookies.items()
    )
    held += sum(
        len(k[2]) + len(v.engine.target) for k, v in rt._located.items() if hasattr(v, "engine")
    )
    assert held < 32 * 2**20, f"{held / 2**20:.0f} MiB held by the caches"
    # the oldest go first: after the flood, a real user's Cookie header is remembered again
    cookie = "__session=abc; __client_uat=0"
    await browser.once("GET", "/public/x", {**FETCH, "Cookie": cookie})
    assert rt._cookies.get(cookie.encode()) is not None


@pytest.mark.timeout(300)
async def test_junk_authorization_headers_are_remembered_within_the_byte_bound(
    browser: Browser,
) -> None:
    """The token each Authorization value carries is remembered per value (the verifier's
    lookup then hashes no new kilobyte string): 5 MB of distinct junk leaves at most the
    memo's 4 MiB of keys, and a real token is remembered again afterwards."""
    gate = asyncio.Semaphore(32)

    async def junk(i: int) -> None:
        async with gate:
            token = f"{i}.{secrets.token_hex(6000)}"
            r = await browser.once("GET", "/dashboard/x", {"Authorization": f"Bearer {token}"})
            assert r.status == 401

    await asyncio.gather(*(junk(i) for i in range(420)))
    memo = browser.gateway.runtime._bearer
    assert 0 < memo.held_bytes <= 4 * 2**20
    assert sum(len(k) for k, _ in memo.items()) <= 4 * 2**20
    value = b"Bearer  abc.def.ghi "
    assert browser.gateway.runtime.bearer(value) == "abc.def.ghi"
    assert browser.gateway.runtime.bearer(value) is browser.gateway.runtime.bearer(value)
    assert memo.get(value) == "abc.def.ghi"
    assert browser.gateway.runtime.bearer(b"Basic dXNlcg==") is None
    assert browser.gateway.runtime.bearer(b"bearer xyz") == "xyz"
