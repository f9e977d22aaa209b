"""The stand-in's Backend API: key sets, users, and handshake payloads.

Everything under `/v1/` here answers only `Authorization: Bearer <secret key>`, as
api.clerk.com does, with Clerk's error shape `{"errors": [{code, message, long_message}]}`.
Each endpoint counts its calls and has knobs (a status to answer instead, a delay) so that
tests can stage an outage, a rate limit or a slow answer.
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.devclerk.standin import DevClerk

_MESSAGES = {
    429: ("too_many_requests", "Too many requests, please try again later."),
    500: ("internal_clerk_error", "Something went wrong on our side."),
    503: ("service_unavailable", "The service is temporarily unavailable."),
}


def clerk_error(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"errors": [{"code": code, "message": message, "long_message": message}]}
    return web.json_response(body, status=status, headers=headers)


def _staged(status: int, retry_after_s: int | None = None) -> web.Response:
    """The answer a knob asked for instead of the real one."""
    code, message = _MESSAGES.get(status, ("unexpected_error", f"Staged status {status}."))
    headers = {"Retry-After": str(retry_after_s)} if status == 429 and retry_after_s else None
    return clerk_error(status, code, message, headers=headers)


def add_routes(app: web.Application, clerk: DevClerk) -> None:
    api = _BackendAPI(clerk)
    app.router.add_get("/v1/jwks", api.backend_jwks)
    app.router.add_get("/.well-known/jwks.json", api.frontend_jwks)
    app.router.add_get("/v1/users/{user_id}", api.user)
    app.router.add_get("/v1/clients/handshake_payload", api.handshake_payload)


class _BackendAPI:
    def __init__(self, clerk: DevClerk) -> None:
        self.clerk = clerk

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.clerk.secret_key}"

    @staticmethod
    def _unauthorized() -> web.Response:
        return clerk_error(401, "clerk_key_invalid", "secret key invalid")

    async def backend_jwks(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            self.clerk.jwks_hits += 1
            return self._unauthorized()
        return await self.frontend_jwks(request)

    async def frontend_jwks(self, request: web.Request) -> web.StreamResponse:
        clerk = self.clerk
        clerk.jwks_hits += 1
        clerk.authorizations.append(request.headers.get("Authorization"))
        if clerk.delay_s:
            await asyncio.sleep(clerk.delay_s)
        if clerk.status != 200:
            return web.json_response({"errors": [{"code": "unavailable"}]}, status=clerk.status)
        if clerk.garbage:
            return web.Response(text="<html>not json</html>", content_type="text/html")
        return web.json_response(clerk.jwks())

    async def user(self, request: web.Request) -> web.Response:
        clerk = self.clerk
        clerk.users_hits += 1
        if not self._authorized(request):
            return self._unauthorized()
        if clerk.users_delay_s:
            await asyncio.sleep(clerk.users_delay_s)
        if clerk.users_status != 200:
            return _staged(clerk.users_status, clerk.users_retry_after_s)
        user = clerk.user(request.match_info["user_id"])
        if user is None:
            return clerk_error(404, "resource_not_found", "not found")
        return web.json_response(copy.deepcopy(user))

    async def handshake_payload(self, request: web.Request) -> web.Response:
        clerk = self.clerk
        clerk.handshake_payload_hits += 1
        if not self._authorized(request):
            return self._unauthorized()
        if clerk.handshake_payload_delay_s:
            await asyncio.sleep(clerk.handshake_payload_delay_s)
        if clerk.handshake_payload_status != 200:
            return _staged(clerk.handshake_payload_status)  # the nonce stays usable
        nonce = request.query.get("nonce")
        if not nonce:
            return clerk_error(400, "missing_parameter", "nonce is required")
        directives = clerk.take_nonce(nonce)
        if directives is None:
            return clerk_error(404, "resource_not_found", "no handshake payload for this nonce")
        return web.json_response({"directives": directives})
