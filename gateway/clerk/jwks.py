"""The signing-key cache: the only I/O in verification, built to survive Clerk and attackers.

What Clerk's SDKs do not do, and this does:
- an unknown `kid` triggers at most ONE fetch per cooldown window (single-flight: requests
  arriving while it runs wait for it; requests later in the window fail fast), so random
  `kid`s cannot turn every request into a call to Clerk;
- a bad signature never triggers a fetch;
- when Clerk is unreachable or answers garbage, the last good keys keep verifying up to
  `jwks_max_stale_s`, then verification fails closed;
- keys are prefetched at startup and refreshed in the background, so the request path
  normally never waits on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from gateway.clerk.keys import load_pem_key
from gateway.clerk.tokens import EMPTY_KEYS, KeySet, VerifyKey
from gateway.decision import Reason
from gateway.model import ClerkSettings

log = logging.getLogger("clerk_gateway.jwks")

_ALGORITHMS = frozenset(["RS256", "RS384", "RS512"])
MAX_JWKS_BYTES = 1_048_576
UNREADY_KICK_INTERVAL_S = 1.0


class FetchError(Exception):
    """Why a key-set fetch failed; the message is safe to log (no secret, no body)."""


def parse_jwks(body: bytes) -> dict[str, VerifyKey]:
    """Usable RSA signing keys by kid. Raises FetchError when there are none."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchError("key set is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise FetchError("key set has no 'keys' list")
    keys: dict[str, VerifyKey] = {}
    for jwk in data["keys"]:
        parsed = _parse_jwk(jwk)
        if parsed is not None:
            keys[parsed[0]] = parsed[1]
    if not keys:
        raise FetchError("key set holds no usable RSA signing key")
    return keys


