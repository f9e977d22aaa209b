"""DevClerk: the stand-in's state and knobs, and what tests drive without HTTP.

Session tokens have Clerk's real v2 claim shape (`nbf` 10 s before `iat`, `azp`, `sid`,
`fva`, `v: 2`, the `cat` header, custom `metadata.role`), lasting `session_lifetime_s`
(Clerk's 60 s by default). The HTTP side lives in `backend.py` (Backend API),
`frontend.py` (frontend API for browsers) and `demoroutes.py` (demo conveniences).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.clerk.keys import cookie_suffix
from gateway.clerk.tokens import SESSION_CATEGORY
from gateway.devclerk import backend, demoroutes, frontend
from gateway.devclerk.keys import SigningKey, new_kid, new_rsa_key, publishable_key_for
from gateway.devclerk.sessions import (
    Client,
    NonceStore,
    dev_browser_directives,
    new_client_id,
    new_dev_browser,
    signed_in_directives,
    signed_out_directives,
)
from gateway.devclerk.users import (
    DEMO_USERS,
    USER_KINDS,
    apply_fields,
    deleted_stub,
    envelope,
    new_user,
    now_ms,
    seed_users,
    stored_role,
)

DEFAULT_FRONTEND_API = "clerk.gateway-demo.localhost"
LOOPBACK = frozenset(["127.0.0.1", "::1", "localhost"])


@dataclass
class DevClerk:
    """State and knobs of the stand-in. `app()` serves it; `mint()` needs no server."""

    frontend_api: str = DEFAULT_FRONTEND_API  # what the publishable key names; `iss`
    secret_key: str = field(default_factory=lambda: "sk_test_" + secrets.token_urlsafe(24))
    origin: str = "http://127.0.0.1:8080"  # the app's origin: `azp` of minted tokens
    keys: list[SigningKey] = field(default_factory=list)
    # JWKS knobs for tests
    status: int = 200
    garbage: bool = False
    delay_s: float = 0.0
    jwks_hits: int = 0
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_url: str | None = None
    authorizations: list[str | None] = field(default_factory=list)
    # The frontend API, for browsers
    live: bool = False  # pk_live_: a production instance, no dev-browser token
    frontend_url: str | None = None  # own public origin; None: the request's, or set by serve()
    session_lifetime_s: int = 60
    nonce_ttl_s: float = 60.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)  # nonce expiry
    clients: dict[str, Client] = field(default_factory=dict)
    handshake_requests: list[dict[str, str]] = field(default_factory=list)  # query of each
    # Backend API knobs: the handshake payload exchange, like the JWKS ones
    handshake_payload_status: int = 200
    handshake_payload_delay_s: float = 0.0
    handshake_payload_hits: int = 0
    # Backend API users, and their knobs
    users: dict[str, dict[str, Any]] = field(default_factory=lambda: seed_users(now_ms()))
    users_status: int = 200
    users_retry_after_s: int = 1  # sent as Retry-After when users_status is 429
    users_delay_s: float = 0.0
    users_hits: int = 0
    nonces: NonceStore = field(default_factory=NonceStore, repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys.append(SigningKey(new_kid(), new_rsa_key()))

    @property
    def publishable_key(self) -> str:
        return publishable_key_for(self.frontend_api, live=self.live)

    @property
    def cookie_suffix(self) -> str:
        return cookie_suffix(self.publishable_key)

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
        lifetime_s: int | None = None,
        now: float | None = None,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """A session token shaped like Clerk's v2 tokens. `claims` overrides or adds;
        a claim set to None is left out. Lifetime: `session_lifetime_s` unless given."""
        iat = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "azp": self.origin,
            "exp": iat + (self.session_lifetime_s if lifetime_s is None else lifetime_s),
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

    def role_of(self, user_id: str) -> str | None:
        """`public_metadata.role` from the store (a test may change it), else the demo's."""
        role = stored_role(self.users.get(user_id))
        if role is None:
            role = next((r for uid, r in DEMO_USERS.values() if uid == user_id), None)
        return role

    # ---- browser sessions (what the frontend API's pages do, callable from tests) ----------

    def client(self, client_id: str | None) -> Client | None:
        return self.clients.get(client_id) if client_id else None

    def sign_in(self, user: str, *, client_id: str | None = None) -> str:
        """Start a new session for a demo name (alice) or a known user id on the client
        `client_id` (a new client when None or unknown); returns the client id."""
        user_id = DEMO_USERS[user][0] if user in DEMO_USERS else user
        if user_id not in self.users:
            raise KeyError(f"no such user {user!r}")
        client = self.client(client_id) or Client(client_id or new_client_id())
        self.clients[client.id] = client
        client.start_session(user_id, int(time.time()))
        return client.id

    def sign_out(self, client_id: str | None) -> None:
        """End the client's session; the client itself (and its cookie) stays."""
        client = self.client(client_id)
        if client is not None:
            client.end_session()

    def session_token(self, client_id: str | None, *, origin: str | None = None) -> str | None:
        """A fresh token for the client's active session (None when signed out)."""
        client = self.client(client_id)
        if client is None or client.user_id is None:
            return None
        claims = {"sid": client.session_id, "azp": origin or self.origin}
        return self.mint(client.user_id, role=self.role_of(client.user_id), claims=claims)

    def handshake_directives(
        self,
        client_id: str | None,
        *,
        origin: str | None = None,
        suffixed: bool = False,
        dev_browser: bool = False,
    ) -> list[str]:
        """The `Set-Cookie` directives a handshake gives the app at `origin`.

        `suffixed` adds `__session_<suffix>`-style names beside the plain ones; `dev_browser`
        adds a freshly minted dev-browser token (the endpoint asks for one on dev instances
        when the app sent none).
        """
        suffix = self.cookie_suffix if suffixed else None
        client = self.client(client_id)
        token = self.session_token(client_id, origin=origin)
        if client is None or token is None:
            directives = signed_out_directives(suffix)
        else:
            directives = signed_in_directives(token, client.client_uat, suffix)
        if dev_browser:
            directives += dev_browser_directives(new_dev_browser(), suffix)
        return directives

    def issue_nonce(self, directives: list[str]) -> str:
        """Store a payload for `GET /v1/clients/handshake_payload?nonce=` (single use)."""
        return self.nonces.issue(directives, self.clock(), self.nonce_ttl_s)

    def take_nonce(self, nonce: str) -> list[str] | None:
        return self.nonces.take(nonce, self.clock())

    def handshake_token(self, directives: list[str], *, key: SigningKey | None = None) -> str:
        """The `__clerk_handshake` JWT: the directives signed with the instance key, in the
        session category (Clerk's SDK refuses any other class), with no time claims."""
        signer = key or self.signer
        header = {"kid": signer.kid, "typ": "JWT", "cat": SESSION_CATEGORY}
        return jwt.encode(
            {"handshake": list(directives)}, signer.private, algorithm="RS256", headers=header
        )

    # ---- users and their webhooks (Svix-signed, as Clerk sends them) -----------------------

    def user(self, user_id: str) -> dict[str, Any] | None:
        """The stored UserJSON (a copy is served; this is the live object)."""
        return self.users.get(user_id)

    def update_user(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Change a stored user (KeyError if unknown); the `user.updated` event to deliver
        (sign it with `signed_webhook`, or use `send_user_event` to do both)."""
        if user_id not in self.users:
            raise KeyError(f"no such user {user_id!r}")
        return self.user_event("user.updated", user_id, **fields)

    def user_event(self, kind: str, user_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """A `user.*` event, applied to the store first so the Backend API agrees with it.

        `user.created` stores a new user (a random id when none is given); `user.updated`
        changes one (creating it if unknown); `user.deleted` removes it and ends its sessions.
        """
        if kind not in USER_KINDS:
            raise ValueError(f"not a user event: {kind!r}; one of {USER_KINDS}")
        at_ms = now_ms()
        user_id = user_id or "user_" + secrets.token_hex(12)
        if kind == "user.deleted":
            self.users.pop(user_id, None)
            for client in self.clients.values():
                if client.user_id == user_id:
                    client.end_session()
            return envelope(kind, deleted_stub(user_id), at_ms)
        if kind == "user.updated" and user_id in self.users:
            apply_fields(self.users[user_id], fields, at_ms)
        else:
            self.users[user_id] = new_user(user_id, fields, at_ms)
        return envelope(kind, self.users[user_id], at_ms)

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

    async def send_user_event(self, kind: str, **fields: Any) -> int:
        """Apply a `user.*` event, sign it and POST it to `webhook_url`; the status received."""
        if self.webhook_url is None:
            raise ValueError("no webhook_url configured")
        return await self.deliver(self.user_event(kind, **fields))

    async def deliver(self, event: Mapping[str, Any]) -> int:
        """Sign an event and POST it to `webhook_url`; the HTTP status received."""
        if self.webhook_url is None:
            raise ValueError("no webhook_url configured")
        headers, body = self.signed_webhook(event)
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.webhook_url, data=body, headers=headers) as resp,
        ):
            await resp.read()
            return resp.status

    # ---- HTTP -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        backend.add_routes(app, self)
        frontend.add_routes(app, self)
        demoroutes.add_routes(app, self)
        return app


async def serve(clerk: DevClerk, host: str, port: int) -> web.AppRunner:
    if host not in LOOPBACK:
        raise ValueError(f"the Clerk stand-in binds to loopback only, not {host!r}")
    runner = web.AppRunner(clerk.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    if clerk.frontend_url is None:
        bound_port = runner.addresses[0][1] if port == 0 else port
        clerk.frontend_url = default_frontend_url(host, bound_port, clerk.origin)
    return runner


def default_frontend_url(host: str, port: int, app_origin: str) -> str:
    """A loopback name for the stand-in that differs from the app's host name.

    Browsers keep cookies per host name, ignoring the port: were both on 127.0.0.1, the
    stand-in's `__client` and the app's `__session` would share one jar, and a test could
    pass that fails for a real Clerk instance on its own domain.
    """
    app_host = (urlsplit(app_origin).hostname or "").lower()
    names = ["localhost", "[::1]" if host == "::1" else "127.0.0.1"]
    name = next((n for n in names if n.strip("[]") != app_host), names[0])
    return f"http://{name}:{port}"
