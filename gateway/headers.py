"""Request headers toward the upstream: strip what a client may not say, then inject.

Identity headers are trustworthy only if no client can set them. So on EVERY request,
whatever the route or outcome, any client header that looks like one of ours is removed
first: every name starting with `X-Clerk-`, every configured identity header name and
every `strip_headers` name, compared case-insensitively with every character that is not a
letter or digit read as `-` (CGI and WSGI fold `X_Clerk_User_Id` into the same variable
as `X-Clerk-User-Id`; some frameworks read `X.Clerk.User.Id` alike). Headers that servers
and frameworks trust to rewrite the URL, the method or the client address are removed too
unless a trusted proxy sent them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gateway.decision import Principal
from gateway.model import IdentityHeaders

log = logging.getLogger("clerk_gateway.headers")

RESERVED_PREFIX = "x-clerk-"

# RFC 9110 7.6.1: connection-specific headers never cross a proxy.
HOP_BY_HOP = frozenset(
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
)


_NOT_ALNUM = str.maketrans({chr(c): "-" for c in range(128) if not chr(c).isalnum()})


def fold(name: str) -> str:
    """A header name as the most lenient server reads it: lower case, `-` for the rest."""
    return name.lower().translate(_NOT_ALNUM)


# Read by servers and frameworks as the URL, the method or the client's address: only a
# trusted proxy may send them (contract: "Headers that servers trust").
OVERRIDES = frozenset(
    fold(name)
    for name in (
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X-Real-IP",
        "True-Client-IP",
        "X-Forwarded-Prefix",
        "X-Forwarded-Port",
        "X-Forwarded-Ssl",
        "X-Forwarded-Server",
        "X-Forwarded-Scheme",
    )
)


def reserved_names(identity: IdentityHeaders, strip: Iterable[str] = ()) -> frozenset[str]:
    """Folded names a client may never send (in addition to the `x-clerk-` prefix)."""
    return frozenset(fold(n) for n in (*identity.names(), *strip))


def is_reserved(lower: str, reserved: frozenset[str]) -> bool:
    """`lower`: the header name, already lower-cased."""
    folded = lower.translate(_NOT_ALNUM)
    return folded.startswith(RESERVED_PREFIX) or folded in reserved


def safe_value(value: str) -> bool:
    """Printable ASCII only: a CR or LF would split the header, other bytes confuse parsers."""
    return value.isascii() and value.isprintable()


def identity_values(principal: Principal, identity: IdentityHeaders) -> list[tuple[str, str]]:
    """The verified identity as (header, value) pairs; absent claims send no header."""
    candidates: Iterable[tuple[str | None, str | None]] = (
        (identity.user_id, principal.user_id),
        (identity.session_id, principal.session_id),
        (identity.role, ",".join(principal.roles) or None),
        (identity.org_id, principal.org_id),
        (identity.org_slug, principal.org_slug),
        (identity.org_role, principal.org_role),
        (identity.org_permissions, ",".join(principal.org_permissions) or None),
    )
    out: list[tuple[str, str]] = []
    for name, value in candidates:
        if name is None or value is None:
            continue
        if not safe_value(value):
            # never log the value: it is attacker-influenced and may be huge
            log.warning(
                "identity header dropped",
                extra={
                    "header": name,
                    "reason": "claim-value-unsafe",
                    "user_id": principal.user_id,
                },
            )
            continue
        out.append((name, value))
    return out


FORWARDED_NAMES = frozenset(
    ["forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
)


def connection_listed(values: Iterable[str]) -> frozenset[str]:
    """Header names a `Connection` header declares hop-by-hop (RFC 9110 7.6.1)."""
    names: set[str] = set()
    for value in values:
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(names)


def upstream_headers(
    incoming: Iterable[tuple[str, str]],
    *,
    reserved: frozenset[str],
    trusted_proxy: bool,
    client_ip: str,
    scheme: str,
    host: str,
    identity: Iterable[tuple[str, str]] = (),
    host_override: str | None = None,
) -> list[tuple[str, str]]:
    """Strip first (on every request, whatever the outcome), then inject."""
    items = list(incoming)
    listed = connection_listed(v for k, v in items if k.lower() == "connection")
    out: list[tuple[str, str]] = []
    forwarded_for: list[str] = []
    proto = forwarded_host = None
    for name, value in items:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in listed or is_reserved(lower, reserved):
            continue
        if not trusted_proxy and lower.translate(_NOT_ALNUM) in OVERRIDES:
            continue
        if lower in FORWARDED_NAMES:
            if trusted_proxy:
                if lower == "x-forwarded-for":
                    forwarded_for.append(value)
                    continue
                if lower == "x-forwarded-proto":
                    proto = proto or value
                    continue
                if lower == "x-forwarded-host":
                    forwarded_host = forwarded_host or value
                    continue
                out.append((name, value))  # `Forwarded` from a trusted proxy
            continue
        if lower in ("host", "content-length", "expect"):
            continue  # set below / framed by the forwarder / answered by the gateway
        out.append((name, value))
    out.append(("Host", host_override or host))
    out.append(("X-Forwarded-For", ", ".join([*forwarded_for, client_ip])))
    out.append(("X-Forwarded-Proto", proto or scheme))
    out.append(("X-Forwarded-Host", forwarded_host or host))
    out.extend(identity)
    return out