def _parse_jwk(jwk: Any) -> tuple[str, VerifyKey] | None:
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        return None
    kid, alg, use = jwk.get("kid"), jwk.get("alg"), jwk.get("use")
    if not isinstance(kid, str) or not kid:
        return None
    if alg is not None and alg not in _ALGORITHMS:
        return None
    if use is not None and use != "sig":
        return None
    try:
        key = RSAAlgorithm.from_jwk(jwk)
    except (InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(key, RSAPublicKey) or key.key_size < 2048:
        return None
    return kid, VerifyKey(key, alg)


@dataclass(frozen=True, slots=True)
class KeyCacheStats:
    ready: bool
    key_count: int
    age_s: float | None  # since the last successful fetch; None when never
    fetch_ok: int
    fetch_failed: int


class KeyCache:
    """Keys for verification. `resolve(kid)` is what the request path calls."""

    def __init__(
        self,
        settings: ClerkSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._now = monotonic
        self._keys: KeySet = EMPTY_KEYS
        self._fetched_at: float | None = None  # monotonic time of the last good fetch
        self._inflight: asyncio.Task[None] | None = None
        self._last_kid_fetch = float("-inf")
        self._last_unready_kick = float("-inf")
        self._refresher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._failures = 0
        self.fetch_ok = 0
        self.fetch_failed = 0
        self.on_fetch: Callable[[bool], None] | None = None  # metrics hook
        self._got_keys = asyncio.Event()
        # What cached verifications check on every hit, cheaply: the key set they were
        # made with is still the one held (`generation`), and it is not too stale
        # (`fresh_until`, wall-clock seconds).
        self.generation = 0
        self.fresh_until = 0.0
        if settings.jwt_key:
            # networkless mode: one PEM key verifies whatever kid a token names, as Clerk
            # does; a PEM declares no algorithm, so RS256, RS384 and RS512 are all accepted
            self._keys = KeySet({}, VerifyKey(load_pem_key(settings.jwt_key), None))
            self._fetched_at = float("inf")
            self.fresh_until = float("inf")

    @property
    def remote(self) -> bool:
        return not self.settings.jwt_key and self.settings.jwks_url is not None

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Prefetch (without blocking startup on it) and refresh in the background."""
        if not self.remote or self._refresher is not None:
            return
        self._refresher = asyncio.create_task(self._refresh_loop(), name="jwks-refresh")

    async def close(self) -> None:
        for task in (self._refresher, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._refresher = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- the request path -------------------------------------------------------------------

    def usable(self) -> bool:
        """Keys are held and not older than the maximum staleness."""
        if self._fetched_at is None:
            return False
        return self._now() - self._fetched_at <= self.settings.jwks.max_stale_s

    def known(self, kid: str | None) -> bool:
        """Is a key for `kid` still held and usable (cached verifications re-check this)?"""
        return self.usable() and self._keys.get(kid) is not None

    def keyset(self) -> KeySet | None:
        """The keys to verify with now, or None when none are usable (kicks a fetch)."""
        if self.usable():
            return self._keys
        if self.remote and self._now() - self._last_unready_kick >= UNREADY_KICK_INTERVAL_S:
            # no usable keys: let traffic hasten recovery, but at most once a second
            self._last_unready_kick = self._now()
            self._kick()
        return None

    def may_fetch(self, kid: str | None) -> bool:
        """Would resolving this unknown `kid` fetch keys (or wait for a fetch under way)?"""
        if not self.remote or kid is None or self._keys.get(kid) is not None:
            return False
        return self._inflight is not None or (
            self._now() - self._last_kid_fetch >= self.settings.jwks.kid_cooldown_s
        )

    async def resolve(self, kid: str | None) -> VerifyKey | Reason:
        if not self.usable():
            if self.remote and self._now() - self._last_unready_kick >= UNREADY_KICK_INTERVAL_S:
                # no usable keys: let traffic hasten recovery, but at most once a second
                self._last_unready_kick = self._now()
                self._kick()
            return Reason.JWK_REMOTE_FAILED_TO_LOAD
        key = self._keys.get(kid)
        if key is not None:
            return key
        if not self.remote or kid is None:
            return Reason.JWK_KID_MISMATCH
        if self._inflight is None:
            if self._now() - self._last_kid_fetch < self.settings.jwks.kid_cooldown_s:
                return Reason.JWK_KID_MISMATCH  # fail fast: one fetch per window
            self._last_kid_fetch = self._now()
            self._kick()
        assert self._inflight is not None
        # A request waits for one attempt at most; retries go on in the background, so a
        # hanging key server cannot hold requests for every attempt and backoff.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.settings.jwks.fetch_timeout_s):
                await asyncio.shield(self._inflight)
        key = self._keys.get(kid)
        return key if key is not None else Reason.JWK_KID_MISMATCH

    async def wait_ready(self, within_s: float) -> bool:
        """Wait (bounded) for usable keys; True when they arrived."""
        if self.usable():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._got_keys.wait()
        return self.usable()

    async def wait_first_fetch(self) -> bool:
        """Wait for the fetch started by `start()` (every attempt, bounded by their
        timeouts); True when it brought usable keys."""
        if self.usable() or not self.remote:
            return self.usable()
        jwks = self.settings.jwks
        bound = jwks.fetch_attempts * (jwks.fetch_timeout_s + 2.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                while not self.usable() and (self.fetch_ok + self.fetch_failed) == 0:
                    inflight = self._inflight
                    if inflight is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.shield(inflight)
                    else:
                        await asyncio.sleep(0.01)
        return self.usable()

    def stats(self) -> KeyCacheStats:
        age = None
        if self.remote and self._fetched_at is not None:
            age = self._now() - self._fetched_at
        count = len(self._keys.by_kid) + (1 if self._keys.any_kid else 0)
        return KeyCacheStats(self.usable(), count, age, self.fetch_ok, self.fetch_failed)

    # ---- fetching ---------------------------------------------------------------------------

    def _kick(self) -> None:
        """Start a fetch unless one is running (single-flight)."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch_once(), name="jwks-fetch")

    async def _refresh_loop(self) -> None:
        while True:
            self._kick()
            assert self._inflight is not None
            with contextlib.suppress(Exception):
                await asyncio.shield(self._inflight)
            delay = self.settings.jwks.refresh_interval_s
            if self._failures:
                # retry sooner while failing, with backoff and jitter, never hammering Clerk
                delay = min(delay, min(60.0, 2.0 ** min(self._failures, 6)))
                delay *= 1 + random.random()  # noqa: S311 - jitter, not security
            await asyncio.sleep(delay)

    async def _fetch_once(self) -> None:
        try:
            keys = await self._fetch_with_retries()
        except FetchError as exc:
            self._failures += 1
            self.fetch_failed += 1
            log.warning("signing keys not refreshed", extra={"reason": str(exc)})
            if self.on_fetch is not None:
                self.on_fetch(False)
            return
        finally:
            self._inflight = None
        if dict(keys) != dict(self._keys.by_kid):
            self.generation += 1  # verifications made with other keys are checked again
        self._keys = KeySet(keys)
        self._fetched_at = self._now()
        self.fresh_until = time.time() + self.settings.jwks.max_stale_s
        self._got_keys.set()
        self._failures = 0
        self.fetch_ok += 1
        if self.on_fetch is not None:
            self.on_fetch(True)

    async def _fetch_with_retries(self) -> Mapping[str, VerifyKey]:
        attempts = self.settings.jwks.fetch_attempts
        last: FetchError = FetchError("no attempt made")
        for attempt in range(attempts):
            try:
                return await self._fetch()
            except FetchError as exc:
                last = exc
            if attempt + 1 < attempts:
                await asyncio.sleep(0.125 * 2**attempt * (1 + random.random()))  # noqa: S311
        raise last

    async def _fetch(self) -> Mapping[str, VerifyKey]:
        url = self.settings.jwks_url
        assert url is not None
        headers = {"Accept": "application/json"}
        if self.settings.jwks_sends_secret:
            headers["Authorization"] = f"Bearer {self.settings.secret_key}"
        session = self._client()
        timeout = aiohttp.ClientTimeout(total=self.settings.jwks.fetch_timeout_s)
        try:
            async with session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise FetchError(f"key set fetch answered HTTP {resp.status}")
                body = await resp.content.read(MAX_JWKS_BYTES + 1)
        except TimeoutError:
            raise FetchError("key set fetch timed out") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"key set fetch failed: {type(exc).__name__}") from None
        if len(body) > MAX_JWKS_BYTES:
            raise FetchError("key set response is too large")
        return parse_jwks(body)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4), trust_env=False
            )
        return self._session
