"""Verified claims -> Principal: v1 and v2 organization shapes, fpm decoding, wrong types."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.clerk.claims import decode_permissions, principal_from_claims, roles_at
from gateway.decision import Actor, Principal

ROLE = ("metadata", "role")


def who(**claims: Any) -> Principal:
    principal = principal_from_claims({"sub": "user_1", **claims}, ROLE)
    assert principal is not None
    return principal


# Reference test vector 21: fpm decoding.
FPM = [
    # (description, fea, per, fpm, expected permissions)
    (
        "two features, two permissions",
        "o:dashboard,o:teams",
        "manage,read",
        "3,2",
        ("org:dashboard:manage", "org:dashboard:read", "org:teams:read"),
    ),
    (
        "five permissions",
        "o:repositories,o:projects",
        "read,create,update,delete,revoke",
        "7,21",
        (
            "org:repositories:read",
            "org:repositories:create",
            "org:repositories:update",
            "org:projects:read",
            "org:projects:update",
            "org:projects:revoke",
        ),
    ),
    ("a non-digit mask means none", "o:dashboard", "manage", "1invalid", ()),
    (
        "user feature first: indexed by the full fea list (docs, Python SDK)",
        "u:x,o:b",
        "read",
        "0,1",
        ("org:b:read",),
    ),
    (
        "a user-scoped feature's bits are not org permissions",
        "u:export,o:reports",
        "read,manage",
        "3,1",
        ("org:reports:read",),
    ),
    ("bits beyond per are dropped", "o:a", "read", "6", ()),
    ("big masks are fine", "o:a", "p", str(2**70 + 1), ("org:a:p",)),
    ("missing mask for a feature", "o:a,o:b", "read", "1", ("org:a:read",)),
    ("ou scope counts as org", "ou:a", "read", "1", ("org:a:read",)),
    ("uo scope counts as org", "uo:a", "read", "1", ("org:a:read",)),
    ("a feature without a scope is skipped", "reports,o:b", "read", "1,1", ("org:b:read",)),
    ("the scope ends at the first colon", "o:a:b", "read", "1", ("org:a:b:read",)),
    ("a user feature whose name holds ':org' stays a user feature", "u:org:x", "read", "1", ()),
    ("a scope without a feature is skipped", "o:,o:b", "read", "1,1", ("org:b:read",)),
    (
        "spaces around features, names and masks",
        " o:a , o:b",
        " read , write ",
        " 2 , 1 ",
        ("org:a:write", "org:b:read"),
    ),
    (
        "an empty permission name is skipped",
        "o:a",
        "read,,write",
        "7",
        ("org:a:read", "org:a:write"),
    ),
    ("a non-ASCII digit mask means none", "o:a", "read", "\u0661", ()),
    ("a negative mask means none", "o:a", "read", "-1", ()),
    ("one bad mask among good ones means none", "o:a,o:b", "read", "1,x", ()),
    ("fea not a string", ["o:a"], "read", "1", ()),
    ("per not a string", "o:a", ["read"], "1", ()),
    ("fpm not a string", "o:a", "read", 1, ()),
]


@pytest.mark.parametrize(
    ("description", "fea", "per", "fpm", "expected"), FPM, ids=[c[0] for c in FPM]
)
def test_fpm_decoding(
    description: str, fea: Any, per: Any, fpm: Any, expected: tuple[str, ...]
) -> None:
    assert decode_permissions(fea, per, fpm) == expected, description


def test_vector_21_principal() -> None:
    principal = who(
        v=2,
        fea="o:dashboard,o:teams",
        o={"id": "org_1", "rol": "admin", "per": "manage,read", "fpm": "3,2"},
    )
    assert principal.org_role == "org:admin"
    assert "org:teams:manage" not in principal.org_permissions
    assert principal.org_permissions == (
        "org:dashboard:manage",
        "org:dashboard:read",
        "org:teams:read",
    )


WRONG_TYPES = [
    ("sub is a number", {"sub": 5}, None),
    ("sub is empty", {"sub": ""}, None),
    ("sub is missing", {"sid": "sess_1"}, None),
]


@pytest.mark.parametrize(
    ("description", "claims", "expected"), WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES]
)
def test_no_principal_without_a_user(
    description: str, claims: dict[str, Any], expected: None
) -> None:
    assert principal_from_claims(claims, ROLE) is expected


CLAIM_SHAPES = [
    # (description, claims, role claim path, roles)
    ("role string", {"metadata": {"role": "admin"}}, ROLE, ("admin",)),
    (
        "role list keeps strings only",
        {"metadata": {"role": ["admin", 3, None, "x"]}},
        ROLE,
        ("admin", "x"),
    ),
    ("role list drops empty strings", {"metadata": {"role": ["", "x"]}}, ROLE, ("x",)),
    ("empty role string is no role", {"metadata": {"role": ""}}, ROLE, ()),
    ("role number is no role", {"metadata": {"role": 1}}, ROLE, ()),
    ("role object is no role", {"metadata": {"role": {"admin": True}}}, ROLE, ()),
    ("metadata a string is no role", {"metadata": "admin"}, ROLE, ()),
    ("missing metadata", {}, ROLE, ()),
    ("no role claim configured", {"metadata": {"role": "admin"}}, None, ()),
    ("a top-level role claim", {"role": "admin"}, ("role",), ("admin",)),
    ("a deeper path", {"a": {"b": {"c": ["x"]}}}, ("a", "b", "c"), ("x",)),
]


@pytest.mark.parametrize(
    ("description", "claims", "path", "expected"), CLAIM_SHAPES, ids=[c[0] for c in CLAIM_SHAPES]
)
def test_roles_at(
    description: str,
    claims: dict[str, Any],
    path: tuple[str, ...] | None,
    expected: tuple[str, ...],
) -> None:
    assert roles_at(claims, path) == expected, description


V2_FULL = {
    "sub": "user_1",
    "sid": "sess_1",
    "v": 2,
    "metadata": {"role": "analyst"},
    "fea": "o:reports,u:export",
    "pla": "u:free,o:pro",
    "fva": [3, -1],
    "sts": "active",
    "o": {"id": "org_1", "slg": "acme", "rol": "admin", "per": "read", "fpm": "1,1"},
    "act": {"sub": "user_admin", "sid": "sess_9", "iss": "https://dashboard.clerk.com"},
}
V1_FULL = {
    "sub": "user_2",
    "sid": "sess_2",
    "org_id": "org_2",
    "org_slug": "globex",
    "org_role": "org:member",
    "org_permissions": ["org:reports:read", "", 7, "org:billing:read"],
}

PRINCIPALS = [
    # (description, claims, the whole Principal expected)
    (
        "every v2 claim",
        V2_FULL,
        Principal(
            user_id="user_1",
            session_id="sess_1",
            roles=("analyst",),
            org_id="org_1",
            org_slug="acme",
            org_role="org:admin",
            org_permissions=("org:reports:read",),
            features=("o:reports", "u:export"),
            plan=("u:free", "o:pro"),
            factor_ages=(3, -1),
            session_status="active",
            actor=Actor("user_admin", "sess_9", "https://dashboard.clerk.com"),
        ),
    ),
    (
        "every v1 claim (empty and non-string permissions dropped)",
        V1_FULL,
        Principal(
            user_id="user_2",
            session_id="sess_2",
            org_id="org_2",
            org_slug="globex",
            org_role="org:member",
            org_permissions=("org:reports:read", "org:billing:read"),
        ),
    ),
    (
        "a v1 role without its prefix gets it",
        {"sub": "u", "org_id": "org_1", "org_role": "admin"},
        Principal(user_id="u", org_id="org_1", org_role="org:admin"),
    ),
    (
        "a v2 role with the prefix keeps one",
        {"sub": "u", "o": {"id": "org_1", "rol": "org:admin"}},
        Principal(user_id="u", org_id="org_1", org_role="org:admin"),
    ),
    (
        "v2 organization without an id: none at all, v1 claims ignored",
        {"sub": "u", "o": {"slg": "acme", "rol": "admin"}, "org_id": "org_v1"},
        Principal(user_id="u"),
    ),
    (
        "v2 organization without a role",
        {"sub": "u", "o": {"id": "org_1"}},
        Principal(user_id="u", org_id="org_1"),
    ),
    (
        "v1 claims without org_id: no organization",
        {"sub": "u", "org_slug": "acme", "org_role": "admin", "org_permissions": ["p"]},
        Principal(user_id="u"),
    ),
    (
        "v1 permissions not a list",
        {"sub": "u", "org_id": "org_1", "org_permissions": "org:a:b"},
        Principal(user_id="u", org_id="org_1"),
    ),
    (
        "o not an object falls back to v1",
        {"sub": "u", "o": "org_1", "org_id": "org_v1"},
        Principal(user_id="u", org_id="org_v1"),
    ),
    (
        "empty strings count as absent",
        {"sub": "u", "sid": "", "sts": "", "org_id": ""},
        Principal(user_id="u"),
    ),
    (
        "features and plans: spaces and empty items dropped",
        {"sub": "u", "fea": " o:x, ,u:y ,", "pla": ","},
        Principal(user_id="u", features=("o:x", "u:y")),
    ),
    ("features not a string", {"sub": "u", "fea": ["o:x"]}, Principal(user_id="u")),
    ("fva with three entries", {"sub": "u", "fva": [1, 2, 3]}, Principal(user_id="u")),
    ("fva with one entry", {"sub": "u", "fva": [1]}, Principal(user_id="u")),
    ("fva with a boolean", {"sub": "u", "fva": [True, 1]}, Principal(user_id="u")),
    ("fva with a string", {"sub": "u", "fva": [1, "2"]}, Principal(user_id="u")),
    ("fva not a list", {"sub": "u", "fva": "1,2"}, Principal(user_id="u")),
    ("act not an object", {"sub": "u", "act": "user_admin"}, Principal(user_id="u")),
    ("act without sub", {"sub": "u", "act": {"sid": "sess_9"}}, Principal(user_id="u")),
    (
        "act with sub only",
        {"sub": "u", "act": {"sub": "user_admin"}},
        Principal(user_id="u", actor=Actor("user_admin", None, None)),
    ),
    (
        "a pending session",
        {"sub": "u", "sts": "pending"},
        Principal(user_id="u", session_status="pending"),
    ),
]


@pytest.mark.parametrize(
    ("description", "claims", "expected"), PRINCIPALS, ids=[c[0] for c in PRINCIPALS]
)
def test_principal_from_claims(
    description: str, claims: dict[str, Any], expected: Principal
) -> None:
    assert principal_from_claims(claims, ROLE) == expected, description


def test_other_claims_are_exposed() -> None:
    p = who(
        sid="sess_1",
        fva=[3, -1],
        pla="u:free",
        fea="o:x,u:y",
        act={"sub": "user_admin", "sid": "sess_9"},
    )
    assert p.session_id == "sess_1"
    assert p.factor_ages == (3, -1)
    assert p.plan == ("u:free",)
    assert p.features == ("o:x", "u:y")
    assert p.actor is not None
    assert p.actor.subject == "user_admin"


def test_wrongly_typed_org_claims_are_ignored() -> None:
    p = who(o={"id": 3, "rol": "admin"}, org_id="org_v1")
    assert (p.org_id, p.org_role, p.org_permissions) == (None, None, ())
    p = who(org_id="org_1", org_role=["admin"], org_permissions="org:a:b")
    assert (p.org_id, p.org_role, p.org_permissions) == ("org_1", None, ())
