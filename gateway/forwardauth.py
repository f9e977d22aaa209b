"""Forward-auth mode: another proxy (nginx `auth_request`, ingress-nginx, Traefik
ForwardAuth, Caddy `forward_auth`, Envoy `ext_authz`) asks whether a request may pass; the
gateway decides it with the same locate/verify/decide as in proxy mode and answers.

The original request is described by headers the proxy sets, believed only from a trusted
proxy: `X-Forwarded-Method`/`-Proto`/`-Host`/`-Uri` (Traefik, Caddy, Envoy as configured)
or `X-Original-Method` and `X-Original-URL` (absolute) / `X-Original-URI` (nginx,
ingress-nginx). nginx's `auth_request` understands only 2xx, 401 and 403, so when the
request is described the nginx way a redirect is answered as 401 (sign in) or 403 (the
unauthorized page) with the target in `X-Clerk-Redirect`, for an `error_page` to follow.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.decision import Reason
from gateway.responses import Denial, status_of

_ORIGINAL = frozenset(
    [
        b"x-forwarded-method",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-uri",
        b"x-original-method",
        b"x-original-url",
        b"x-original-uri",
        b"host",
    ]
)


class Original:
    """The request a proxy asks about."""

    __slots__ = ("host", "method", "nginx", "proto", "target")

    def __init__(
        self, method: bytes, proto: bytes, host: bytes, target: bytes, nginx: bool
    ) -> None:
        self.method = method
        self.proto = proto
        self.host = host
        self.target = target  # origin form: path and query as the client sent them
        self.nginx = nginx  # described by X-Original-*: answer redirects as 401/403

    @property
    def url(self) -> str:
        return f"{self.proto.decode('latin-1')}://{self.host.decode('latin-1')}{self.target.decode('latin-1')}"


def original_request(headers: list[tuple[bytes, bytes]]) -> Original | Reason:
    """Read the original request from the proxy's headers (first value of each)."""
    seen: dict[bytes, bytes] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in _ORIGINAL and lower not in seen:
            seen[lower] = value.strip()
    original_url = seen.get(b"x-original-url")
    original_uri = seen.get(b"x-original-uri")
    nginx_form = original_url is not None or original_uri is not None
    nginx_form = nginx_form or b"x-original-method" in seen
    if nginx_form and (b"x-forwarded-method" in seen or b"x-forwarded-uri" in seen):
        # described twice: one of the two came from the client through a proxy that passes
        # headers it does not set (Traefik without authRequestHeaders, ingress-nginx and a
        # client's X-Forwarded-Uri); picking either would let a client choose
        return Reason.REQUEST_MALFORMED
    if nginx_form:
        method = seen.get(b"x-original-method")
        proto, host, target = b"", seen.get(b"host", b""), original_uri
        if original_url is not None:
            parts = urlsplit(original_url.decode("latin-1"))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                return Reason.REQUEST_MALFORMED
            proto, host = parts.scheme.encode(), parts.netloc.encode("latin-1")
            if target is None:
                after = original_url.split(b"://", 1)[1]
                slash = after.find(b"/")
                target = after[slash:] if slash >= 0 else b"/"
        nginx = True
    else:
        method = seen.get(b"x-forwarded-method")
        proto = seen.get(b"x-forwarded-proto", b"")
        host = seen.get(b"x-forwarded-host") or seen.get(b"host", b"")
        target = seen.get(b"x-forwarded-uri")
        nginx = False
    if not method or not target or not host:
        return Reason.REQUEST_MALFORMED
    proto = proto.split(b",")[0].strip().lower()
    if proto not in (b"http", b"https"):
        proto = b"http"
    return Original(method.upper(), proto, host.split(b",")[0].strip(), target, nginx)


def allowed(identity: bytes, keep_alive: bool) -> bytes:
    """200, empty, with the identity headers for the proxy to copy upstream."""
    return b"".join(
        (
            b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n",
            identity,
            b"Content-Length: 0\r\n",
            b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n",
        )
    )


def for_nginx(plan: Denial, extra: tuple[bytes, ...]) -> tuple[Denial, tuple[bytes, ...]]:
    """nginx's auth_request takes 401 and 403 only: a redirect becomes 401 (sign in) or
    403 (unauthorized page) with the target in X-Clerk-Redirect. nginx hands on only the
    first Set-Cookie of an auth response ($upstream_http_set_cookie), and a handshake sets
    several: each is repeated as X-Clerk-Set-Cookie-<n> for the error_page to copy."""
    if plan.location is None:
        return plan, extra
    status = 403 if status_of(plan.reason) == 403 else 401
    numbered = tuple(
        b"X-Clerk-Set-Cookie-%d: %s" % (n, line[len(SET_COOKIE) :])
        for n, line in enumerate((x for x in extra if x.startswith(SET_COOKIE)), start=1)
    )
    return Denial(status, plan.reason), (
        b"X-Clerk-Redirect: %s\r\n" % plan.location.encode("latin-1", "replace"),
        *extra,
        *numbered,
    )


SET_COOKIE = b"Set-Cookie: "
