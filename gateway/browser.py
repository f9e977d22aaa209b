"""Browser sessions on the wire: the facts Clerk's handshake rules read from an exchange,
and the headers of the gateway's handshake and signed-out answers.

Kept apart from the hot path: only requests without an Authorization token, on a policy
with the handshake on, come here; a header token never does (Clerk's header path).
"""

from __future__ import annotations

from typing import Any

from gateway.clerk.handshake import Navigation
from gateway.decision import Reason
from gateway.headers import forwarded_lines
from gateway.http1 import Exchange
from gateway.responses import is_navigation


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def original_url(ex: Exchange) -> str:
    """The URL the browser asked for: from the connection, or from X-Forwarded-Proto/-Host
    only when a trusted proxy sent them; in forward-auth mode, the one the proxy describes."""
    forward_auth: Any = ex.original
    if forward_auth is not None:
        url: str = forward_auth.url
        return url
    _, proto, host = forwarded_lines(ex, b"", b"https" if ex.conn.secure else b"http")
    scheme = proto.split(b",")[0].strip().lower().decode("latin-1")
    if scheme not in ("http", "https"):
        scheme = "http"
    _, mark, query = ex.url.partition(b"?")
    tail = (mark + query).decode("latin-1") if mark else ""
    authority = host.split(b",")[0].strip().decode("latin-1")
    return f"{scheme}://{authority}{ex.path}{tail}"


def own_origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def method_of(ex: Exchange) -> str:
    forward_auth: Any = ex.original
    method: bytes = forward_auth.method if forward_auth is not None else ex.method
    return method.decode("latin-1")


def navigation(ex: Exchange) -> Navigation:
    """The request as Clerk's handshake rules see it."""
    dest = _text(ex.header(b"sec-fetch-dest"))
    method = method_of(ex)
    return Navigation(
        method=method,
        url=original_url(ex),
        document=is_navigation(method, dest, _text(ex.header(b"accept"))),
        fetch_dest_document=dest is not None and dest.strip().lower() == "document",
        referer=_text(ex.header(b"referer")),
    )


def fetch_facts(ex: Exchange) -> tuple[str | None, str | None]:
    """Sec-Fetch-Site and Origin, for the cross-site check."""
    return _text(ex.header(b"sec-fetch-site")), _text(ex.header(b"origin"))


def auth_headers(status: str, reason: Reason) -> tuple[bytes, ...]:
    """x-clerk-auth-status / -reason, as Clerk's SDKs set them on handshake and signed-out
    responses."""
    return (
        b"x-clerk-auth-status: %s\r\n" % status.encode("ascii"),
        b"x-clerk-auth-reason: %s\r\n" % reason.value.encode("ascii"),
    )


def set_cookies(directives: list[str]) -> tuple[bytes, ...]:
    return tuple(b"Set-Cookie: %s\r\n" % d.encode("latin-1") for d in directives)
