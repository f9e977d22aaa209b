"""Clerk's handshake for browser navigations: pure rules, no I/O.

Clerk session tokens live 60 s and a server-rendered page does not refresh its `__session`
cookie, so a returning visitor arrives with an expired one. Clerk's SDKs then redirect the
browser through the frontend API (`/v1/client/handshake`), which holds the real session,
mints a fresh token and sends the browser back with Set-Cookie directives. This module is
`authenticateRequest`'s cookie path (clerk/javascript `tokens/request.ts`, reference §3) in
the gateway's terms:

- `Cookies.parse` reads what the browser's cookies say, once per Cookie header;
- `ClerkQuery.parse` reads Clerk's query parameters, once per request target;
- `before_verification` runs Clerk's checks that come before the signature (steps 1-9);
- `after_verification` turns the verification outcome into signed-in, a handshake or
  signed-out (the error handling and step 11);
- `maybe_handshake` applies the eligibility rule and the redirect counter (never a loop);
- `handshake_url`, `clean_url`, `directives` build what goes on the wire.

Only GET/HEAD browser navigations get a handshake; everything else is signed out with the
same reason. More careful than the SDK where it mattered to users: a handshake parameter or
cookie is resolved only on a navigation (a stale `__clerk_handshake_nonce` cookie no longer
makes every API call ask the Backend API), and only Clerk's own cookies are ever set from a
payload.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

from gateway.clerk.keys import PublishableKey
from gateway.clerk.tokens import NO_CATEGORY, SESSION_CATEGORY, decode, extract
from gateway.decision import Principal, Reason
from gateway.model import Policy

SUPPORTED_BAPI_VERSION = "2026-05-12"
MAX_REDIRECTS = 3
HANDSHAKE = "__clerk_handshake"
HANDSHAKE_NONCE = "__clerk_handshake_nonce"
REDIRECT_COUNT = "__clerk_redirect_count"
DEV_BROWSER = "__clerk_db_jwt"
LEGACY_DEV_BROWSER = "__dev_session"
SYNCED = "__clerk_synced"
REDIRECT_URL = "__clerk_redirect_url"
# Never forwarded upstream: the handshake's own cookies and parameters.
HANDSHAKE_COOKIES = frozenset([HANDSHAKE, HANDSHAKE_NONCE, REDIRECT_COUNT])
HANDSHAKE_PARAMS = frozenset(
    [
        HANDSHAKE,
        HANDSHAKE_NONCE,
        "__clerk_help",
        "__clerk_hs_reason",
        DEV_BROWSER,
        LEGACY_DEV_BROWSER,
    ]
)
# A payload may set only cookies named like Clerk's (plus clear the handshake's own).
_CLERK_COOKIE = re.compile(
    r"(__session|__client_uat|__clerk_db_jwt|__refresh)(_[A-Za-z0-9_-]{1,16})?"
    r"|__clerk_handshake|__clerk_handshake_nonce|__clerk_redirect_count"
)


# ---- what the browser sends -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cookies:
    """What a Cookie header says about the session, by Clerk's rules (one instance per
    distinct header: the application remembers them)."""

    token: str | None  # this instance's session token (suffixed or not, Clerk's choice)
    client_uat: int  # 0: absent or signed out
    suffixed: bool  # the instance uses suffixed cookies (`suffixed_cookies=` on handshakes)
    dev_browser: str | None
    refresh: bool  # a `__refresh` cookie (Clerk would try a refresh on an expired token)
    handshake_token: str | None
    handshake_nonce: str | None
    redirect_count: int
    forwarded: bytes | None  # the Cookie header without the handshake's cookies; None: as is

    @staticmethod
    def parse(
        header: bytes,
        instance: PublishableKey | None,
        now_s: float,
        peek: Callable[[str], Mapping[str, Any] | None],
    ) -> Cookies:
        pairs = _cookie_pairs(header.decode("latin-1"))
        values: dict[str, str] = {}
        for name, value in pairs:
            values.setdefault(name, value)
        extracted = extract(None, values, instance, now_s, peek)
        suffixed = extracted.suffixed
        suffix = f"_{instance.cookie_suffix}" if instance is not None else ""
        dev = (values.get(DEV_BROWSER + suffix) if suffixed else None) or values.get(DEV_BROWSER)
        forwarded = without_handshake_cookies(header)
        return Cookies(
            token=extracted.token,
            client_uat=_integer(extracted.client_uat),
            suffixed=suffixed,
            dev_browser=dev or None,
            refresh=any(name.startswith("__refresh") for name in values),
            handshake_token=values.get(HANDSHAKE) or None,
            handshake_nonce=values.get(HANDSHAKE_NONCE) or None,
            redirect_count=_integer(values.get(REDIRECT_COUNT)),
            forwarded=forwarded,
        )


NO_COOKIES: Final = Cookies(None, 0, False, None, False, None, None, 0, None)


def _cookie_pairs(header: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if sep and name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.append((name, value))
    return out


def without_handshake_cookies(header: bytes) -> bytes | None:
    """The Cookie header without the handshake's cookies, every other pair exactly as the
    browser sent it (quoted values, valueless cookies); None when there is nothing to cut."""
    if b"__clerk_" not in header:
        return None
    pieces = header.split(b";")
    kept = [p for p in pieces if p.partition(b"=")[0].strip() not in _HANDSHAKE_COOKIE_BYTES]
    if len(kept) == len(pieces):
        return None
    return b";".join(kept).strip(b" \t")


_HANDSHAKE_COOKIE_BYTES = frozenset(name.encode("ascii") for name in HANDSHAKE_COOKIES)


def _integer(text: str | None) -> int:
    """Clerk's `Number.parseInt(x) || 0`: leading digits, else 0. At most 15 of them: a
    Unix time or a counter has fewer, and Python refuses to convert 4,300 digits."""
    match = _DIGITS.match(text or "")
    return int(match.group(1)) if match else 0


_DIGITS = re.compile(r"\s*(\d{1,15})")


@dataclass(frozen=True, slots=True)
class ClerkQuery:
    """Clerk's parameters in a request target's query (parsed only when there are any)."""

    handshake_token: str | None = None
    handshake_nonce: str | None = None
    dev_browser: str | None = None
    synced: str | None = None
    redirect_url: str | None = None

    @staticmethod
    def parse(query: str) -> ClerkQuery:
        if "__clerk" not in query and "__dev_session" not in query:
            return NO_QUERY
        values: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            values.setdefault(name, value)
        return ClerkQuery(
            handshake_token=values.get(HANDSHAKE) or None,
            handshake_nonce=values.get(HANDSHAKE_NONCE) or None,
            dev_browser=values.get(DEV_BROWSER) or None,
            synced=values.get(SYNCED),
            redirect_url=values.get(REDIRECT_URL) or None,
        )

    @property
    def has_handshake(self) -> bool:
        return self.handshake_token is not None or self.handshake_nonce is not None


NO_QUERY: Final = ClerkQuery()


# ---- the instance -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instance:
    """What the handshake needs to know about the Clerk instance (from the policy)."""

    frontend_api: str  # host, or a URL (proxy_url); handshakes go to <this>/v1/client/handshake
    dev: bool
    satellite: bool = False
    sign_in_url: str = "/sign-in"
    trusted_redirects: tuple[str, ...] = ()  # origins a dev primary may send a browser back to

    def handshake_base(self, request_url: str = "") -> str:
        """The frontend API's base URL; a proxy path (`/__clerk`) is on the request's own
        origin, as Clerk resolves a relative proxyUrl."""
        base = self.frontend_api
        if base.startswith("/"):
            scheme, _, rest = request_url.partition("://")
            base = f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0]}{base}"
        elif not base.startswith(("http://", "https://")):
            base = f"https://{base}"
        return base.rstrip("/")

    @property
    def frontend_host(self) -> str:
        return urlsplit(self.handshake_base()).hostname or ""


def instance_for(
    publishable_key: PublishableKey,
    *,
    proxy_url: str | None,
    domain: str | None,
    satellite: bool,
    sign_in_url: str,
    trusted_redirects: tuple[str, ...] = (),
) -> Instance:
    """Clerk's `parsePublishableKey` with proxyUrl/domain: a proxy URL replaces the frontend
    API, and a production satellite talks to `clerk.<domain>`."""
    frontend = publishable_key.frontend_api
    if proxy_url:
        frontend = proxy_url
    elif publishable_key.live and domain and satellite:
        frontend = f"clerk.{domain}"
    return Instance(frontend, not publishable_key.live, satellite, sign_in_url, trusted_redirects)


def instance_of(policy: Policy) -> Instance | None:
    """The policy's instance when the handshake is on, else None (a cookie is then only a
    token, read by Clerk's cookie choice)."""
    clerk = policy.clerk
    if not clerk.handshake or clerk.publishable_key is None:
        return None
    return instance_for(
        clerk.publishable_key,
        proxy_url=clerk.proxy_url,
        domain=clerk.domain,
        satellite=clerk.is_satellite,
        sign_in_url=policy.sign_in_url,
        trusted_redirects=clerk.authorized_parties or (),
    )


