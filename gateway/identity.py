"""The identity the upstream receives: header name and value pairs from a verified session,
built once per verified token (and policy) and kept as the bytes of a header block.

Values that are not printable ASCII are never sent as they are: a CR or LF would split the
header, other bytes confuse parsers. Absent claims send no header.
"""

from __future__ import annotations

import logging

from gateway.decision import Principal
from gateway.headers import safe_value
from gateway.model import IdentityHeaders

log = logging.getLogger("clerk_gateway.headers")


def identity_values(principal: Principal, identity: IdentityHeaders) -> list[tuple[str, str]]:
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


def header_block(pairs: list[tuple[str, str]]) -> bytes:
    """`Name: value` lines, CRLF-terminated, ready to go into a request head."""
    return b"".join(b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs)
