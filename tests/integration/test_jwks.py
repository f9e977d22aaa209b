"""The key cache against a real loopback JWKS server (the Clerk stand-in)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import jwt
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.clerk.jwks import FetchError, KeyCache, parse_jwks
from gateway.clerk.tokens import VerifyKey
from gateway.clerk.verifier import SessionVerifier, Verified
from gateway.decision import Reason
from gateway.devclerk import DevClerk
from gateway.model import ClerkSettings, JwksSettings
from tests.helpers import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server(devclerk: DevClerk, aiohttp_server: Callable[..., object]) -> TestServer:
    srv = await aiohttp_server(devclerk.app())  # type: ignore[operator]
    assert isinstance(srv, TestServer)
    return srv


def settings_for(clerk: DevClerk, server: TestServer, **jwks: float) -> ClerkSettings:
    base = str(server.make_url("")).rstrip("/")
    options = {
        "refresh_interval_s": 3600.0,
        "kid_cooldown_s": 30.0,
        "max_stale_s": 600.0,
        "fetch_timeout_s": 2.0,
        "fetch_attempts": 1,
    }
    options.update(jwks)
    return ClerkSettings(
        secret_key=clerk.secret_key,
        api_url=base,
        jwks_url=f"{base}/v1/jwks",
        issuer=clerk.issuer,
        jwks=JwksSettings(**options),  # type: ignore[arg-type]
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cache(devclerk: DevClerk, server: TestServer, clock: Clock) -> AsyncIterator[KeyCache]:
    keys = KeyCache(settings_for(devclerk, server), monotonic=clock)
    await keys.start()
    await wait_until(keys.usable)
    yield keys
    await keys.close()


async def test_prefetch_at_start_sends_the_secret_key(cache: KeyCache, devclerk: DevClerk) -> None:
    assert devclerk.jwks_hits == 1
    assert devclerk.authorizations == [f"Bearer {devclerk.secret_key}"]
    assert isinstance(await cache.resolve(devclerk.signer.kid), VerifyKey)
    assert cache.stats().ready


async def test_key_rotation_is_picked_up(
    cache: KeyCache, devclerk: DevClerk, spare_keys: list[rsa.RSAPrivateKey]
) -> None:
    new = devclerk.rotate(spare_keys[0])
    assert isinstance(await cache.resolve(new.kid), VerifyKey)
    assert devclerk.jwks_hits == 2


async def test_random_kids_cause_at_most_one_fetch_per_cooldown(
    cache: KeyCache, devclerk: DevClerk, clock: Clock
) -> None:
    results = await asyncio.gather(
        *(cache.resolve(f"ins_{secrets.token_hex(8)}") for _ in range(1000))
    )
    assert set(results) == {Reason.JWK_KID_MISMATCH}
    assert devclerk.jwks_hits == 2  # the prefetch and ONE fetch for the flood
    await asyncio.gather(*(cache.resolve(f"ins_{secrets.token_hex(8)}") for _ in range(1000)))
    assert devclerk.jwks_hits == 2  # still inside the cooldown window
    clock.now += 31
    await asyncio.gather(*(cache.resolve(f"ins_{secrets.token_hex(8)}") for _ in range(1000)))
    assert devclerk.jwks_hits == 3  # a new window allows one more


async def test_clerk_down_keeps_cached_keys_then_fails_closed(
    cache: KeyCache, devclerk: DevClerk, clock: Clock
) -> None:
    devclerk.status = 503
    clock.now += 31
    assert await cache.resolve("ins_unknown") is Reason.JWK_KID_MISMATCH  # a failed fetch...
    assert isinstance(await cache.resolve(devclerk.signer.kid), VerifyKey)  # ...keeps the keys
    assert cache.stats().fetch_failed == 1
    clock.now += 601  # past jwks_max_stale_s
    assert await cache.resolve(devclerk.signer.kid) is Reason.JWK_REMOTE_FAILED_TO_LOAD
    assert not cache.usable()


@pytest.mark.parametrize("breakage", ["garbage", "empty", "status"])
async def test_a_bad_answer_never_replaces_held_keys(
    cache: KeyCache, devclerk: DevClerk, clock: Clock, breakage: str
) -> None:
    if breakage == "garbage":
        devclerk.garbage = True
    elif breakage == "empty":
        devclerk.keys = []
    else:
        devclerk.status = 500
    kid = "ins_test_key_1"
    clock.now += 31
    await cache.resolve("ins_other")
    assert isinstance(await cache.resolve(kid), VerifyKey)


async def test_a_slow_jwks_server_does_not_stall_known_kids(
    cache: KeyCache, devclerk: DevClerk
) -> None:
    devclerk.delay_s = 1.5
    slow = asyncio.create_task(cache.resolve("ins_unknown"))
    await asyncio.sleep(0.05)
    known = await asyncio.wait_for(cache.resolve(devclerk.signer.kid), timeout=0.5)
    assert isinstance(known, VerifyKey)
    assert not slow.done()
    assert await slow is Reason.JWK_KID_MISMATCH


async def test_before_any_keys_requests_get_unavailable(
    devclerk: DevClerk, server: TestServer, clock: Clock
) -> None:
    devclerk.status = 500
    keys = KeyCache(settings_for(devclerk, server), monotonic=clock)
    try:
        assert await keys.resolve(devclerk.signer.kid) is Reason.JWK_REMOTE_FAILED_TO_LOAD
        assert not keys.stats().ready
        await wait_until(lambda: keys.stats().fetch_failed >= 1)
        devclerk.status = 200
        assert await keys.resolve(devclerk.signer.kid) is Reason.JWK_REMOTE_FAILED_TO_LOAD
        assert devclerk.jwks_hits == 1  # at most one request-triggered fetch a second
        clock.now += 1
        assert await keys.resolve(devclerk.signer.kid) is Reason.JWK_REMOTE_FAILED_TO_LOAD
        await wait_until(keys.usable)  # that request's kick fetched them
        assert isinstance(await keys.resolve(devclerk.signer.kid), VerifyKey)
    finally:
        await keys.close()


async def test_wrong_secret_key_is_a_failed_fetch(
    devclerk: DevClerk, server: TestServer, clock: Clock
) -> None:
    settings = replace(settings_for(devclerk, server), secret_key="sk_test_wrong")
    keys = KeyCache(settings, monotonic=clock)
    try:
        await keys.start()
        await wait_until(lambda: keys.stats().fetch_failed >= 1)
        assert not keys.usable()
    finally:
        await keys.close()


async def test_the_secret_is_never_sent_outside_api_url(
    devclerk: DevClerk, server: TestServer, clock: Clock
) -> None:
    base = str(server.make_url("")).rstrip("/")
    settings = replace(
        settings_for(devclerk, server),
        api_url="https://api.clerk.com",
        jwks_url=f"{base}/.well-known/jwks.json",
    )
    keys = KeyCache(settings, monotonic=clock)
    try:
        await keys.start()
        await wait_until(keys.usable)
        assert devclerk.authorizations == [None]
    finally:
        await keys.close()


def test_parse_jwks_keeps_only_usable_rsa_signing_keys(devclerk: DevClerk) -> None:
    good = devclerk.signer.jwk()
    body = {
        "keys": [
            good,
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": "hs", "alg": "HS256"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "a", "y": "b"},
            {**good, "kid": "broken", "n": "!!"},
            "not a key",
        ]
    }
    import json

    assert list(parse_jwks(json.dumps(body).encode())) == [devclerk.signer.kid]
    for bad in (b"[]", b"{}", b'{"keys": []}', b"nope"):
        with pytest.raises(FetchError):
            parse_jwks(bad)


# ---- the verifier with its caches ----------------------------------------------------------


@pytest.fixture
def verifier(cache: KeyCache, devclerk: DevClerk, server: TestServer) -> SessionVerifier:
    return SessionVerifier(settings_for(devclerk, server), cache, ("metadata", "role"))


async def test_a_session_costs_one_verification(
    verifier: SessionVerifier, devclerk: DevClerk
) -> None:
    token = devclerk.mint("user_1", role="admin")
    for _ in range(100):
        verified = await verifier.verify(token)
        assert isinstance(verified, Verified)
        assert verified.principal.roles == ("admin",)
    assert verifier.verifications == 1


async def test_cache_hits_recheck_expiry(
    cache: KeyCache, devclerk: DevClerk, server: TestServer
) -> None:
    now = [2_000_000_000.0]
    verifier = SessionVerifier(settings_for(devclerk, server), cache, None, clock=lambda: now[0])
    token = devclerk.mint("user_1", now=now[0], lifetime_s=60)
    assert isinstance(await verifier.verify(token), Verified)
    now[0] += 64
    assert isinstance(await verifier.verify(token), Verified)  # inside the 5 s skew
    now[0] += 1
    assert await verifier.verify(token) is Reason.TOKEN_EXPIRED
    assert verifier.verifications == 1


async def test_a_flood_of_one_bad_token_costs_one_verification(
    verifier: SessionVerifier, devclerk: DevClerk
) -> None:
    token = devclerk.mint("user_1")
    head, body, sig = token.split(".")
    forged = f"{head}.{body}.{sig[:-4]}AAAA"
    for _ in range(1000):
        assert await verifier.verify(forged) is Reason.TOKEN_INVALID_SIGNATURE
    assert verifier.verifications == 1
    assert devclerk.jwks_hits == 1  # and a bad signature never fetches


async def test_a_retired_key_drops_cached_verifications(
    verifier: SessionVerifier,
    cache: KeyCache,
    devclerk: DevClerk,
    clock: Clock,
    spare_keys: list[rsa.RSAPrivateKey],
) -> None:
    old = devclerk.signer
    token = devclerk.mint("user_1")
    assert isinstance(await verifier.verify(token), Verified)
    new = devclerk.rotate(spare_keys[1])
    devclerk.retire(old.kid)
    assert isinstance(await cache.resolve(new.kid), VerifyKey)  # fetch: old kid gone
    assert await verifier.verify(token) is Reason.JWK_KID_MISMATCH


async def test_forged_tokens_through_the_verifier(
    verifier: SessionVerifier, devclerk: DevClerk, spare_keys: list[rsa.RSAPrivateKey]
) -> None:
    claims = jwt.decode(devclerk.mint("user_1"), options={"verify_signature": False})
    other_instance = jwt.encode(
        {**claims, "iss": "https://clerk.other.dev"},
        devclerk.signer.private,
        algorithm="RS256",
        headers={"kid": devclerk.signer.kid},
    )
    cases = [
        (
            jwt.encode(claims, "a" * 32, algorithm="HS256", headers={"kid": devclerk.signer.kid}),
            Reason.TOKEN_INVALID_ALGORITHM,
        ),
        (
            jwt.encode(
                claims, spare_keys[0], algorithm="RS256", headers={"kid": devclerk.signer.kid}
            ),
            Reason.TOKEN_INVALID_SIGNATURE,
        ),
        (other_instance, Reason.TOKEN_INVALID_ISSUER),
        ("x" * 20000, Reason.TOKEN_TOO_LARGE),
        ("", Reason.TOKEN_INVALID),
    ]
    for token, expected in cases:
        assert await verifier.verify(token) is expected
