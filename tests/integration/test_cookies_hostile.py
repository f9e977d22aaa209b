"""Cookies and claims a client or an identity provider shapes, with the shared test policy
(handshake off), real gateway on loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from tests.integration.conftest import Running


@pytest.fixture
def policy_edit() -> Callable[[str], str]:
    return lambda text: text.replace("max_header_bytes: 4096", "max_header_bytes: 16384")


def unsigned(claims: dict[str, object]) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "RS256", "kid": "ins_x"}).encode())
    return f"{header}.{part(json.dumps(claims).encode())}.{part(b'sig')}"


async def test_a_session_cookie_with_a_huge_iat_is_no_internal_error(gw: Running) -> None:
    # handshake off: Runtime.from_cookie -> extract -> _use_suffixed -> float(10**400)
    token = unsigned({"iss": gw.clerk.issuer, "iat": 10**400})
    cookie = f"__session={token}; __client_uat_{gw.clerk.cookie_suffix}=1"
    r = await gw.get("/public/x", headers={"Cookie": cookie})
    assert r.status != 500


@pytest.mark.parametrize("exp", [10**400, 1e308])
async def test_a_signed_token_that_never_expires_is_no_internal_error(
    gw: Running, exp: float
) -> None:
    # exp * 1000 is an int no float can hold, or infinity: both are "later than now", and
    # the compiled build must carry them as Python does (a C double cannot hold 10**403)
    token = gw.clerk.mint("user_2forever", claims={"exp": exp})
    for _ in range(2):  # verified, then from the cache
        r = await gw.get("/dashboard", token)
        assert r.status == 200


async def test_a_role_outside_ascii_does_not_drop_every_role(gw: Running) -> None:
    # contract: "A claim value with a control character is never sent"; a printable
    # non-ASCII role drops the whole X-Clerk-Role header (and the ASCII roles with it)
    token = gw.clerk.mint("user_2alice", claims={"metadata": {"role": ["admin", "Président"]}})
    r = await gw.get("/dashboard", token)
    assert r.status == 200
    assert "X-Clerk-Role" in dict(gw.upstream.last["headers"])


@pytest.mark.parametrize("host", ["[oops", "a]b", "a b", "x@y"])
async def test_a_host_that_is_no_authority_is_a_400(gw: Running, host: str) -> None:
    """RFC 9112 3.2: an invalid Host is a 400; it never reaches a route or the upstream."""
    before = len(gw.upstream.requests)
    r = await gw.get("/public/x", headers={"Host": host})
    assert r.status == 400
    assert (await r.json())["reason"] == "request-malformed"
    assert len(gw.upstream.requests) == before


async def test_handshake_parameters_never_reach_the_upstream_with_the_handshake_off(
    gw: Running,
) -> None:
    cookie = "__clerk_redirect_count=1; app=1"
    r = await gw.get("/public/x?__clerk_handshake_nonce=N&a=1", headers={"Cookie": cookie})
    assert r.status == 200
    last = gw.upstream.last
    assert last["raw_path"] == "/public/x?a=1"
    assert dict(last["headers"]).get("Cookie") == "app=1"