# ---- the request ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Navigation:
    """The facts about one request that the handshake rules read."""

    method: str
    url: str  # the original absolute URL (trusted proxies' X-Forwarded-Proto/Host only)
    document: bool  # a browser navigation by the gateway's definition (GET/HEAD)
    fetch_dest_document: bool  # Sec-Fetch-Dest: document, exactly (Clerk's satellite rule)
    referer: str | None = None

    @property
    def eligible(self) -> bool:
        """Only browser navigations get a handshake (the contract admits HEAD beside GET)."""
        return self.document and self.method in ("GET", "HEAD")


# ---- what the rules conclude ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verify:
    """Go on: verify this session token (header tokens never reach this module)."""

    token: str


@dataclass(frozen=True, slots=True)
class Handshake:
    """Send the browser through the frontend API (or to `location` for a dev sync)."""

    reason: Reason
    location: str | None = None


@dataclass(frozen=True, slots=True)
class SignedOut:
    """No session for this request. `auth` is Clerk's reason (x-clerk-auth-reason);
    `reason` the gateway's, in the body of a 401 (Clerk's name where it has one)."""

    auth: Reason
    reason: Reason
    loop: bool = False  # the redirect counter stopped a handshake


@dataclass(frozen=True, slots=True)
class Resolve:
    """A handshake comes back: resolve its nonce or token, then redirect to a clean URL."""

    nonce: str | None
    token: str | None


