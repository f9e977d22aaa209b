"""The policy's runtime types: what `config.py` builds from routes.yaml and everything
else reads. Frozen, and free of the YAML loader: the wire and the decision import this
module, never the loader."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.clerk.keys import PublishableKey
from gateway.decision import Access
from gateway.routes import Route, RouteTable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_API_URL = "https://api.clerk.com"
PROXY = "proxy"  # the gateway forwards allowed requests itself
FORWARD_AUTH = "forward-auth"  # another proxy asks, the gateway answers
MODES = (PROXY, FORWARD_AUTH)

# Request headers the engine cannot act as if a client never sent (message framing, the
# connection, the authority, the credentials it verifies): `strip_headers` may not name
# them, and `check` says why. Every other name it lists is removed before the engine reads
# it (X-Request-Id, User-Agent, traceparent, Expect, X-Forwarded-* ...). By lower-case
# name, compared after the same folding as identity headers.
UNSTRIPPABLE = {
    "host": "every HTTP/1.1 request has one; an upstream with `preserve_host: false` "
    "receives its own",
    "content-length": "it frames the request body; the gateway reframes what it forwards",
    "transfer-encoding": "it frames the request body; it is never forwarded as sent",
    "connection": "it is hop-by-hop: never forwarded, read for the client connection only",
    "upgrade": "it is hop-by-hop: never forwarded, read for the client connection only",
    "authorization": "the gateway reads the session token from it: every request would be "
    "signed out",
    "cookie": "the gateway reads the session cookie from it: every browser would be signed out",
}


@dataclass(frozen=True, slots=True)
class JwksSettings:
    refresh_interval_s: float = 300.0
    kid_cooldown_s: float = 30.0
    max_stale_s: float = 21600.0
    fetch_timeout_s: float = 5.0
    fetch_attempts: int = 3


@dataclass(frozen=True, slots=True)
class ClerkSettings:
    publishable_key: PublishableKey | None = None
    secret_key: str | None = field(default=None, repr=False)
    jwt_key: str | None = field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL
    jwks_url: str | None = None
    issuer: str | None = None
    authorized_parties: tuple[str, ...] | None = None
    allow_missing_azp: bool = False
    clock_skew_ms: int = 5000
    jwks: JwksSettings = field(default_factory=JwksSettings)
    token_cache_size: int = 10_000
    handshake: bool = False  # Clerk's handshake for browser navigations
    proxy_url: str | None = None  # a Clerk proxy: replaces the frontend API in handshakes
    domain: str | None = None  # a satellite's primary domain
    is_satellite: bool = False

    @property
    def jwks_sends_secret(self) -> bool:
        """The secret key goes only to Clerk's Backend API, never to another host."""
        return (
            self.secret_key is not None
            and self.jwks_url is not None
            and under(self.jwks_url, self.api_url)
        )


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    secrets: tuple[str, ...] = field(default=(), repr=False)
    remember_s: float = 900.0
    tolerance_s: float = 300.0
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True, eq=False)
class Upstream:
    """An upstream; compared and hashed by identity (the pool keys its connections by it,
    per request): a reload makes new ones, and the pool retires the old ones' connections."""

    name: str
    url: str
    scheme: str
    host: str
    port: int
    base_path: str
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    preserve_host: bool = True


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 16_384  # one header line, and what is buffered of an unfinished one
    max_request_line_bytes: int = 8_192
    max_head_bytes: int = 65_536  # request line and every header together
    request_head_timeout_s: float = 30.0  # from the first byte of a request to its last header
    body_idle_timeout_s: float = 60.0  # the longest gap between two request-body reads


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    user_id: str | None = "X-Clerk-User-Id"
    session_id: str | None = "X-Clerk-Session-Id"
    role: str | None = "X-Clerk-Role"
    org_id: str | None = "X-Clerk-Org-Id"
    org_slug: str | None = "X-Clerk-Org-Slug"
    org_role: str | None = "X-Clerk-Org-Role"
    org_permissions: str | None = "X-Clerk-Org-Permissions"
    # further `X-Header-Name: claim.path` entries: any claim of the session token
    claims: tuple[HeaderPath, ...] = ()

    def names(self) -> tuple[str, ...]:
        """Every name the upstream may receive, and so every name stripped from clients
        (a claim header's `-Encoding` companion included)."""
        ids = (self.user_id, self.session_id, self.org_id)
        return (
            *(n for n in ids if n),
            *(name for n in self.encodable for name in (n, companion(n))),
            *(name for c in self.claims for name in (c.name, c.companion)),
        )

    @property
    def encodable(self) -> tuple[str, ...]:
        """The built-in names whose values people choose (roles, slugs, permissions), sent
        percent-encoded with a companion when not ASCII; ids are Clerk's, and ASCII."""
        names = (self.role, self.org_slug, self.org_role, self.org_permissions)
        return tuple(n for n in names if n)


@dataclass(frozen=True, slots=True)
class HeaderPath:
    """A header the upstream receives, filled from a dot path into a JSON object (the
    session claims, or the user's profile)."""

    name: str
    path: tuple[str, ...]

    @property
    def companion(self) -> str:
        return companion(self.name)


def companion(name: str) -> str:
    """The header sent beside a percent-encoded value, so the upstream knows to decode it."""
    return f"{name}-Encoding"


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """`user_profile:`: headers from the user's profile in Clerk's Backend API."""

    headers: tuple[HeaderPath, ...] = ()
    ttl_s: float = 300.0
    max_users: int = 100_000
    max_stale_s: float = 3600.0  # past ttl_s, while refreshes fail
    lookup_timeout_s: float = 2.0  # how long a user's first request waits for its profile

    def names(self) -> tuple[str, ...]:
        return tuple(name for h in self.headers for name in (h.name, h.companion))


@dataclass(frozen=True, slots=True)
class AssertionSettings:
    """`assertion:`: a signed JWT per forwarded request, for a zero-trust upstream."""

    header: str = "X-Clerk-Gateway-Assertion"
    issuer: str = "clerk-gateway"
    key_file: str | None = None
    ttl_s: int = 30


@dataclass(frozen=True, slots=True)
class Policy:
    file: str
    clerk: ClerkSettings
    webhooks: WebhookSettings
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]
    table: RouteTable
    default: Access = Access.PROTECTED
    sign_in_url: str = "/sign-in"
    unauthorized_url: str = "/unauthorized"
    role_claim: tuple[str, ...] | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # None: refuse a path that matches differently once folded (case, trailing dots and
    # spaces); True: fold and match; False: match exactly, never refuse
    case_insensitive_paths: bool | None = None
    strip_headers: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    identity_headers: IdentityHeaders = field(default_factory=IdentityHeaders)
    user_profile: ProfileSettings | None = None
    assertion: AssertionSettings | None = None
    digest: str = ""  # of the file's text: names the running policy in logs
    mode: str = PROXY

    def identity_names(self) -> tuple[str, ...]:
        """Every header name the gateway sets from a verified identity: stripped from
        every client request, so none can be forged."""
        names = self.identity_headers.names()
        if self.user_profile is not None:
            names += self.user_profile.names()
        if self.assertion is not None:
            names += (self.assertion.header,)
        return names

    def upstream_for(self, route: Route | None) -> Upstream:
        return self.upstreams[route.upstream if route is not None else "default"]


def under(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    if (a.scheme, a.netloc.lower()) != (b.scheme, b.netloc.lower()):
        return False
    base_path = b.path.rstrip("/")
    return a.path == base_path or a.path.startswith(base_path + "/")
