"""The identity the upstream receives: header name and value pairs from a verified session
(and, when configured, the user's profile), built once per verified token (and policy) and
kept as the bytes of a header block.

A built-in value with a control character is never sent: a CR or LF would split the
header, and no id, role or slug of Clerk's has one; nor is an id that is not ASCII (Clerk's
are). A role, org slug, org role or permission that is printable but not ASCII (a role
someone named "Président") is sent like any value from a
configured claim or profile path (a name, an email, anything a user typed): percent-encoded
(UTF-8, RFC 3986 unreserved characters kept) with a `<Name>-Encoding: percent` companion,
rather than dropped with the ASCII roles beside it. Absent values send no header.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from gateway.decision import Principal
from gateway.headers import safe_value
from gateway.model import HeaderPath, IdentityHeaders, companion

log = logging.getLogger("clerk_gateway.headers")

PERCENT = "percent"


def identity_values(
    principal: Principal, claims: Mapping[str, Any], identity: IdentityHeaders
) -> list[tuple[str, str]]:
    """The verified identity as (header, value) pairs."""
    candidates = (
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
        if safe_value(value):
            out.append((name, value))
        elif value.isprintable() and name in identity.encodable:
            out += ((name, quote(value, safe="")), (companion(name), PERCENT))
        else:
            # never log the value: it is attacker-influenced and may be huge
            log.warning(
                "identity header dropped",
                extra={
                    "header": name,
                    "reason": "claim-value-unsafe",
                    "user_id": principal.user_id,
                },
            )
    out.extend(path_values(identity.claims, claims))
    return out


def path_values(
    headers: tuple[HeaderPath, ...], source: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Each configured header's value from its dot path into `source`, encoded for the wire
    (with its `-Encoding` companion when percent-encoded)."""
    out: list[tuple[str, str]] = []
    for header in headers:
        encoded = encode(lookup(source, header.path))
        if encoded is None:
            continue
        value, percent = encoded
        out.append((header.name, value))
        if percent:
            out.append((header.companion, PERCENT))
    return out


def lookup(source: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a dot path into parsed JSON (claims, a profile), whose objects are
    dicts: `isinstance(x, dict)` is a type check where `Mapping` is an ABC lookup."""
    value: Any = source
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def encode(value: Any) -> tuple[str, bool] | None:
    """A JSON value as a header value: (text, percent-encoded?), or None to send nothing.

    A string as it is when printable ASCII (and not padded with spaces a parser would
    trim); a number or boolean as JSON; a list of strings (or numbers) joined with `,`;
    anything else (an object, null, an empty string or list) sends no header."""
    try:
        if isinstance(value, bool | int | float):
            return json.dumps(value), False
        if isinstance(value, list):
            if not value or not all(isinstance(v, str | int | float) for v in value):
                return None
            value = ",".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    except ValueError:  # an int of more digits than Python writes (4,300): no header
        return None
    if not isinstance(value, str) or not value:
        return None
    if value.isascii() and value.isprintable() and value == value.strip():
        return value, False
    return quote(value, safe=""), True


def header_block(pairs: list[tuple[str, str]]) -> bytes:
    """`Name: value` lines, CRLF-terminated, ready to go into a request head."""
    return b"".join(b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs)