Step = Verify | Handshake | SignedOut | Resolve


# The 401 reason for a signed-out browser session, where the gateway's name differs from
# Clerk's (no session token at all stays `session-token-missing`).
_DENY = {
    Reason.SESSION_TOKEN_AND_UAT_MISSING: Reason.SESSION_TOKEN_MISSING,
    Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN: Reason.SESSION_TOKEN_MISSING,
}


def signed_out(auth: Reason, deny: Reason | None = None, *, loop: bool = False) -> SignedOut:
    return SignedOut(auth, deny or _DENY.get(auth, auth), loop)


def maybe_handshake(
    reason: Reason,
    request: Navigation,
    cookies: Cookies,
    location: str | None = None,
    deny: Reason | None = None,
) -> Handshake | SignedOut:
    """Clerk's handleMaybeHandshakeStatus: a handshake for an eligible navigation, never a
    fourth one in a row (the counter cookie lives 2 s), else signed out."""
    if not request.eligible:
        return signed_out(reason, deny)
    if cookies.redirect_count >= MAX_REDIRECTS:
        return signed_out(reason, deny, loop=True)
    return Handshake(reason, location)


def before_verification(
    cookies: Cookies,
    query: ClerkQuery,
    request: Navigation,
    instance: Instance,
    peek: Callable[[str], Mapping[str, Any] | None],
) -> Step:
    """Clerk's cookie path up to the signature check (reference §3, steps 1-9)."""
    # 1. a handshake comes back (resolved on navigations only: see the module doc)
    if request.eligible:
        nonce = query.handshake_nonce or cookies.handshake_nonce
        token = query.handshake_token or cookies.handshake_token
        if nonce or token:
            return Resolve(nonce, token)
    has_session = cookies.token is not None
    has_client = cookies.client_uat > 0
    # 2. satellites: a first visit with no cookies stays signed out (satelliteAutoSync off)
    satellite_navigation = (
        instance.satellite and request.fetch_dest_document and request.method == "GET"
    )
    if satellite_navigation and query.synced != "true":
        needs_sync = query.synced == "false"
        if not has_session and not has_client and not needs_sync:
            return signed_out(Reason.SESSION_TOKEN_AND_UAT_MISSING)
        if (not has_session and not has_client) or needs_sync:
            # a dev satellite syncs through the primary's sign-in page, production through FAPI
            location = (
                _with_param(instance.sign_in_url, REDIRECT_URL, request.url)
                if instance.dev
                else None
            )
            return maybe_handshake(Reason.SATELLITE_NEEDS_SYNCING, request, cookies, location)
    # 3. a dev primary answers a satellite's sync: back to it with the dev-browser token
    if instance.dev and not instance.satellite and query.redirect_url:
        back = _sync_back(query.redirect_url, cookies.dev_browser or query.dev_browser, instance)
        if back is not None:
            return maybe_handshake(Reason.PRIMARY_RESPONDS_TO_SYNCING, request, cookies, back)
    # 4. dev instances keep a dev-browser token
    if instance.dev and query.dev_browser is not None:
        return maybe_handshake(Reason.DEV_BROWSER_SYNC, request, cookies)
    if instance.dev and not (cookies.dev_browser or query.dev_browser):
        # an API call with no session at all is told so, not about dev-browser internals
        deny = None if has_session else Reason.SESSION_TOKEN_MISSING
        return maybe_handshake(Reason.DEV_BROWSER_MISSING, request, cookies, deny=deny)
    # 5-7. what the cookies say about the client
    if not has_client and not has_session:
        return signed_out(Reason.SESSION_TOKEN_AND_UAT_MISSING)
    if not has_client:
        return maybe_handshake(Reason.SESSION_TOKEN_BUT_NO_CLIENT_UAT, request, cookies)
    if not has_session:
        return maybe_handshake(Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN, request, cookies)
    assert cookies.token is not None
    # 8. a token that does not decode, or of another class, is signed out
    claims = peek(cookies.token)
    if claims is None:
        return signed_out(Reason.TOKEN_INVALID)
    decoded = decode(cookies.token)
    if not isinstance(decoded, Reason):
        category = decoded.header.get("cat")
        if category is not None and category not in (SESSION_CATEGORY, NO_CATEGORY):
            return signed_out(Reason.TOKEN_TYPE_MISMATCH)
    # 9. minted before the client's last sign-in (uat): refresh it, before any signature check
    iat = claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool) and iat < cookies.client_uat:
        return maybe_handshake(Reason.SESSION_TOKEN_IAT_BEFORE_CLIENT_UAT, request, cookies)
    return Verify(cookies.token)


