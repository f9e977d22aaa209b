"""Clerk's Backend API, for what the request path needs from it besides keys: the
handshake payload behind a nonce, and user profiles.

Calls are bounded in time, the secret key goes only to `api_url`, and a failure is a
value (None), never an exception on the request path. Concurrent requests with one nonce
make one call; a nonce that failed is remembered briefly, so that it cannot make every
request ask Clerk again; a payload never is (a nonce stays single use).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
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
        self._payloads: dict[str, tuple[float, list[Any] | None]] = {}
        self._inflight: dict[str, asyncio.Future[list[Any] | None]] = {}

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

    async def handshake_payload(self, nonce: str) -> list[Any] | None:
        """The Set-Cookie directives behind a handshake nonce, or None."""
        now = time.monotonic()
        known = self._payloads.get(nonce)
        if known is not None and now < known[0]:
            return known[1]
        pending = self._inflight.get(nonce)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[list[Any] | None] = asyncio.get_running_loop().create_future()
        self._inflight[nonce] = future
        result: list[Any] | None = None
        try:
            data = await self._get("/v1/clients/handshake_payload", {"nonce": nonce})
            directives = data.get("directives") if isinstance(data, dict) else None
            result = directives if isinstance(directives, list) else None
        finally:
            del self._inflight[nonce]
            future.set_result(result)  # whoever waits with us is never left hanging
        if result is None:
            # only failures are remembered: a payload is a session's cookies, and a nonce
            # (single use at Clerk) must not become reusable here
            if len(self._payloads) >= REMEMBERED:
                del self._payloads[next(iter(self._payloads))]
            self._payloads[nonce] = (now + REMEMBER_S, None)
        return result

    async def user(self, user_id: str) -> Answer:
        """`GET /v1/users/{id}`: the user object, or why not (404, 429 and its
        Retry-After, a failure)."""
        return await self._call(f"/v1/users/{quote(user_id, safe='')}", {})

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        """GET a Backend API path; the JSON body, or None (logged) on any failure."""
        answer = await self._call(path, params)
        return answer.body if answer.status == 200 else None

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
