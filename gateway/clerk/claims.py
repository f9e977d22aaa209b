"""Verified session claims -> Principal. Pure; a claim of the wrong type counts as absent.
Claims are parsed JSON: objects are dicts (`isinstance(x, dict)` is a type check, a
`Mapping` check an ABC lookup, on every cache miss).

Clerk has two claim shapes. v1 (deprecated 2025-04) carries `org_id`, `org_slug`,
`org_role` and an `org_permissions` list. v2 carries the active organization as
`o = {id, slg, rol, per, fpm}` and encodes permissions positionally: `fea` lists features
(`o:dashboard,u:export`), `o.per` lists permission names, and `o.fpm` holds one decimal
bit mask per `fea` entry, bit k (least significant first) meaning the k-th name of `per`.
We index `fpm` by the full `fea` list and skip entries that are not org-scoped, which is
what Clerk's docs and Python SDK do (the JS SDK indexes the org-scoped subset; the two
disagree only when a user feature precedes an org feature).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.decision import Actor, Principal


def principal_from_claims(
    claims: Mapping[str, Any], role_claim: tuple[str, ...] | None
) -> Principal | None:
    """None when the claims do not name a user (`sub` missing or not a non-empty string)."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        return None
    org_id, org_slug, org_role, permissions = _organization(claims)
    return Principal(
        user_id=sub,
        session_id=_str(claims.get("sid")),
        roles=roles_at(claims, role_claim),
        org_id=org_id,
        org_slug=org_slug,
        org_role=org_role,
        org_permissions=permissions,
        features=_csv(claims.get("fea")),
        plan=_csv(claims.get("pla")),
        factor_ages=_factor_ages(claims.get("fva")),
        session_status=_str(claims.get("sts")),
        actor=_actor(claims.get("act")),
    )


def roles_at(claims: Mapping[str, Any], path: tuple[str, ...] | None) -> tuple[str, ...]:
    """The role value at a dot path: a string, or the string elements of a list."""
    if path is None:
        return ()
    value: Any = claims
    for part in path:
        if not isinstance(value, dict):
            return ()
        value = value.get(part)
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str) and v)
    return ()


def _organization(
    claims: Mapping[str, Any],
) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
    org = claims.get("o")
    if isinstance(org, dict):
        org_id = _str(org.get("id"))
        if org_id is None:
            return None, None, None, ()
        role = _str(org.get("rol"))
        return (
            org_id,
            _str(org.get("slg")),
            _org_prefixed(role),
            decode_permissions(claims.get("fea"), org.get("per"), org.get("fpm")),
        )
    org_id = _str(claims.get("org_id"))
    if org_id is None:
        return None, None, None, ()
    raw_perms = claims.get("org_permissions")
    perms = (
        tuple(p for p in raw_perms if isinstance(p, str) and p)
        if isinstance(raw_perms, list)
        else ()
    )
    return org_id, _str(claims.get("org_slug")), _org_prefixed(_str(claims.get("org_role"))), perms


def decode_permissions(fea: Any, per: Any, fpm: Any) -> tuple[str, ...]:
    """`org:<feature>:<permission>` for every bit set; any malformed part means none."""
    if not (isinstance(fea, str) and isinstance(per, str) and isinstance(fpm, str)):
        return ()
    features = fea.split(",")
    names = [p.strip() for p in per.split(",")]
    masks = [m.strip() for m in fpm.split(",")]
    if not all(m.isdigit() and m.isascii() for m in masks):
        return ()
    out: list[str] = []
    for feature_entry, mask_text in zip(features, masks, strict=False):
        scope, sep, feature = feature_entry.strip().partition(":")
        if not sep or "o" not in scope or not feature:
            continue
        mask = int(mask_text)
        for bit, name in enumerate(names):
            if name and mask >> bit & 1:
                out.append(f"org:{feature}:{name}")
    return tuple(out)


def _org_prefixed(role: str | None) -> str | None:
    if role is None:
        return None
    return role if role.startswith("org:") else f"org:{role}"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _csv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str):
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _factor_ages(value: Any) -> tuple[int, int] | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (value[0], value[1])
    return None


def _actor(value: Any) -> Actor | None:
    if not isinstance(value, dict):
        return None
    sub = _str(value.get("sub"))
    if sub is None:
        return None
    return Actor(subject=sub, session_id=_str(value.get("sid")), issuer=_str(value.get("iss")))