_TIME_ERRORS = {
    Reason.TOKEN_NOT_ACTIVE_YET: Reason.SESSION_TOKEN_NBF,
    Reason.TOKEN_IAT_IN_THE_FUTURE: Reason.SESSION_TOKEN_IAT_IN_THE_FUTURE,
}


def after_verification(
    outcome: Principal | Reason,
    cookies: Cookies,
    request: Navigation,
    instance: Instance,
) -> Principal | Handshake | SignedOut:
    """The verification outcome in Clerk's terms: the three time errors may be refreshed
    by a handshake; any other failure is signed out; a session arriving from another
    origin on a primary domain is synchronised first (step 11)."""
    if isinstance(outcome, Reason):
        if outcome is Reason.TOKEN_EXPIRED:
            if request.method != "GET":
                reason = Reason.SESSION_TOKEN_EXPIRED_NON_GET
            elif not cookies.refresh:
                reason = Reason.SESSION_TOKEN_EXPIRED_NO_REFRESH_COOKIE
            else:
                reason = Reason.SESSION_TOKEN_EXPIRED_NOT_REFRESHED
            return maybe_handshake(reason, request, cookies, deny=outcome)
        if outcome in _TIME_ERRORS:
            return maybe_handshake(_TIME_ERRORS[outcome], request, cookies, deny=outcome)
        return signed_out(outcome)
    if (
        not instance.satellite
        and request.method == "GET"
        and request.fetch_dest_document
        and cookies.redirect_count == 0
        and _cross_origin(request, instance)
    ):
        return maybe_handshake(Reason.PRIMARY_DOMAIN_CROSS_ORIGIN_SYNC, request, cookies)
    return outcome


def _cross_origin(request: Navigation, instance: Instance) -> bool:
    """A Referer from another origin that is not Clerk's own (FAPI, accounts portal)."""
    if not request.referer:
        return False
    try:
        referer = urlsplit(request.referer)
        own = urlsplit(request.url)
    except ValueError:
        return False
    if not referer.scheme or not referer.netloc:
        return False
    if (referer.scheme, referer.netloc) == (own.scheme, own.netloc):
        return False
    host = referer.hostname or ""
    if host == instance.frontend_host:
        return False
    accounts = instance.frontend_host.replace("clerk.", "accounts.", 1)
    dev_portal = instance.dev and host.endswith((".accounts.dev", ".lclclerk.com"))
    return host != accounts and not dev_portal


# ---- the wire ---------------------------------------------------------------------------


