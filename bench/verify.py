"""Micro-benchmark: session verifications per second (not a test; CI does not run it).

    .venv/bin/python bench/verify.py [--seconds 2]

Prints, for one core: a cold RS256 verification (every token new to the cache), a
verified-token cache hit, a rejected bad-signature token (first and repeated), and
PyJWT's decode for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import jwt

from gateway.clerk.jwks import KeyCache
from gateway.clerk.verifier import SessionVerifier
from gateway.devclerk import DevClerk
from gateway.model import ClerkSettings


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


async def main(seconds: float) -> None:
    clerk = DevClerk()
    settings = ClerkSettings(jwt_key=clerk.signer.public_pem(), issuer=clerk.issuer)
    keys = KeyCache(settings)
    pool = [clerk.mint(f"user_{i}", role="member", lifetime_s=3600) for i in range(20000)]
    print(f"token size: {len(pool[0])} bytes")
    cold = SessionVerifier(settings, keys, ("metadata", "role"))
    warm = SessionVerifier(settings, keys, ("metadata", "role"))
    await warm.verify(pool[0])
    head, body, sig = pool[0].split(".")
    bad = f"{head}.{body}.{sig[:-4]}AAAA"
    no_cache = SessionVerifier(
        ClerkSettings(jwt_key=settings.jwt_key, issuer=clerk.issuer, token_cache_size=0), keys, None
    )
    public = clerk.signer.private.public_key()
    rows = [
        (
            "cold RS256 verify (cache miss)",
            await arate(seconds, lambda i: cold.verify(pool[i % len(pool)])),
        ),
        ("verified-token cache hit", await arate(seconds, lambda i: warm.verify(pool[0]))),
        ("bad signature, first time (RSA)", await arate(seconds, lambda i: no_cache.verify(bad))),
        (
            "bad signature, repeated (failure cache)",
            await arate(seconds, lambda i: warm.verify(bad)),
        ),
        (
            "PyJWT decode, for comparison",
            rate(
                seconds,
                lambda i: jwt.decode(
                    pool[0], public, algorithms=["RS256"], options={"verify_aud": False}
                ),
            ),
        ),
    ]
    print(f"{'what':42} {'per second':>12} {'µs each':>9}")
    for name, per_s in rows:
        print(f"{name:42} {per_s:12,.0f} {1e6 / per_s:9.1f}")
    await keys.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    asyncio.run(main(parser.parse_args().seconds))
