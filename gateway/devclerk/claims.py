"""Claims the stand-in mints on request: organizations in Clerk's v2 shape, custom claims.

v2 tokens do not list org permissions; they encode them positionally (clerk-protocol.md
section 1): `fea` lists the features (`o:dashboard,o:teams`), `o.per` the permission
names (`manage,read`), and `o.fpm` one decimal bit mask per feature, bit k (least
significant first) meaning the k-th name. Only org features are written, so every reader
(Clerk's JS SDK indexes the org-scoped subset of `fea`, its Python SDK the full list)
decodes the same permissions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_LIFETIME_S = 3600
_PERMISSION = re.compile(r"org:([A-Za-z0-9_.-]+):([A-Za-z0-9_.-]+)")
_QUERY_KEYS = ("org_id", "org_slug", "org_role", "org_permissions", "claims", "lifetime")


def encode_org_permissions(permissions: Iterable[str]) -> tuple[str, str, str]:
    """`org:<feature>:<perm>` strings -> (`fea`, `o.per`, `o.fpm`). ValueError if malformed."""
    features: dict[str, int] = {}  # feature -> mask, in order of first mention
    names: list[str] = []
    for permission in permissions:
        match = _PERMISSION.fullmatch(permission)
        if match is None:
            raise ValueError(f"{permission!r} is not of the form org:<feature>:<permission>")
        feature, name = match.groups()
        if name not in names:
            names.append(name)
        features[feature] = features.get(feature, 0) | (1 << names.index(name))
    fea = ",".join(f"o:{feature}" for feature in features)
    return fea, ",".join(names), ",".join(str(mask) for mask in features.values())


def org_claims(
    org_id: str,
    *,
    slug: str | None = None,
    role: str | None = None,
    permissions: Iterable[str] = (),
) -> dict[str, Any]:
    """The `o` claim (and `fea`) of a session whose active organization is `org_id`."""
    org: dict[str, Any] = {"id": org_id}
    if slug is not None:
        org["slg"] = slug
    if role is not None:
        org["rol"] = role.removeprefix("org:")  # v2 drops the prefix that v1 carried
    claims: dict[str, Any] = {"o": org}
    fea, per, fpm = encode_org_permissions(permissions)
    if fea:
        org["per"] = per
        org["fpm"] = fpm
        claims["fea"] = fea
    return claims


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What `GET /demo/token/{who}` was asked to mint besides the user's own claims."""

    lifetime_s: int | None = None
    claims: dict[str, Any] = field(default_factory=dict)


def parse_token_query(query: Mapping[str, str], repeated: Iterable[str] = ()) -> TokenRequest | str:
    """The query of `/demo/token/{who}` -> a TokenRequest, or a message saying what is wrong.

    `repeated` names the parameters given more than once (a MultiDict folds them away).
    """
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        return f"unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(_QUERY_KEYS)}"
    twice = sorted(set(repeated))
    if twice:
        return f"parameter(s) given more than once: {', '.join(twice)}"
    lifetime = _lifetime(query.get("lifetime"))
    if isinstance(lifetime, str):
        return lifetime
    org = _org(query)
    if isinstance(org, str):
        return org
    custom = _custom_claims(query.get("claims"))
    if isinstance(custom, str):
        return custom
    # Custom claims come last so that a test can override anything, as `mint(claims=)` does.
    return TokenRequest(lifetime, {**org, **custom})


def _lifetime(text: str | None) -> int | str | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIFETIME_S:
        return f"lifetime must be a whole number of seconds from 1 to {MAX_LIFETIME_S}"
    return int(text)


def _org(query: Mapping[str, str]) -> dict[str, Any] | str:
    org_id = query.get("org_id")
    if org_id is None:
        given = [k for k in ("org_slug", "org_role", "org_permissions") if k in query]
        return f"{', '.join(given)} need(s) org_id" if given else {}
    role = query.get("org_role")
    if not org_id or query.get("org_slug") == "" or role in ("", "org:"):
        return "org_id, org_slug and org_role must not be empty"
    permissions = [p.strip() for p in query.get("org_permissions", "").split(",") if p.strip()]
    try:
        return org_claims(org_id, slug=query.get("org_slug"), role=role, permissions=permissions)
    except ValueError as exc:
        return f"org_permissions: {exc}"


def _custom_claims(text: str | None) -> dict[str, Any] | str:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return 'claims must be a JSON object, e.g. {"email":"a@b.c"}'
    if not isinstance(value, dict):
        return 'claims must be a JSON object, e.g. {"email":"a@b.c"}'
    return value