def handshake_url(
    instance: Instance, reason: Reason, request: Navigation, cookies: Cookies, query: ClerkQuery
) -> str:
    """`<frontend API>/v1/client/handshake` with Clerk's parameters, in Clerk's order."""
    params = [
        ("redirect_url", _without(request.url, (DEV_BROWSER, LEGACY_DEV_BROWSER))),
        ("__clerk_api_version", SUPPORTED_BAPI_VERSION),
        ("suffixed_cookies", "true" if cookies.suffixed else "false"),
        ("__clerk_hs_reason", reason.value),
        ("format", "nonce"),
    ]
    if cookies.token:
        params.append(("__session", cookies.token))
    dev_browser = query.dev_browser or cookies.dev_browser
    if instance.dev and dev_browser:
        params.append((DEV_BROWSER, dev_browser))
    base = instance.handshake_base(request.url)
    return f"{base}/v1/client/handshake?{urlencode(params, quote_via=quote)}"


def clean_url(url: str) -> str:
    """The URL a handshake came back to, without the handshake's parameters."""
    return _without(url, HANDSHAKE_PARAMS)


def redirect_count_cookie(cookies: Cookies) -> str:
    """Exactly Clerk's counter cookie (no Path: it follows the request's path)."""
    return f"{REDIRECT_COUNT}={cookies.redirect_count + 1}; SameSite=Lax; HttpOnly; Max-Age=2"


def directives(payload: list[Any]) -> list[str]:
    """The Set-Cookie directives of a handshake payload that the gateway passes on: only
    Clerk's cookies, and never a value that could split a header."""
    out: list[str] = []
    for item in payload:
        if not isinstance(item, str) or not item.isprintable() or not item.isascii():
            continue
        name = item.split("=", 1)[0].strip()
        if _CLERK_COOKIE.fullmatch(name):
            out.append(item)
    return out


def session_from(directives: list[str]) -> str | None:
    """The session token a payload sets (Clerk: the first `__session*` directive)."""
    for item in directives:
        name, _, rest = item.partition("=")
        if name.strip().startswith("__session"):
            return rest.split(";", 1)[0].strip() or None
    return None


def clearing(cookies: Cookies) -> list[str]:
    """Directives that remove the handshake cookies the browser sent."""
    out = []
    if cookies.handshake_token:
        out.append(f"{HANDSHAKE}=; Path=/; Max-Age=0")
    if cookies.handshake_nonce:
        out.append(f"{HANDSHAKE_NONCE}=; Path=/; Max-Age=0")
    return out


def _without(url: str, names: frozenset[str] | tuple[str, ...]) -> str:
    """`url` without the named query parameters; every other one keeps its exact spelling
    (an app may read `+` or `%20` differently: what it gets back is what it sent). Cut as
    text, not parsed: a URL any client can shape (its Host) must not be able to fail here."""
    rest, hash_mark, fragment = url.partition("#")
    base, _, query = rest.partition("?")
    if not query:
        return url
    kept = [pair for pair in query.split("&") if unquote_plus(pair.partition("=")[0]) not in names]
    query = "&".join(kept)
    return f"{base}{'?' if query else ''}{query}{hash_mark}{fragment}"


def without_handshake(target: str) -> str:
    """A request target (path and query) without the handshake's parameters: what the
    upstream receives (the SDK's own redirect removes them; a request that was not
    redirected, an API call, must not carry a nonce or a handshake token upstream)."""
    return _without(target, HANDSHAKE_PARAMS)


def settled(cookies: Cookies, query: ClerkQuery) -> tuple[Cookies, ClerkQuery]:
    """The cookies and query without the handshake that came back, once its resolution
    failed: the request goes on by the cookies the browser holds (Clerk's SDK logs the
    failure and does the same), never back to the same URL (a nonce cookie set for a
    parent domain or another path outlives our clearing, and would loop)."""
    return (
        replace(cookies, handshake_token=None, handshake_nonce=None),
        replace(query, handshake_token=None, handshake_nonce=None),
    )


def _with_param(url: str, name: str, value: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{name}={quote(value, safe='')}"


def _sync_back(redirect_url: str, dev_browser: str | None, instance: Instance) -> str | None:
    """Where a dev primary sends a syncing satellite back: only to a trusted origin (the
    SDK follows any URL; an open redirect is not ours to offer)."""
    try:
        parts = urlsplit(redirect_url)
    except ValueError:  # a query parameter anyone can write ("http://[x")
        return None
    origin = f"{parts.scheme}://{parts.netloc}"
    if parts.scheme not in ("http", "https") or origin not in instance.trusted_redirects:
        return None
    url = _without(redirect_url, (SYNCED,))
    if dev_browser:
        url = _with_param(url, DEV_BROWSER, dev_browser)
    return _with_param(url, SYNCED, "true")
