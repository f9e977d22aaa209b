"""decide(): route access, verification outcome and claims -> Decision."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.clerk.claims import decode_permissions, principal_from_claims, roles_at
from gateway.decide import Located, decide
from gateway.decision import Access, Principal, Reason
from gateway.paths import Target
from gateway.routes import Requirement, Route, compile_pattern

ROLE = ("metadata", "role")


def route(
    access: Access, require: Requirement | None = None, accept_pending: bool = False
) -> Route:
    return Route(
        0,
        (compile_pattern("/x"),),
        access,
        require=require or Requirement(),
        accept_pending=accept_pending,
    )


def at(matched: Route | None, default: Access = Access.PROTECTED) -> Located:
    """A request located at `matched` (None: no route matched, the default applies)."""
    access = matched.access if matched is not None else default
    return Located(Target("/x", "", False), matched, access)


def who(**claims: Any) -> Principal:
    principal = principal_from_claims({"sub": "user_1", **claims}, ROLE)
    assert principal is not None
    return principal


MEMBER = who(metadata={"role": "member"})
ADMIN = who(metadata={"role": "admin"})
V1_ORG_ADMIN = who(org_id="org_1", org_role="org:admin", org_permissions=["org:reports:read"])
V2_ORG_ADMIN = who(
    v=2,
    fea="o:reports,o:billing",
    o={"id": "org_1", "slg": "acme", "rol": "admin", "per": "read,manage", "fpm": "1,3"},
)
PENDING = who(sts="pending")

CASES = [
    # (description, access, requirement, outcome, allowed, reason)
    ("public route, anonymous", Access.PUBLIC, None, None, True, None),
    (
        "public route, failed token is ignored",
        Access.PUBLIC,
        None,
        Reason.TOKEN_EXPIRED,
        True,
        None,
    ),
    ("deny route denies even admins", Access.DENY, None, ADMIN, False, Reason.ROUTE_DENIED),
    ("protected, anonymous", Access.PROTECTED, None, None, False, Reason.SESSION_TOKEN_MISSING),
    (
        "protected, token failed",
        Access.PROTECTED,
        None,
        Reason.TOKEN_INVALID_SIGNATURE,
        False,
        Reason.TOKEN_INVALID_SIGNATURE,
    ),
    ("protected, member", Access.PROTECTED, None, MEMBER, True, None),
    ("admin, member", Access.ADMIN, None, MEMBER, False, Reason.ROLE_REQUIRED),
    ("admin, admin", Access.ADMIN, None, ADMIN, True, None),
    ("admin, anonymous", Access.ADMIN, None, None, False, Reason.SESSION_TOKEN_MISSING),
    (
        "roles any-of met",
        Access.PROTECTED,
        Requirement(roles=("analyst", "admin")),
        ADMIN,
        True,
        None,
    ),
    (
        "roles any-of unmet",
        Access.PROTECTED,
        Requirement(roles=("analyst",)),
        MEMBER,
        False,
        Reason.ROLE_REQUIRED,
    ),
    (
        "org role v1",
        Access.PROTECTED,
        Requirement(org_roles=("org:admin",)),
        V1_ORG_ADMIN,
        True,
        None,
    ),
    (
        "org role v2 (prefix added)",
        Access.PROTECTED,
        Requirement(org_roles=("org:admin",)),
        V2_ORG_ADMIN,
        True,
        None,
    ),
    (
        "org role without an org",
        Access.PROTECTED,
        Requirement(org_roles=("org:admin",)),
        MEMBER,
        False,
        Reason.ORG_ROLE_REQUIRED,
    ),
    (
        "org permission v1",
        Access.PROTECTED,
        Requirement(org_permissions=("org:reports:read",)),
        V1_ORG_ADMIN,
        True,
        None,
    ),
    (
        "org permissions v2 all-of met",
        Access.PROTECTED,
        Requirement(org_permissions=("org:reports:read", "org:billing:manage")),
        V2_ORG_ADMIN,
        True,
        None,
    ),
    (
        "org permissions v2 one missing",
        Access.PROTECTED,
        Requirement(org_permissions=("org:reports:manage",)),
        V2_ORG_ADMIN,
        False,
        Reason.ORG_PERMISSION_REQUIRED,
    ),
    (
        "pending session is signed out",
        Access.PROTECTED,
        None,
        PENDING,
        False,
        Reason.SESSION_PENDING,
    ),
    ("webhook routes are decided on the body", Access.WEBHOOK, None, None, True, None),
]


@pytest.mark.parametrize(
    ("description", "access", "require", "outcome", "allowed", "reason"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_decide(
    description: str,
    access: Access,
    require: Requirement | None,
    outcome: Principal | Reason | None,
    allowed: bool,
    reason: Reason | None,
) -> None:
    decision = decide(at(route(access, require)), outcome)
    assert (decision.allowed, decision.reason) == (allowed, reason), description


def test_pending_session_accepted_where_the_route_says_so() -> None:
    assert decide(at(route(Access.PROTECTED, accept_pending=True)), PENDING).allowed


def test_pending_session_forwards_no_identity_on_public_routes() -> None:
    decision = decide(at(route(Access.PUBLIC)), PENDING)
    assert decision.allowed
    assert decision.principal is None


def test_unmatched_request_gets_the_default() -> None:
    assert decide(at(None, Access.DENY), ADMIN).reason is Reason.ROUTE_DENIED
    assert decide(at(None, Access.PUBLIC), None).allowed
    assert decide(at(None, Access.ADMIN), MEMBER).reason is Reason.ROLE_REQUIRED


# Reference test vector 21: fpm decoding.
FPM = [
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
    ("bits beyond per are dropped", "o:a", "read", "6", ()),
    ("big masks are fine", "o:a", "p", str(2**70 + 1), ("org:a:p",)),
    ("missing mask for a feature", "o:a,o:b", "read", "1", ("org:a:read",)),
    ("ou scope counts as org", "ou:a", "read", "1", ("org:a:read",)),
]


@pytest.mark.parametrize(
    ("description", "fea", "per", "fpm", "expected"), FPM, ids=[c[0] for c in FPM]
)
def test_fpm_decoding(
    description: str, fea: str, per: str, fpm: str, expected: tuple[str, ...]
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
]


@pytest.mark.parametrize(
    ("description", "claims", "expected"), WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES]
)
def test_no_principal_without_a_user(
    description: str, claims: dict[str, Any], expected: None
) -> None:
    assert principal_from_claims(claims, ROLE) is expected


CLAIM_SHAPES = [
    ("role string", {"metadata": {"role": "admin"}}, ("admin",)),
    (
        "role list keeps strings only",
        {"metadata": {"role": ["admin", 3, None, "x"]}},
        ("admin", "x"),
    ),
    ("role number is no role", {"metadata": {"role": 1}}, ()),
    ("metadata a string is no role", {"metadata": "admin"}, ()),
    ("missing metadata", {}, ()),
]


@pytest.mark.parametrize(
    ("description", "claims", "expected"), CLAIM_SHAPES, ids=[c[0] for c in CLAIM_SHAPES]
)
def test_roles_at(description: str, claims: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert roles_at(claims, ROLE) == expected, description


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
