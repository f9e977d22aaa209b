"""The stand-in's frontend API, for browsers: sign-in, the handshake, sign-out.

The story a browser walks (the app is on another host than the stand-in):

1. The gateway sends a signed-out visitor to `GET /sign-in?redirect_url=<app URL>`.
2. `POST /sign-in` starts a session on the client named by the stand-in's own `__client`
   cookie and 303s to `/v1/client/handshake?redirect_url=...&format=nonce`.
3. The handshake 307s back to the app with `__clerk_handshake_nonce` (or, without
   `format=nonce`, a `__clerk_handshake` JWT); the gateway exchanges the nonce at the Backend
   API for `Set-Cookie` directives for the app's host. Later, when the 60 s token has
   expired, the gateway sends the browser through step 3 again for a fresh one.
4. `/sign-out` ends the session and comes back with a nonce whose directives clear the
   app's cookies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from gateway.devclerk.backend import clerk_error
from gateway.devclerk.pages import sign_in_page, signed_out_page
from gateway.devclerk.sessions import ONE_YEAR_S
from gateway.devclerk.users import DEMO_USERS

if TYPE_CHECKING:
    from gateway.devclerk.standin import DevClerk

CLIENT_COOKIE = "__client"
_NO_STORE = {"Cache-Control": "no-store"}


def app_url(value: str | None) -> str | None:
    """`value` when it is an absolute http(s) URL with a host, else None."""
    if not value or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    try:
        parts = urlsplit(value)
        _ = parts.port  # a malformed port raises here
    except ValueError:
        return None
    return value if parts.scheme in ("http", "https") and parts.hostname else None


def origin_of(url: str) -> str:
    """scheme://host[:port] of an absolute URL, credentials dropped: the token's `azp`."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2].lower()
    return f"{parts.scheme.lower()}://{host}"


def with_query(url: str, params: dict[str, str]) -> str:
    """`url` with parameters appended; what it already holds keeps its exact spelling."""
    parts = urlsplit(url)
    added = urlencode(params)
    query = f"{parts.query}&{added}" if parts.query else added
    return urlunsplit(parts._replace(query=query))


def add_routes(app: web.Application, clerk: DevClerk) -> None:
    fapi = _FrontendAPI(clerk)
    app.router.add_get("/sign-in", fapi.sign_in_form)
    app.router.add_post("/sign-in", fapi.sign_in)
    app.router.add_get("/v1/client/handshake", fapi.handshake)
    app.router.add_get("/sign-out", fapi.sign_out)
    app.router.add_post("/sign-out", fapi.sign_out)


class _FrontendAPI:
    def __init__(self, clerk: DevClerk) -> None:
        self.clerk = clerk

    def _base(self, request: web.Request) -> str:
        return self.clerk.frontend_url or f"{request.scheme}://{request.host}"

    def _client_id(self, request: web.Request) -> str | None:
        client_id = request.cookies.get(CLIENT_COOKIE)
        return client_id if client_id in self.clerk.clients else None

    def _signed_in_as(self, request: web.Request) -> str | None:
        client = self.clerk.client(request.cookies.get(CLIENT_COOKIE))
        if client is None or client.user_id is None:
            return None
        user = self.clerk.user(client.user_id) or {}
        return str(user.get("username") or client.user_id)

    async def sign_in_form(self, request: web.Request) -> web.Response:
        redirect_url = app_url(request.query.get("redirect_url", f"{self.clerk.origin}/"))
        if redirect_url is None:
            return _bad_redirect()
        page = sign_in_page(DEMO_USERS, redirect_url, self._signed_in_as(request))
        return web.Response(text=page, content_type="text/html", headers=_NO_STORE)

    async def sign_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        user = form.get("user")
        redirect_url = app_url(_text(form.get("redirect_url")) or f"{self.clerk.origin}/")
        if not isinstance(user, str) or user not in DEMO_USERS:
            return web.Response(status=400, text=f"pick one of {', '.join(DEMO_USERS)}\n")
        if redirect_url is None:
            return _bad_redirect()
        try:
            client_id = self.clerk.sign_in(user, client_id=self._client_id(request))
        except KeyError:
            return web.Response(status=400, text=f"{user} was deleted from the user store\n")
        handshake = with_query(
            f"{self._base(request)}/v1/client/handshake",
            {"redirect_url": redirect_url, "format": "nonce"},
        )
        response = web.Response(status=303, headers={"Location": handshake, **_NO_STORE})
        response.set_cookie(
            CLIENT_COOKIE, client_id, path="/", max_age=ONE_YEAR_S, httponly=True, samesite="Lax"
        )
        return response

    async def handshake(self, request: web.Request) -> web.Response:
        clerk = self.clerk
        query = request.query
        clerk.handshake_requests.append(dict(query))
        redirect_url = app_url(query.get("redirect_url"))
        if redirect_url is None:
            return _bad_redirect()
        directives = clerk.handshake_directives(
            self._client_id(request),
            origin=origin_of(redirect_url),
            suffixed=query.get("suffixed_cookies") == "true",
            # A dev instance's SDK wants a dev-browser token and sends the one it holds.
            dev_browser=not clerk.live and "__clerk_db_jwt" not in query,
        )
        if query.get("format") == "nonce":
            param = {"__clerk_handshake_nonce": clerk.issue_nonce(directives)}
        else:
            param = {"__clerk_handshake": clerk.handshake_token(directives)}
        location = with_query(redirect_url, param)
        return web.Response(status=307, headers={"Location": location, **_NO_STORE})

    async def sign_out(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else None
        given = request.query.get("redirect_url") or (
            _text(form.get("redirect_url")) if form else None
        )
        redirect_url = app_url(given)
        if given and redirect_url is None:
            return _bad_redirect()
        self.clerk.sign_out(self._client_id(request))
        if redirect_url is None:
            return web.Response(text=signed_out_page(), content_type="text/html", headers=_NO_STORE)
        # The app may hold plain or suffixed cookies: clear both, so neither outlives the session.
        nonce = self.clerk.issue_nonce(self.clerk.handshake_directives(None, suffixed=True))
        location = with_query(redirect_url, {"__clerk_handshake_nonce": nonce})
        return web.Response(status=307, headers={"Location": location, **_NO_STORE})


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _bad_redirect() -> web.Response:
    return clerk_error(
        400, "form_param_format_invalid", "redirect_url must be an absolute http(s) URL"
    )
