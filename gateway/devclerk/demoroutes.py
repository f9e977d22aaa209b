"""Demo conveniences Clerk does not have: a token for curl, a profile change on demand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from gateway.devclerk.claims import parse_token_query
from gateway.devclerk.users import DEMO_USERS, USER_KINDS

if TYPE_CHECKING:
    from gateway.devclerk.standin import DevClerk

_PROFILE_FIELDS = ("first_name", "last_name", "email", "username", "image_url")


def add_routes(app: web.Application, clerk: DevClerk) -> None:
    demo = _Demo(clerk)
    app.router.add_get("/demo/token/{who}", demo.token)
    app.router.add_post("/demo/users", demo.user_event)


class _Demo:
    def __init__(self, clerk: DevClerk) -> None:
        self.clerk = clerk

    async def token(self, request: web.Request) -> web.Response:
        """`/demo/token/alice?org_id=org_1&org_role=admin&org_permissions=org:x:read&
        claims={"email":"a@b.c"}&lifetime=300`: a session token as text."""
        who = request.match_info["who"]
        if who not in DEMO_USERS:
            raise web.HTTPNotFound(
                text=f"unknown demo user {who!r}; try one of {sorted(DEMO_USERS)}"
            )
        query = request.query
        repeated = [k for k in query if len(query.getall(k)) > 1]
        asked = parse_token_query(query, repeated)
        if isinstance(asked, str):
            return web.Response(status=400, text=asked + "\n")
        user_id = DEMO_USERS[who][0]
        token = self.clerk.mint(
            user_id,
            role=self.clerk.role_of(user_id),
            lifetime_s=asked.lifetime_s,
            claims=asked.claims,
        )
        return web.Response(text=token)

    async def user_event(self, request: web.Request) -> web.Response:
        """A `user.*` event from a JSON body: applied to the user store and, when
        `webhook_url` is set, delivered signed to it. `type` defaults to `user.created`."""
        try:
            fields: Any = await request.json() if request.can_read_body else {}
        except ValueError:
            fields = {}
        if not isinstance(fields, dict):
            fields = {}
        kind = fields.get("type", "user.created")
        if kind not in USER_KINDS:
            return web.Response(status=400, text=f"type must be one of {', '.join(USER_KINDS)}\n")
        user_id = fields.get("user_id")
        if user_id is not None and (not isinstance(user_id, str) or not user_id):
            return web.Response(status=400, text="user_id must be a non-empty string\n")
        profile: dict[str, Any] = {k: str(v) for k, v in fields.items() if k in _PROFILE_FIELDS}
        if isinstance(fields.get("public_metadata"), dict):
            profile["public_metadata"] = fields["public_metadata"]
        event = self.clerk.user_event(kind, user_id, **profile)
        status = await self._deliver(event)
        return web.json_response(
            {"sent": kind, "user_id": event["data"]["id"], "gateway_status": status}
        )

    async def _deliver(self, event: dict[str, Any]) -> int | None:
        """The gateway's answer; None when there is no webhook URL or nothing answered."""
        if self.clerk.webhook_url is None:
            return None
        try:
            return await self.clerk.deliver(event)
        except aiohttp.ClientError:
            return None
