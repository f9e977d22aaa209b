"""Clerk's Backend API, for what the request path needs from it besides keys: the
handshake payload behind a nonce, and user profiles.

Calls are bounded in time, the secret key goes only to `api_url`, and a failure is a
value (None), never an exception on the request path. Concurrent requests with one nonce
make one call; a nonce that failed is remembered briefly, so that it cannot make every
request ask Clerk again; a payload never is (a nonce stays single use).

Anyone can put a made-up nonce in a URL, and Clerk's Backend API quota (per secret key)
is shared with every other service of the application: a nonce must look like one, each
client has a small budget of resolutions and all clients together a larger one, and a
429's Retry-After pauses them all. A nonce refused for any of these is a failed
resolution: the request goes on by its cookies.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway.model import ClerkSettings

log = logging.getLogger("clerk_gateway.clerk")

API_VERSION = "2026-05-12"
TIMEOUT_S = 5.0
REMEMBER_S = 30.0
REMEMBERED = 10_000
MAX_BODY = 1_048_576
# A nonce as Clerk issues them (URL-safe characters; generous bounds): anything else is
# not sent to Clerk at all.
_NONCE = re.compile(r"[A-Za-z0-9_.~-]{8,512}")
# Nonce resolutions: each client (an IPv4 address, an IPv6 /64: one host holds a whole
# /64) may make PER_CLIENT_BURST at once and PER_CLIENT_RATE per second after (an office
# behind one NAT address is many browsers); all clients together ALL_BURST and ALL_RATE,
# under a third of Clerk's documented 1000 requests per 10 s per key at a steady rate
# (450 in the first 10 s after a quiet spell): the rest stays for the application's own
# calls, whatever anyone sends.
PER_CLIENT_BURST, PER_CLIENT_RATE = 20.0, 5.0
ALL_BURST, ALL_RATE = 150.0, 30.0
CLIENTS_TRACKED = 10_000


class Bucket:
    """A token bucket: `take` spends one token if there is one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst, self.rate, self.tokens, self.stamp = burst, rate, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _slash64(address: str) -> str:
    """An IPv6 client as its /64 (anything else as it is)."""
    try:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    except ValueError:
        return address


class Budget:
    """Who may make the Backend API resolve a nonce now: per client and for everyone, and
    nobody while Clerk asked us to wait (429 Retry-After)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._all = Bucket(ALL_BURST, ALL_RATE, clock())
        self._clients: OrderedDict[str, Bucket] = OrderedDict()  # oldest out in O(1)
        self._paused_until = 0.0

    def allows(self, client: str) -> bool:
        """`client`: the browser's address, or "" when it is not known (only a trusted
        proxy's address was seen: every browser behind it would share one budget)."""
        now = self._clock()
        if now < self._paused_until:
            return False
        if not client:
            return self._all.take(now)
        if ":" in client:
            client = _slash64(client)
        bucket = self._clients.get(client)
        if bucket is None:
            if len(self._clients) >= CLIENTS_TRACKED:  # the oldest client first
                self._clients.popitem(last=False)
            bucket = self._clients[client] = Bucket(PER_CLIENT_BURST, PER_CLIENT_RATE, now)
        return bucket.take(now) and self._all.take(now)

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)


@dataclass(frozen=True, slots=True)
class Answer:
    """A Backend API answer: its status (0: no answer at all), the JSON body on 200, and
    the Retry-After of a 429 or 503."""

    status: int
    body: Any = None
    retry_after_s: float | None = None


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by Clerk's API)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), 3600.0)


def _shape(path: str) -> str:
    """A path for logs without the id in it (user ids are personal data in some logs)."""
    return "/v1/users/{id}" if path.startswith("/v1/users/") else path


class BackendAPI:
    def __init__(self, settings: ClerkSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._payloads: OrderedDict[str, tuple[float, list[Any] | None]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[list[Any] | None]] = {}
        self.budget = Budget()

    def serves(self, settings: ClerkSettings) -> bool:
        """Whether this client talks to the same Backend API with the same secret."""
        return (settings.api_url, settings.secret_key) == (
            self.settings.api_url,
            self.settings.secret_key,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handshake_payload(self, nonce: str, client: str) -> list[Any] | None:
        """The Set-Cookie directives behind a handshake nonce, or None (also when the nonce
        cannot be one, or `client` or everyone spent its budget)."""
        now = time.monotonic()
        known = self._payloads.get(nonce)
        if known is not None and now < known[0]:
            return known[1]
        pending = self._inflight.get(nonce)
        if pending is not None:
            return await asyncio.shield(pending)
        if _NONCE.fullmatch(nonce) is None:
            return None
        if not self.budget.allows(client):
            log.warning("handshake nonce not resolved: over budget", extra={"client": client})
            return None
        future: asyncio.Future[list[Any] | None] = asyncio.get_running_loop().create_future()
        self._inflight[nonce] = future
        result: list[Any] | None = None
        try:
            answer = await self._call("/v1/clients/handshake_payload", {"nonce": nonce})
            if answer.status == 429:
                self.budget.pause(answer.retry_after_s or 1.0)
            data = answer.body if answer.status == 200 else None
            directives = data.get("directives") if isinstance(data, dict) else None
            result = directives if isinstance(directives, list) else None
        finally:
            del self._inflight[nonce]
            future.set_result(result)  # whoever waits with us is never left hanging
        if result is None:
            # only failures are remembered: a payload is a session's cookies, and a nonce
            # (single use at Clerk) must not become reusable here
            if len(self._payloads) >= REMEMBERED:
                self._payloads.popitem(last=False)
            self._payloads[nonce] = (now + REMEMBER_S, None)
        return result

    async def user(self, user_id: str) -> Answer:
        """`GET /v1/users/{id}`: the user object, or why not (404, 429 and its
        Retry-After, a failure)."""
        return await self._call(f"/v1/users/{quote(user_id, safe='')}", {})

    async def _call(self, path: str, params: dict[str, str]) -> Answer:
        """GET a Backend API path, bounded in time and size; never raises."""
        secret = self.settings.secret_key
        if not secret:
            return Answer(0)
        url = self.settings.api_url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {secret}", "Clerk-API-Version": API_VERSION}
        try:
            async with asyncio.timeout(TIMEOUT_S):
                async with self._client().get(
                    url, params=params, headers=headers, allow_redirects=False
                ) as resp:
                    body = await resp.content.read(MAX_BODY + 1)
                    status = resp.status
                    retry_after = _seconds(resp.headers.get("Retry-After"))
            if status != 200:
                log.warning(
                    "backend API call failed", extra={"path": _shape(path), "status": status}
                )
                return Answer(status, retry_after_s=retry_after)
            if len(body) > MAX_BODY:
                return Answer(0)
            return Answer(200, json.loads(body))
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            log.warning(
                "backend API call failed", extra={"path": _shape(path), "error": type(exc).__name__}
            )
            return Answer(0)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16), trust_env=False
            )
        return self._session
