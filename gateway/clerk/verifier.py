"""Session verification with state: keys from the key cache, and two bounded caches.

A Clerk session token is reused for up to 60 s, so a verified-token cache turns a
session's repeated requests into a dict lookup instead of an RSA verification. Expiry is
re-checked against `now` on every hit, and so is the key: a cached verification is
dropped as soon as its signing key leaves the key set or the keys grow too stale.

A failure that can never turn into a success for the same token (bad signature, wrong
algorithm, garbage, expired, wrong issuer) is remembered briefly, so a flood of one bad
token costs one verification. Failures that time or a key fetch can change (unknown
`kid`, not active yet) are not remembered. The negative cache is keyed by a 16-byte
digest, so its memory is bounded whatever size of token clients send.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import FIFOCache

from gateway.clerk.claims import principal_from_claims
from gateway.clerk.jwks import KeyCache
from gateway.clerk.tokens import (
    VerifyOptions,
    check_claims,
    check_header,
    check_signature,
    decode,
)
from gateway.decision import Principal, Reason
from gateway.model import ClerkSettings

FAILURE_TTL_S = 30.0
_PERMANENT = frozenset(
    [
        Reason.TOKEN_INVALID,
        Reason.TOKEN_TOO_LARGE,
        Reason.TOKEN_INVALID_ALGORITHM,
        Reason.TOKEN_INVALID_SIGNATURE,
        Reason.TOKEN_TYPE_MISMATCH,
        Reason.TOKEN_VERIFICATION_FAILED,
        Reason.TOKEN_INVALID_AUTHORIZED_PARTIES,
        Reason.TOKEN_INVALID_ISSUER,
        Reason.TOKEN_EXPIRED,
    ]
)


def options_for(settings: ClerkSettings) -> VerifyOptions:
    parties = settings.authorized_parties
    return VerifyOptions(
        issuer=settings.issuer,
        authorized_parties=frozenset(parties) if parties is not None else None,
        allow_missing_azp=settings.allow_missing_azp,
        clock_skew_ms=settings.clock_skew_ms,
    )


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    kid: str | None
    expires_ms: float  # the instant (ms) from which the token counts as expired


class SessionVerifier:
    def __init__(
        self,
        settings: ClerkSettings,
        keys: KeyCache,
        role_claim: tuple[str, ...] | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.options = options_for(settings)
        self.role_claim = role_claim
        self._clock = clock
        size = settings.token_cache_size
        # FIFO caches (a dict lookup, ~0.25 µs): expiry is checked on every hit anyway,
        # so LRU or TTL bookkeeping would only add cost to the request path.
        self._verified: FIFOCache[str, _Verified] | None = FIFOCache(size) if size else None
        self._failed: FIFOCache[bytes, tuple[Reason, float]] | None = (
            FIFOCache(size) if size else None
        )
        self.verifications = 0  # full (RSA) verifications performed, for tests and metrics

    def cached(self, token: str) -> Principal | Reason | None:
        """The cached outcome for a token (the hot path: no await), or None."""
        now = self._clock()
        if self._verified is not None:
            hit = self._verified.get(token)
            if hit is not None:
                if now * 1000 >= hit.expires_ms:
                    self._verified.pop(token, None)
                    return Reason.TOKEN_EXPIRED
                if self.keys.known(hit.kid):
                    return hit.principal
                self._verified.pop(token, None)  # its key left the key set: verify again
                return None
        if self._failed is not None:
            failed = self._failed.get(_digest(token))
            if failed is not None and now < failed[1]:
                return failed[0]
        return None

    async def verify(self, token: str) -> Principal | Reason:
        cached = self.cached(token)
        if cached is not None:
            return cached
        return await self.verify_uncached(token)

    async def verify_uncached(self, token: str) -> Principal | Reason:
        now = self._clock()
        result = await self._verify(token, now * 1000)
        if isinstance(result, Reason):
            if self._failed is not None and result in _PERMANENT:
                self._failed[_digest(token)] = (result, now + FAILURE_TTL_S)
            return result
        if self._verified is not None:
            self._verified[token] = result
        return result.principal

    async def _verify(self, token: str, now_ms: float) -> _Verified | Reason:
        decoded = decode(token)
        if isinstance(decoded, Reason):
            return decoded
        failure = check_header(decoded.header)
        if failure is not None:
            return failure
        key = await self.keys.resolve(decoded.kid)
        if isinstance(key, Reason):
            return key
        self.verifications += 1
        failure = check_signature(decoded, key) or check_claims(
            decoded.claims, now_ms, self.options
        )
        if failure is not None:
            return failure
        principal = principal_from_claims(decoded.claims, self.role_claim)
        if principal is None:
            return Reason.TOKEN_VERIFICATION_FAILED
        exp = decoded.claims["exp"]
        return _Verified(principal, decoded.kid, exp * 1000 + self.options.clock_skew_ms)


def _digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode("utf-8", "replace"), digest_size=16).digest()
