"""Decision -> what the client sees. The ONE place a reason becomes a status code.

The same Reason string goes into the JSON body, the log line and the metric label. Error
bodies are built once at import; a deny costs a dict lookup, not a json.dumps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import quote

from gateway.decision import Reason

_STATUS: dict[Reason, int] = {
    Reason.PATH_AMBIGUOUS: 400,
    Reason.REQUEST_MALFORMED: 400,
    Reason.PROXY_UNTRUSTED: 400,
    Reason.WEBHOOK_IN_PROGRESS: 409,
    Reason.REQUEST_HEADER_TOO_LARGE: 431,
    Reason.REQUEST_LINE_TOO_LONG: 414,
    Reason.REQUEST_HEAD_TIMEOUT: 408,
    Reason.REQUEST_BODY_TIMEOUT: 408,
    Reason.ROLE_REQUIRED: 403,
    Reason.ORG_ROLE_REQUIRED: 403,
    Reason.ORG_PERMISSION_REQUIRED: 403,
    Reason.ROUTE_DENIED: 403,
    Reason.CSRF_ORIGIN_MISMATCH: 403,
    Reason.WEBHOOK_HEADERS_MISSING: 400,
    Reason.WEBHOOK_HEADERS_INVALID: 400,
    Reason.WEBHOOK_SIGNATURE_INVALID: 400,
    Reason.WEBHOOK_TIMESTAMP_TOO_OLD: 400,
    Reason.WEBHOOK_TIMESTAMP_TOO_NEW: 400,
    Reason.WEBHOOK_BODY_TOO_LARGE: 413,
    Reason.WEBHOOK_ALREADY_DELIVERED: 200,
    Reason.JWK_REMOTE_FAILED_TO_LOAD: 503,
    Reason.UPSTREAM_UNREACHABLE: 502,
    Reason.UPSTREAM_RESET: 502,
    Reason.UPSTREAM_TIMEOUT: 504,
    Reason.UPSTREAM_INVALID_RESPONSE: 502,
    Reason.INTERNAL_ERROR: 500,
    # a handshake is a redirect through Clerk (307); these statuses are never rendered as
    # denials, but every reason has one
    Reason.DEV_BROWSER_SYNC: 307,
    Reason.PRIMARY_RESPONDS_TO_SYNCING: 307,
    Reason.PRIMARY_DOMAIN_CROSS_ORIGIN_SYNC: 307,
    Reason.SATELLITE_NEEDS_SYNCING: 307,
}
# Everything else is a failed or missing session: 401.

_ERROR_KIND = {
    200: "ok",
    400: "bad_request",
    401: "unauthorized",
    307: "redirect",
    403: "forbidden",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}

# Reasons a browser is sent to sign in for, and those it is sent to `unauthorized_url` for.
_FORBIDDEN_REDIRECTS = frozenset(
    [Reason.ROLE_REQUIRED, Reason.ORG_ROLE_REQUIRED, Reason.ORG_PERMISSION_REQUIRED]
)


def status_of(reason: Reason) -> int:
    return _STATUS.get(reason, 401)


def body_of(reason: Reason) -> bytes:
    return _BODIES[reason]


_BODIES: dict[Reason, bytes] = {
    r: json.dumps({"error": _ERROR_KIND[status_of(r)], "reason": r.value}).encode() for r in Reason
}


@dataclass(frozen=True, slots=True)
class Denial:
    """How a denied request is answered."""

    status: int
    reason: Reason
    location: str | None = None  # set for a 307 redirect

    @property
    def kind(self) -> str:
        return "redirect" if self.location is not None else "deny"

    @property
    def www_authenticate(self) -> bool:
        return self.status == 401


_PLAIN = {r: Denial(status_of(r), r) for r in Reason}  # answers without a Location: shared


def is_navigation(method: str, sec_fetch_dest: str | None, accept: str | None) -> bool:
    """A browser loading a page, as opposed to an API call (a form POST included)."""
    if method not in ("GET", "HEAD"):
        return False
    if sec_fetch_dest is not None:
        return sec_fetch_dest.strip().lower() in ("document", "iframe")
    return "text/html" in (accept or "").lower()


def denial(
    reason: Reason,
    *,
    navigation: bool,
    sign_in_url: str,
    unauthorized_url: str,
    original_url: str,
) -> Denial:
    status = status_of(reason)
    if navigation and status == 401:
        return Denial(307, reason, with_query(sign_in_url, "redirect_url", original_url))
    if navigation and reason in _FORBIDDEN_REDIRECTS:
        return Denial(307, reason, unauthorized_url)
    return _PLAIN[reason]


def with_query(url: str, name: str, value: str) -> str:
    """`url` with one more query parameter; the fragment, if any, stays last."""
    base, hash_, fragment = url.partition("#")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}{name}={quote(value, safe='')}{hash_}{fragment}"


# ---- the bytes on the wire --------------------------------------------------------------

RETRY_AFTER_S = 5
_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}
_rendered: dict[tuple[Reason, int, bool, bool], bytes] = {}


def render(
    denial: Denial,
    *,
    keep_alive: bool,
    token_given: bool = False,
    extra: tuple[bytes, ...] = (),
) -> bytes:
    """A complete gateway-made response: JSON body with the reason, `no-store`, the
    redirect, `WWW-Authenticate` or `Retry-After` its status calls for. Responses without a
    Location or extra headers are built once per reason and kept."""
    if denial.location is None and not extra:
        key = (denial.reason, denial.status, keep_alive, token_given)
        cached = _rendered.get(key)
        if cached is None:
            cached = _rendered[key] = _render(denial, keep_alive, token_given, ())
        return cached
    return _render(denial, keep_alive, token_given, extra)


def _render(denial: Denial, keep_alive: bool, token_given: bool, extra: tuple[bytes, ...]) -> bytes:
    body = body_of(denial.reason)
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (denial.status, _PHRASES.get(denial.status, b"Unknown")),
        b"Content-Type: application/json\r\nCache-Control: no-store\r\n",
    ]
    if denial.location is not None:
        lines.append(b"Location: %s\r\n" % denial.location.encode("latin-1", "replace"))
    if denial.www_authenticate:
        lines.append(
            b'WWW-Authenticate: Bearer error="invalid_token"\r\n'
            if token_given
            else b"WWW-Authenticate: Bearer\r\n"
        )
    if denial.status == 503:
        lines.append(b"Retry-After: %d\r\n" % RETRY_AFTER_S)
    lines.extend(extra)
    lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    lines.append(body)
    return b"".join(lines)


def refusal(reason: Reason) -> bytes:
    """The answer to a request the engine refuses before deciding anything: then close."""
    return render(Denial(status_of(reason), reason), keep_alive=False)
