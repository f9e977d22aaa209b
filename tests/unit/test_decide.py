"""decide(): route access, verification outcome and claims -> Decision."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.clerk.claims import principal_from_claims
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
