"""DevClerk: the stand-in's state and knobs, token minting, and its HTTP app.

Session tokens have Clerk's real v2 claim shape (60 s lifetime, `nbf` 10 s before `iat`,
`azp`, `sid`, `fva`, `v: 2`, the `cat` header, custom `metadata.role`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.clerk.tokens import SESSION_CATEGORY
from gateway.devclerk.keys import SigningKey, new_kid, new_rsa_key, publishable_key_for

DEFAULT_FRONTEND_API = "clerk.gateway-demo.localhost"
LOOPBACK = frozenset(["127.0.0.1", "::1", "localhost"])


@dataclass
class DevClerk:
    """State and knobs of the stand-in. `app()` serves it; `mint()` needs no server."""

    frontend_api: str = DEFAULT_FRONTEND_API
    secret_key: str = field(default_factory=lambda: "sk_test_" + secrets.token_urlsafe(24))
    origin: str = "http://127.0.0.1:8080"
    keys: list[SigningKey] = field(default_factory=list)
    # knobs for tests
    status: int = 200
    garbage: bool = False
    delay_s: float = 0.0
    jwks_hits: int = 0
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_url: str | None = None
    authorizations: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys.append(SigningKey(new_kid(), new_rsa_key()))

    @property
    def publishable_key(self) -> str:
        return publishable_key_for(self.frontend_api)

    @property
    def issuer(self) -> str:
        return f"https://{self.frontend_api}"

    @property
    def signer(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, key: rsa.RSAPrivateKey | None = None) -> SigningKey:
        """Publish a new key and sign with it from now on (old keys stay published)."""
        new = SigningKey(new_kid(), key or new_rsa_key())
        self.keys.append(new)
        return new

    def retire(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k.kid != kid]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def mint(
        self,
        user_id: str = "user_2demo",
        *,
        role: str | None = None,
        org: Mapping[str, Any] | None = None,
        lifetime_s: int = 60,
        now: float | None = None,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """A session token shaped like Clerk's v2 tokens. `claims` overrides or adds."""
        iat = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "azp": self.origin,
            "exp": iat + lifetime_s,
            "fva": [0, -1],
            "iat": iat,
            "iss": self.issuer,
            "jti": secrets.token_hex(10),
            "nbf": iat - 10,
            "sid": "sess_" + secrets.token_hex(12),
            "sub": user_id,
            "v": 2,
        }
        if role is not None:
            payload["metadata"] = {"role": role}
        if org is not None:
            payload["o"] = dict(org)
        payload.update(claims or {})
        payload = {k: v for k, v in payload.items() if v is not None}
        signer = key or self.signer
        header: dict[str, Any] = {"kid": signer.kid, "typ": "JWT", "cat": SESSION_CATEGORY}
        header.update(headers or {})
        return jwt.encode(payload, signer.private, algorithm="RS256", headers=header)

    # ---- HTTP -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/jwks", self._backend_jwks)
        app.router.add_get("/.well-known/jwks.json", self._frontend_jwks)
        app.router.add_get("/demo/token/{who}", self._demo_token)
        app.router.add_post("/demo/users", self._demo_user)
        return app

    async def _backend_jwks(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.secret_key}":
            self.jwks_hits += 1
            return web.json_response(
                {"errors": [{"code": "clerk_key_invalid", "message": "secret key invalid"}]},
                status=401,
            )
        return await self._frontend_jwks(request)

    async def _frontend_jwks(self, request: web.Request) -> web.StreamResponse:
        self.jwks_hits += 1
        self.authorizations.append(request.headers.get("Authorization"))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status != 200:
            return web.json_response({"errors": [{"code": "unavailable"}]}, status=self.status)
        if self.garbage:
            return web.Response(text="<html>not json</html>", content_type="text/html")
        return web.json_response(self.jwks())

    async def _demo_token(self, request: web.Request) -> web.Response:
        who = request.match_info["who"]
        if who not in DEMO_USERS:
            raise web.HTTPNotFound(
                text=f"unknown demo user {who!r}; try one of {sorted(DEMO_USERS)}"
            )
        user_id, role = DEMO_USERS[who]
        return web.Response(text=self.mint(user_id, role=role))

    # ---- webhooks (Svix-signed, as Clerk sends them) ---------------------------------------

    def signed_webhook(
        self, event: Mapping[str, Any], *, msg_id: str | None = None, timestamp: int | None = None
    ) -> tuple[dict[str, str], bytes]:
        """Headers and the exact body bytes of a delivery signed with `webhook_secret`."""
        if self.webhook_secret is None:
            raise ValueError("no webhook_secret configured")
        body = json.dumps(event, separators=(",", ":")).encode()
        msg_id = msg_id or "msg_" + secrets.token_urlsafe(18)
        ts = str(int(time.time()) if timestamp is None else timestamp)
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        headers = {
            "svix-id": msg_id,
            "svix-timestamp": ts,
            "svix-signature": "v1," + base64.b64encode(mac).decode(),
            "Content-Type": "application/json",
        }
        return headers, body

    @staticmethod
    def user_event(kind: str, user_id: str | None = None, **fields: Any) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        user_id = user_id or "user_" + secrets.token_hex(12)
        if kind == "user.deleted":
            data: dict[str, Any] = {"object": "user", "id": user_id, "deleted": True}
        else:
            email_id = "idn_" + secrets.token_hex(12)
            email = fields.pop("email", f"{user_id}@example.com")
            data = {
                "object": "user",
                "id": user_id,
                "first_name": fields.pop("first_name", None),
                "last_name": fields.pop("last_name", None),
                "email_addresses": [{"id": email_id, "email_address": email}],
                "primary_email_address_id": email_id,
                "public_metadata": {},
                "created_at": now_ms,
                "updated_at": now_ms,
                **fields,
            }
        return {
            "data": data,
            "object": "event",
            "type": kind,
            "timestamp": now_ms,
            "instance_id": "ins_devclerk",
        }

    async def send_user_event(self, kind: str, **fields: Any) -> int:
        """Sign a `user.*` event and POST it to `webhook_url`; the HTTP status received."""
        if self.webhook_url is None:
            raise ValueError("no webhook_url configured")
        headers, body = self.signed_webhook(self.user_event(kind, **fields))
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.webhook_url, data=body, headers=headers) as resp,
        ):
            await resp.read()
            return resp.status

    async def _demo_user(self, request: web.Request) -> web.Response:
        try:
            fields = await request.json() if request.can_read_body else {}
        except ValueError:
            fields = {}
        if not isinstance(fields, dict):
            fields = {}
        allowed = {
            k: str(v) for k, v in fields.items() if k in ("first_name", "last_name", "email")
        }
        status = await self.send_user_event("user.created", **allowed)
        return web.json_response({"sent": "user.created", "gateway_status": status})


# The demo's people: a member and an admin (anonymous needs no token).
DEMO_USERS: dict[str, tuple[str, str]] = {
    "alice": ("user_2alice", "member"),
    "bob": ("user_2bob", "member"),
    "admin": ("user_2admin", "admin"),
}


async def serve(clerk: DevClerk, host: str, port: int) -> web.AppRunner:
    if host not in LOOPBACK:
        raise ValueError(f"the Clerk stand-in binds to loopback only, not {host!r}")
    runner = web.AppRunner(clerk.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
