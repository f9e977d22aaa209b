"""What the upstream learns about the user beyond the built-in ids: any claim of the session
token, the user's profile from Clerk's Backend API (the stand-in's), and a signed assertion
it can verify with PyJWT against the admin port's JWKS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import jwt
import pytest

from gateway.assertion import generate_pem
from tests.integration.conftest import Running

NAME = "Zoë Ångström-Ünal"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "assertion.pem"
    path.write_bytes(generate_pem())
    return path


@pytest.fixture
def policy_edit(key_file: Path) -> Callable[[str], str]:
    return lambda text: (
        text
        + f"""\
identity_headers:
  X-Clerk-Email: email
  X-Clerk-Full-Name: name
  X-Tenant: metadata.tenant
  X-Clerk-Groups: groups
  X-Clerk-Verified: email_verified
user_profile:
  headers:
    X-Clerk-User-Email: email
    X-Clerk-User-Name: name
    X-Clerk-User-Username: username
    X-Clerk-Plan: public_metadata.plan
  ttl_s: 300
  lookup_timeout_s: 1
assertion:
  issuer: https://gateway.test
  key_file: {key_file}
  ttl_s: 2
"""
    )


def seen(gw: Running) -> dict[str, str]:
    return dict(gw.upstream.last["headers"])


def alice(gw: Running, **claims: Any) -> str:
    base = {
        "email": "alice@example.com",
        "name": NAME,
        "metadata": {"role": "member", "tenant": "acme"},
        "groups": ["eng", "ops"],
        "email_verified": True,
    }
    return gw.clerk.mint("user_2alice", claims={**base, **claims})


# ---- any claim to any header ----------------------------------------------------------------


async def test_custom_claims_reach_the_upstream_as_configured(gw: Running) -> None:
    r = await gw.get("/dashboard", alice(gw))
    assert r.status == 200
    headers = seen(gw)
    assert headers["X-Clerk-Email"] == "alice@example.com"
    assert headers["X-Tenant"] == "acme"
    assert headers["X-Clerk-Groups"] == "eng,ops"
    assert headers["X-Clerk-Verified"] == "true"
    assert "X-Clerk-Email-Encoding" not in headers


async def test_a_name_outside_ascii_arrives_intact_in_the_documented_encoding(
    gw: Running,
) -> None:
    await gw.get("/dashboard", alice(gw))
    headers = seen(gw)
    assert headers["X-Clerk-Full-Name-Encoding"] == "percent"
    assert unquote(headers["X-Clerk-Full-Name"], errors="strict") == NAME
    # a value that would split the header is encoded too, never sent raw
    await gw.get("/dashboard", alice(gw, name="a\r\nX-Injected: 1"))
    headers = seen(gw)
    assert "X-Injected" not in headers
    assert unquote(headers["X-Clerk-Full-Name"]) == "a\r\nX-Injected: 1"


async def test_an_absent_claim_sends_no_header(gw: Running) -> None:
    token = gw.clerk.mint("user_2alice", claims={"metadata": {"role": "member"}})
    await gw.get("/dashboard", token)
    headers = seen(gw)
    assert "X-Tenant" not in headers
    assert "X-Clerk-Email" not in headers


@pytest.mark.parametrize(
    "forged",
    [
        {"X-Tenant": "evil"},
        {"x-tenant": "evil"},
        {"X_Tenant": "evil"},
        {"X-Clerk-Full-Name-Encoding": "percent"},
        {"X-Tenant-Encoding": "percent"},
        {"X-Clerk-Plan": "enterprise"},
        {"X-Clerk-Gateway-Assertion": "eyJ.forged.sig"},
    ],
)
async def test_a_client_can_forge_none_of_the_configured_headers(
    gw: Running, forged: dict[str, str]
) -> None:
    token = gw.clerk.mint("user_2alice", claims={"metadata": {"role": "member"}})
    for who in (token, None):  # signed in on a protected route, anonymous on a public one
        r = await gw.get("/dashboard" if who else "/public/x", who, headers=forged)
        assert r.status == 200
        names = {k.lower().replace("_", "-") for k in seen(gw)}
        for name, value in forged.items():
            key = name.lower().replace("_", "-")
            if key in names:
                assert seen(gw).get(name) != value, name
        assert "x-tenant" not in names
        assert "x-tenant-encoding" not in names


# ---- the user's profile ---------------------------------------------------------------------


async def test_profile_headers_come_from_the_backend_api_then_from_the_cache(
    gw: Running,
) -> None:
    token = alice(gw)
    await gw.get("/dashboard", token)
    headers = seen(gw)
    assert headers["X-Clerk-User-Email"] == "alice@example.com"
    assert headers["X-Clerk-User-Name"] == "Alice Liddell"
    assert headers["X-Clerk-User-Username"] == "alice"
    assert gw.clerk.users_hits == 1
    for _ in range(3):
        await gw.get("/dashboard", token)
    assert gw.clerk.users_hits == 1
    assert seen(gw)["X-Clerk-User-Email"] == "alice@example.com"
    lookups = gw.gateway.metrics.profile_lookups
    assert lookups["fetched"] == 1
    assert lookups["hit"] == 3


async def test_a_user_updated_webhook_changes_the_headers_without_a_lookup(
    gw: Running,
) -> None:
    gw.clerk.webhook_url = f"{gw.base}/api/webhooks/clerk"
    token = alice(gw)
    await gw.get("/dashboard", token)
    assert "X-Clerk-Plan" not in seen(gw)
    status = await gw.clerk.send_user_event(
        "user.updated",
        user_id="user_2alice",
        first_name="Alicia",
        email="alicia@example.com",
        public_metadata={"role": "member", "plan": "pro"},
    )
    assert status == 200
    await gw.get("/dashboard", token)
    headers = seen(gw)
    assert headers["X-Clerk-User-Name"] == "Alicia Liddell"
    assert headers["X-Clerk-User-Email"] == "alicia@example.com"
    assert headers["X-Clerk-Plan"] == "pro"
    assert gw.clerk.users_hits == 1
    # deleted: dropped from the cache, and not looked up again (a token minted before the
    # deletion may live on for a minute: its requests go on without the profile)
    status = await gw.clerk.send_user_event("user.deleted", user_id="user_2alice")
    assert status == 200
    r = await gw.get("/dashboard", token)
    assert r.status == 200
    assert "X-Clerk-User-Email" not in seen(gw)
    assert gw.clerk.users_hits == 1
    assert gw.gateway.metrics.profile_lookups["skipped"] == 1


@pytest.mark.parametrize("status", [500, 429])
async def test_a_failing_backend_api_never_fails_the_request(gw: Running, status: int) -> None:
    gw.clerk.users_status = status
    gw.clerk.users_retry_after_s = 30
    token = alice(gw)
    r = await gw.get("/dashboard", token)
    assert r.status == 200
    headers = seen(gw)
    assert headers["X-Clerk-User-Id"] == "user_2alice"
    assert "X-Clerk-User-Email" not in headers
    assert headers["X-Clerk-Email"] == "alice@example.com"  # claims do not need the API
    hits = gw.clerk.users_hits
    # paused, for Retry-After (429) or the outage backoff: no call per request
    for _ in range(5):
        assert (await gw.get("/dashboard", token)).status == 200
    assert gw.clerk.users_hits == hits
    result = "rate-limited" if status == 429 else "error"
    assert gw.gateway.metrics.profile_lookups[result] == 1


async def test_a_slow_backend_api_delays_a_first_request_at_most_the_timeout(
    gw: Running,
) -> None:
    gw.clerk.users_delay_s = 1.5  # lookup_timeout_s is 1
    token = alice(gw)
    r = await gw.get("/dashboard", token)
    assert r.status == 200
    assert "X-Clerk-User-Email" not in seen(gw)
    assert gw.gateway.metrics.profile_lookups["timeout"] == 1
    await asyncio.sleep(0.8)  # the lookup went on and finished
    await gw.get("/dashboard", token)
    assert seen(gw)["X-Clerk-User-Email"] == "alice@example.com"
    assert gw.clerk.users_hits == 1


async def test_concurrent_first_requests_share_one_lookup(gw: Running) -> None:
    gw.clerk.users_delay_s = 0.2
    token = alice(gw)
    results = await asyncio.gather(*(gw.get("/dashboard", token) for _ in range(8)))
    assert {r.status for r in results} == {200}
    assert gw.clerk.users_hits == 1


# ---- the signed assertion -------------------------------------------------------------------


async def jwks_client(gw: Running) -> jwt.PyJWKClient:
    url = f"{gw.admin}/.well-known/jwks.json"
    # PyJWKClient fetches with urllib: run it off the loop that serves the admin port
    client = jwt.PyJWKClient(url, cache_keys=False)
    await asyncio.to_thread(client.get_jwk_set)
    return client


async def verify(client: jwt.PyJWKClient, token: str, audience: str) -> dict[str, Any]:
    """What an upstream does, in four lines of PyJWT."""
    key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, issuer="https://gateway.test"
    )
    return claims


async def test_the_upstream_verifies_the_assertion_with_the_admin_jwks(gw: Running) -> None:
    token = gw.clerk.mint(
        "user_2alice",
        role="member",
        org={"id": "org_1", "slg": "acme", "rol": "admin", "per": "", "fpm": ""},
    )
    await gw.get("/dashboard", token)
    assertion = seen(gw)["X-Clerk-Gateway-Assertion"]
    client = await jwks_client(gw)
    claims = await verify(client, assertion, "default")
    assert claims["sub"] == "user_2alice"
    assert claims["role"] == "member"
    assert claims["org_id"] == "org_1"
    assert claims["org_role"] == "org:admin"
    assert claims["exp"] - claims["iat"] == 2
    assert claims["sid"].startswith("sess_")
    assert len(claims["jti"]) >= 16
    # minted for another upstream: refused
    with pytest.raises(jwt.InvalidAudienceError):
        await verify(client, assertion, "billing")
    # each upstream gets its own audience
    await gw.get("/rewritten/x", token)
    assert (await verify(client, seen(gw)["X-Clerk-Gateway-Assertion"], "rewritten"))["sub"]


async def test_an_assertion_replayed_after_exp_is_refused(gw: Running) -> None:
    await gw.get("/dashboard", alice(gw))
    captured = seen(gw)["X-Clerk-Gateway-Assertion"]
    client = await jwks_client(gw)
    assert (await verify(client, captured, "default"))["sub"] == "user_2alice"
    await asyncio.sleep(3.1)  # ttl_s is 2
    with pytest.raises(jwt.ExpiredSignatureError):
        await verify(client, captured, "default")
    # the gateway itself never forwards one that stale
    await gw.get("/dashboard", alice(gw))
    fresh = seen(gw)["X-Clerk-Gateway-Assertion"]
    assert (await verify(client, fresh, "default"))["exp"] > time.time()


async def test_assertions_are_minted_once_per_token_and_upstream(gw: Running) -> None:
    token = alice(gw)
    # ttl_s is 2 here: one is reused until its whole-second iat + 1 s, so start just
    # after a second begins (a second boundary mid-test would rightly mint a new one)
    await asyncio.sleep(1 - time.time() % 1 + 0.01)
    for _ in range(5):
        await gw.get("/dashboard", token)
    assertions = {dict(r["headers"])["X-Clerk-Gateway-Assertion"] for r in gw.upstream.requests}
    assert len(assertions) == 1  # reused while it has half its lifetime left


async def test_a_key_rotation_publishes_both_keys_and_switches_without_downtime(
    gw: Running, key_file: Path
) -> None:
    async with aiohttp.ClientSession() as http:

        async def kids() -> list[str]:
            async with http.get(f"{gw.admin}/.well-known/jwks.json") as r:
                return [k["kid"] for k in (await r.json())["keys"]]

        old = await kids()
        assert len(old) == 1
        new_pem = generate_pem()
        key_file.write_bytes(key_file.read_bytes() + new_pem)  # 1. publish, not signing
        assert await gw.gateway.reload()
        published = await kids()
        assert published[0] == old[0]
        assert len(published) == 2
        key_file.write_bytes(new_pem + key_file.read_bytes().replace(new_pem, b""))  # 2. sign
        assert await gw.gateway.reload()
        assert await kids() == [published[1], old[0]]
        await gw.get("/dashboard", alice(gw))
        header = jwt.get_unverified_header(seen(gw)["X-Clerk-Gateway-Assertion"])
        assert header["kid"] == published[1]
        # a broken key file is refused and changes nothing
        key_file.write_text("not a key")
        assert not await gw.gateway.reload()
        assert await kids() == [published[1], old[0]]
