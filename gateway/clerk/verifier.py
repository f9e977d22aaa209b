"""Session verification with state: keys from the key cache, and two bounded caches in front
of THE verification sequence (`tokens.verify`).

A Clerk session token is reused for up to 60 s, so a verified-token cache turns a
session's repeated requests into a dict lookup instead of an RSA verification; it is asked
before the token is even decoded. Expiry is re-checked against `now` on every hit, and so
is the key: a cached verification stands only while the key set it was made with is the
one held and is not too stale.

A failure that can never turn into a success for the same token (bad signature, wrong
algorithm, garbage, expired, wrong issuer) is remembered briefly, so a flood of one bad
token costs one verification. Failures that time or a key fetch can change (unknown
`kid`, not active yet) are not remembered. The negative cache is keyed by a 16-byte
digest, so its memory is bounded whatever size of token clients send.

Verification is synchronous (RSA with a held key is pure CPU); only a token naming a key
the gateway does not hold yet needs an await, for the key fetch.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from gateway.clerk.claims import principal_from_claims
from gateway.clerk.jwks import KeyCache
from gateway.clerk.tokens import Decoded, VerifyOptions, decode, peek_claims, verify
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


class Verified:
    """A verified session token, as cached: who, until when, with which keys; and what
    the gateway derives from it once (the identity header block, per policy)."""

    __slots__ = (
        "assertions",
        "claims",
        "expires_ms",
        "generation",
        "identity",
        "identity_for",
        "kid",
        "last",
        "principal",
    )

    def __init__(
        self,
        principal: Principal,
        claims: Mapping[str, Any],
        kid: str | None,
        expires_ms: int | float,
        generation: int,
    ) -> None:
        self.principal = principal
        self.claims = claims
        self.kid = kid
        # the instant (ms) from which the token counts as expired; `int | float`, not
        # `float`: compiled, a float is a C double, and a signed exp of 10**400 fits in none
        self.expires_ms = expires_ms
        self.generation = generation
        self.identity: Any = None  # filled by the application on first use...
        self.identity_for: Any = None  # ...for the policy it was built with
        self.last: Any = None  # the application's memo: the last decision made with it
        self.assertions: Any = None  # ...and its signed assertions, per upstream


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
        # FIFO dicts (a dict lookup): expiry is checked on every hit anyway, so LRU or TTL
        # bookkeeping would only add cost to the request path.
        self.size = settings.token_cache_size
        # (OrderedDict: dropping the oldest is O(1); a dict's first key is found by scanning
        # past every slot deleted before it, microseconds per insert at 10,000 entries)
        self._verified: OrderedDict[str, Verified] = OrderedDict()
        self._failed: OrderedDict[bytes, tuple[Reason, float]] = OrderedDict()
        self.verifications = 0  # full (RSA) verifications performed, for tests and metrics

    # ---- the request path -------------------------------------------------------------------

    def cached(self, token: str) -> Verified | Reason | None:
        """The cached outcome for a token, asked before any decoding; None: not cached."""
        hit = self._verified.get(token)
        if hit is not None:
            now = self._clock()
            if now * 1000 >= hit.expires_ms:
                del self._verified[token]
                return Reason.TOKEN_EXPIRED
            keys = self.keys
            if hit.generation == keys.generation and now < keys.fresh_until:
                return hit
            if keys.known(hit.kid):
                hit.generation = keys.generation  # still held after a key-set change
                return hit
            del self._verified[token]  # its key left the key set: verify again
            return None
        if self._failed:
            failed = self._failed.get(_digest(token))
            if failed is not None and self._clock() < failed[1]:
                return failed[0]
        return None

    def verify_now(self, token: str) -> Verified | Reason | None:
        """Verify with the keys held (no I/O); None when the token names a key that a
        fetch may bring (then `verify` awaits it)."""
        keys = self.keys.keyset()
        if keys is None:
            return Reason.JWK_REMOTE_FAILED_TO_LOAD
        now = self._clock()
        self.verifications += 1
        result = verify(token, keys, now * 1000, self.options)
        if result is Reason.JWK_KID_MISMATCH and self.keys.may_fetch(_kid_of(token)):
            return None
        return self._remember(token, result, now)

    async def verify(self, token: str) -> Verified | Reason:
        """`cached`, then `verify_now`, then with a key fetch when one may help."""
        outcome = self.cached(token)
        if outcome is None:
            outcome = self.verify_now(token)
        if outcome is not None:
            return outcome
        key = await self.keys.resolve(_kid_of(token))
        if isinstance(key, Reason):
            return self._remember(token, key, self._clock())
        result = self.verify_now(token)
        return result if result is not None else Reason.JWK_KID_MISMATCH

    def peek(self, token: str) -> Mapping[str, Any] | None:
        """A token's claims for Clerk's cookie choice: from the cache when verified (no
        decoding on the hot path), else decoded without verification."""
        hit = self._verified.get(token)
        if hit is not None:
            return hit.claims
        return peek_claims(token)

    # ---- the caches -------------------------------------------------------------------------

    def _remember(self, token: str, result: Decoded | Reason, now: float) -> Verified | Reason:
        if isinstance(result, Reason):
            if self.size and result in _PERMANENT:
                if len(self._failed) >= self.size:
                    self._failed.popitem(last=False)
                self._failed[_digest(token)] = (result, now + FAILURE_TTL_S)
            return result
        claims = result.claims
        principal = principal_from_claims(claims, self.role_claim)
        if principal is None:
            return Reason.TOKEN_VERIFICATION_FAILED
        expires_ms = claims["exp"] * 1000 + self.options.clock_skew_ms
        verified = Verified(principal, claims, result.kid, expires_ms, self.keys.generation)
        if self.size:
            if len(self._verified) >= self.size:
                self._verified.popitem(last=False)
            self._verified[token] = verified
        return verified


def _kid_of(token: str) -> str | None:
    decoded = decode(token)
    return None if isinstance(decoded, Reason) else decoded.kid


def _digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode("utf-8", "replace"), digest_size=16).digest()
