"""Micro-benchmark: session verifications per second (not a test; CI does not run it).

    .venv/bin/python bench/verify.py [--seconds 2]

Prints, for one core: a cold RS256 verification (every token new to the cache), a
verified-token cache hit, a rejected bad-signature token (first and repeated), the cookie
path (the verifier's `peek` that Clerk's cookie choice reads, and `extract` from parsed
cookies with it), and PyJWT's decode for comparison. Each path is checked to give the
outcome it is named after before it is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import jwt
from minting import claim, mint_tokens

from gateway.clerk.jwks import KeyCache
from gateway.clerk.keys import parse_publishable_key
from gateway.clerk.tokens import extract
from gateway.clerk.verifier import SessionVerifier, Verified
from gateway.decision import Reason
from gateway.devclerk import DevClerk
from gateway.model import ClerkSettings
from gateway.runtime import parse_cookies

POOL = 2000  # tokens the cold verifier cycles through: twice its cache, so every one misses


def rate(seconds: float, fn: Callable[[int], object]) -> float:
    n = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn(n)
            n += 1
    return n / (time.perf_counter() - start)


async def arate(seconds: float, fn: Callable[[int], Awaitable[object]]) -> float:
    n = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            await fn(n)
            n += 1
    return n / (time.perf_counter() - start)


def expect(what: str, outcome: object, wanted: type | Reason) -> None:
    ok = outcome is wanted if isinstance(wanted, Reason) else isinstance(outcome, wanted)
    if not ok:
        raise SystemExit(f"{what}: got {outcome!r}, expected {wanted!r}: the API changed?")


async def main(seconds: float) -> None:
    clerk = DevClerk()
    settings = ClerkSettings(
        publishable_key=parse_publishable_key(clerk.publishable_key),
        jwt_key=clerk.signer.public_pem(),
        issuer=clerk.issuer,
    )
    keys = KeyCache(settings)
    await keys.start()
    pool = mint_tokens(clerk, POOL, role="member")
    print(f"token size: {len(pool[0])} bytes")

    def verifier(cache_size: int) -> SessionVerifier:
        sized = ClerkSettings(
            publishable_key=settings.publishable_key,
            jwt_key=settings.jwt_key,
            issuer=settings.issuer,
            token_cache_size=cache_size,
        )
        return SessionVerifier(sized, keys, ("metadata", "role"))

    cold, warm, no_cache = verifier(POOL // 2), verifier(10_000), verifier(0)
    token = pool[0]
    head, body, sig = token.split(".")
    bad = f"{head}.{body}.{sig[:-4]}AAAA"
    expect("verify (cache miss)", await cold.verify(pool[1]), Verified)
    expect("verify", await warm.verify(token), Verified)
    expect("cached", warm.cached(token), Verified)
    expect("verify_now", no_cache.verify_now(token), Verified)
    expect("bad signature", await no_cache.verify(bad), Reason.TOKEN_INVALID_SIGNATURE)
    expect("bad signature", await warm.verify(bad), Reason.TOKEN_INVALID_SIGNATURE)
    expect("bad signature, cached", warm.cached(bad), Reason.TOKEN_INVALID_SIGNATURE)

    # The cookie path: Clerk's cookie choice (with a publishable key) peeks at the token's
    # `iss` and `iat`; the verifier's peek answers from its cache when the token is verified.
    instance = settings.publishable_key
    header = f"__client_uat={claim(token, 'iat')}; __session={token}"
    cookies = parse_cookies(header)
    now = time.time()
    found = extract(None, cookies, instance, now, warm.peek)
    if found.token != token or found.source != "cookie":
        raise SystemExit(f"extract from the cookie found {found!r}: the API changed?")
    if warm.peek(token) is None or no_cache.peek(token) is None:
        raise SystemExit("peek found no claims: the API changed?")

    def cookie_path(_: int) -> object:
        extracted = extract(None, parse_cookies(header), instance, time.time(), warm.peek)
        assert extracted.token is not None
        return warm.cached(extracted.token)

    public = clerk.signer.private.public_key()
    rows = [
        (
            "cold RS256 verify (cache miss)",
            await arate(seconds, lambda i: cold.verify(pool[i % POOL])),
        ),
        ("verified-token cache hit", await arate(seconds, lambda i: warm.verify(token))),
        ("  cached() alone (sync)", rate(seconds, lambda i: warm.cached(token))),
        ("bad signature, first time (RSA)", await arate(seconds, lambda i: no_cache.verify(bad))),
        (
            "bad signature, repeated (failure cache)",
            await arate(seconds, lambda i: warm.verify(bad)),
        ),
        ("cookie: peek, verified token (cache)", rate(seconds, lambda i: warm.peek(token))),
        ("cookie: peek, unknown token (decode)", rate(seconds, lambda i: no_cache.peek(token))),
        (
            "cookie: extract (Clerk's choice, peek)",
            rate(seconds, lambda i: extract(None, cookies, instance, now, warm.peek)),
        ),
        ("cookie: parse + extract + cache hit", rate(seconds, cookie_path)),
        (
            "PyJWT decode, for comparison",
            rate(
                seconds,
                lambda i: jwt.decode(
                    token, public, algorithms=["RS256"], options={"verify_aud": False}
                ),
            ),
        ),
    ]
    print(f"{'what':42} {'per second':>12} {'µs each':>9}")
    for name, per_s in rows:
        print(f"{name:42} {per_s:12,.0f} {1e6 / per_s:9.1f}")
    await keys.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement (2)")
    asyncio.run(main(parser.parse_args().seconds))
