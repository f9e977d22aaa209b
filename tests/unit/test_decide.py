"""decide(): route access, verification outcome and claims -> Decision."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.clerk.claims import principal_from_claims
from gateway.clerk.handshake import Handshake, SignedOut, signed_out
from gateway.decide import Located, cross_site, decide, locate
from gateway.decision import ALLOW_ANONYMOUS, Access, Decision, Principal, Reason
from gateway.model import ClerkSettings, Policy, WebhookSettings
from gateway.paths import Target
from gateway.routes import HostPattern, Requirement, Route, RouteTable, compile_pattern

ROLE = ("metadata", "role")


def route(
    access: Access,
    require: Requirement | None = None,
    accept_pending: bool = False,
    csrf: bool = True,
) -> Route:
    return Route(
        0,
        (compile_pattern("/x"),),
        access,
        require=require or Requirement(),
        accept_pending=accept_pending,
        csrf=csrf,
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


NO_ORG_BUT_A_ROLE = Principal(user_id="u", org_role="org:admin", org_permissions=("org:a:b",))

OUTCOMES = [
    # (description, access of the matched route (None: no route, the default is protected),
    #  outcome, (allowed, reason, the principal the decision carries))
    ("a session on a public route goes upstream", Access.PUBLIC, MEMBER, (True, None, MEMBER)),
    ("a session on a webhook route goes upstream", Access.WEBHOOK, MEMBER, (True, None, MEMBER)),
    ("anonymous on a public route", Access.PUBLIC, None, (True, None, None)),
    (
        "a pending session on a public route is anonymous",
        Access.PUBLIC,
        PENDING,
        (True, None, None),
    ),
    ("a session on a protected route", Access.PROTECTED, MEMBER, (True, None, MEMBER)),
    (
        "a member on an admin route: denied, but still identified",
        Access.ADMIN,
        MEMBER,
        (False, Reason.ROLE_REQUIRED, MEMBER),
    ),
    (
        "no route matched and a pending session: signed out",
        None,
        PENDING,
        (False, Reason.SESSION_PENDING, None),
    ),
    ("no route matched and a session", None, MEMBER, (True, None, MEMBER)),
    (
        "no route matched and a failed token",
        None,
        Reason.TOKEN_EXPIRED,
        (False, Reason.TOKEN_EXPIRED, None),
    ),
]


@pytest.mark.parametrize(
    ("description", "access", "outcome", "expected"), OUTCOMES, ids=[c[0] for c in OUTCOMES]
)
def test_the_decision_carries_the_principal(
    description: str,
    access: Access | None,
    outcome: Principal | Reason | None,
    expected: tuple[object, ...],
) -> None:
    located = at(route(access)) if access is not None else at(None, Access.PROTECTED)
    decision = decide(located, outcome)
    got = (decision.allowed, decision.reason, decision.principal)
    assert got == expected, description


def test_anonymous_public_decisions_are_shared() -> None:
    assert decide(at(route(Access.PUBLIC)), None) is ALLOW_ANONYMOUS


UNMET = [
    # (description, requirement, principal, the denial carrying the principal, or None)
    (
        "an org role without an active organization",
        Requirement(org_roles=("org:admin",)),
        NO_ORG_BUT_A_ROLE,
        Reason.ORG_ROLE_REQUIRED,
    ),
    (
        "an org permission without an active organization",
        Requirement(org_permissions=("org:a:b",)),
        NO_ORG_BUT_A_ROLE,
        Reason.ORG_PERMISSION_REQUIRED,
    ),
    (
        "roles are checked before org roles",
        Requirement(roles=("analyst",), org_roles=("org:admin",)),
        MEMBER,
        Reason.ROLE_REQUIRED,
    ),
    (
        "org roles before org permissions",
        Requirement(org_roles=("org:owner",), org_permissions=("org:x:y",)),
        V2_ORG_ADMIN,
        Reason.ORG_ROLE_REQUIRED,
    ),
    (
        "every dimension met",
        Requirement(
            roles=("member",), org_roles=("org:member",), org_permissions=("org:reports:read",)
        ),
        who(
            metadata={"role": "member"},
            org_id="org_1",
            org_role="org:member",
            org_permissions=["org:reports:read"],
        ),
        None,
    ),
]


@pytest.mark.parametrize(
    ("description", "require", "principal", "reason"), UNMET, ids=[c[0] for c in UNMET]
)
def test_requirements(
    description: str, require: Requirement, principal: Principal, reason: Reason | None
) -> None:
    decision = decide(at(route(Access.PROTECTED, require)), principal)
    assert (decision.allowed, decision.reason) == (reason is None, reason), description
    assert decision.principal is principal


def policy() -> Policy:
    routes = (
        Route(0, (compile_pattern("/admin/**"),), Access.ADMIN),
        Route(1, (compile_pattern("/hooks"),), Access.WEBHOOK, methods=frozenset(["POST"])),
        Route(
            2,
            (compile_pattern("/tenant/**"),),
            Access.PROTECTED,
            host=HostPattern.parse("*.example.com"),
        ),
    )
    return Policy(
        "routes.yaml",
        ClerkSettings(),
        WebhookSettings(),
        {},
        routes,
        RouteTable(routes),
        default=Access.PUBLIC,
    )


LOCATE = [
    # (description, method, host, raw target,
    #  (route index or None, access, path, query, has query) or the Reason)
    ("a route", "GET", "h", "/admin/x", (0, Access.ADMIN, "/admin/x", "", False)),
    (
        "normalised before matching, the query kept",
        "GET",
        "h",
        "/public/../admin/x?q=%2F",
        (0, Access.ADMIN, "/admin/x", "q=%2F", True),
    ),
    ("no route: the default", "GET", "h", "/nowhere", (None, Access.PUBLIC, "/nowhere", "", False)),
    ("a route for its method", "POST", "h", "/hooks", (1, Access.WEBHOOK, "/hooks", "", False)),
    (
        "another method: the default",
        "GET",
        "h",
        "/hooks",
        (None, Access.PUBLIC, "/hooks", "", False),
    ),
    (
        "a route for its host",
        "GET",
        "a.example.com",
        "/tenant/1",
        (2, Access.PROTECTED, "/tenant/1", "", False),
    ),
    (
        "another host: the default",
        "GET",
        "example.org",
        "/tenant/1",
        (None, Access.PUBLIC, "/tenant/1", "", False),
    ),
    ("an ambiguous target", "GET", "h", "/admin%2fx", Reason.PATH_AMBIGUOUS),
    ("another route once folded", "GET", "h", "/ADMIN/x", Reason.PATH_AMBIGUOUS),
    ("an absolute-form target", "GET", "h", "http://h/admin", Reason.PATH_AMBIGUOUS),
]


@pytest.mark.parametrize(
    ("description", "method", "host", "raw", "expected"), LOCATE, ids=[c[0] for c in LOCATE]
)
def test_locate(
    description: str, method: str, host: str, raw: str, expected: tuple[object, ...] | Reason
) -> None:
    located = locate(policy(), method, host, raw)
    if isinstance(expected, Reason):
        assert located is expected, description
        return
    assert isinstance(located, Located), description
    index = located.route.index if located.route is not None else None
    target = located.target
    got = (index, located.access, target.path, target.query, target.has_query)
    assert got == expected, description
    assert located.engine is None


def test_plain_denials_are_shared_and_carry_no_auth_reason() -> None:
    decision = decide(at(route(Access.PROTECTED)), Reason.TOKEN_EXPIRED)
    assert decision is Decision.deny(Reason.TOKEN_EXPIRED)
    assert decision.auth is None
    assert decide(at(None), None) is Decision.deny(Reason.SESSION_TOKEN_MISSING)


CSRF = [
    # (description, access of the matched route (None: no route, the default is protected),
    #  the route's csrf setting, outcome, (allowed, reason, principal))
    (
        "cross-site on a protected route: refused before the session counts",
        Access.PROTECTED,
        True,
        MEMBER,
        (False, Reason.CSRF_ORIGIN_MISMATCH, None),
    ),
    (
        "cross-site on a public route: refused too",
        Access.PUBLIC,
        True,
        None,
        (False, Reason.CSRF_ORIGIN_MISMATCH, None),
    ),
    (
        "cross-site with no route matched: the check stays on",
        None,
        True,
        MEMBER,
        (False, Reason.CSRF_ORIGIN_MISMATCH, None),
    ),
    (
        "cross-site where the route turned the check off: decided as usual",
        Access.PROTECTED,
        False,
        MEMBER,
        (True, None, MEMBER),
    ),
    (
        "cross-site, check off, anonymous: still needs a session",
        Access.PROTECTED,
        False,
        None,
        (False, Reason.SESSION_TOKEN_MISSING, None),
    ),
    (
        "cross-site on a deny route: the route's denial comes first",
        Access.DENY,
        True,
        ADMIN,
        (False, Reason.ROUTE_DENIED, None),
    ),
]


@pytest.mark.parametrize(
    ("description", "access", "csrf", "outcome", "expected"), CSRF, ids=[c[0] for c in CSRF]
)
def test_cross_site_requests(
    description: str,
    access: Access | None,
    csrf: bool,
    outcome: Principal | Reason | None,
    expected: tuple[object, ...],
) -> None:
    located = at(route(access, csrf=csrf)) if access is not None else at(None, Access.PROTECTED)
    decision = decide(located, outcome, cross_site=True)
    got = (decision.allowed, decision.reason, decision.principal)
    assert got == expected, description
    if not decision.allowed:
        assert decision is Decision.deny(expected[1]), description  # shared, no auth reason


HANDSHAKE = Handshake(Reason.SESSION_TOKEN_EXPIRED_NOT_REFRESHED)
DEV_SYNC = Handshake(Reason.DEV_BROWSER_SYNC, "https://example.com/v1/client/sync")

HANDSHAKES = [
    # (description, access of the matched route (None: no route), the handshake)
    ("a protected route sends the browser through Clerk", Access.PROTECTED, HANDSHAKE),
    ("so does a public route (the session is refreshed for it)", Access.PUBLIC, HANDSHAKE),
    ("and an unmatched request", None, HANDSHAKE),
    ("a dev-browser sync, with its own location", Access.ADMIN, DEV_SYNC),
]


@pytest.mark.parametrize(
    ("description", "access", "handshake"), HANDSHAKES, ids=[c[0] for c in HANDSHAKES]
)
def test_handshakes(description: str, access: Access | None, handshake: Handshake) -> None:
    located = at(route(access)) if access is not None else at(None, Access.PROTECTED)
    decision = decide(located, handshake)
    assert decision.allowed is False, description
    assert decision.reason is handshake.reason, description
    assert decision.principal is None, description
    assert decision.handshake is handshake, description
    assert decision.auth is None, description


SIGNED_OUT = [
    # (description, access of the matched route (None: no route), the signed-out outcome,
    #  (allowed, reason, auth) of the decision)
    (
        "Clerk's reason and the gateway's differ",
        Access.PROTECTED,
        signed_out(Reason.SESSION_TOKEN_AND_UAT_MISSING),
        (False, Reason.SESSION_TOKEN_MISSING, Reason.SESSION_TOKEN_AND_UAT_MISSING),
    ),
    (
        "an expired token that could not be refreshed",
        Access.ADMIN,
        signed_out(Reason.SESSION_TOKEN_EXPIRED_NON_GET, Reason.TOKEN_EXPIRED),
        (False, Reason.TOKEN_EXPIRED, Reason.SESSION_TOKEN_EXPIRED_NON_GET),
    ),
    (
        "the redirect counter stopped a handshake",
        None,
        signed_out(Reason.SESSION_TOKEN_IAT_BEFORE_CLIENT_UAT, loop=True),
        (
            False,
            Reason.SESSION_TOKEN_IAT_BEFORE_CLIENT_UAT,
            Reason.SESSION_TOKEN_IAT_BEFORE_CLIENT_UAT,
        ),
    ),
    (
        "the same reason on both sides",
        Access.PROTECTED,
        signed_out(Reason.TOKEN_INVALID),
        (False, Reason.TOKEN_INVALID, Reason.TOKEN_INVALID),
    ),
    (
        "a public route lets a signed-out browser through anonymously",
        Access.PUBLIC,
        signed_out(Reason.TOKEN_INVALID),
        (True, None, None),
    ),
]


@pytest.mark.parametrize(
    ("description", "access", "outcome", "expected"), SIGNED_OUT, ids=[c[0] for c in SIGNED_OUT]
)
def test_signed_out_sessions(
    description: str, access: Access | None, outcome: SignedOut, expected: tuple[object, ...]
) -> None:
    located = at(route(access)) if access is not None else at(None, Access.PROTECTED)
    decision = decide(located, outcome)
    got = (decision.allowed, decision.reason, decision.auth)
    assert got == expected, description
    assert decision.allowed is expected[0], description
    assert decision.principal is None, description
    assert decision.handshake is None, description


OWN = "https://app.example.com"
PARTY = "https://other.example.com"

CROSS_SITE = [
    # (description, method, Sec-Fetch-Site, Origin, authorized_parties, cross-site?)
    ("GET is never a forgery candidate", "GET", "cross-site", "https://evil.test", None, False),
    ("nor HEAD", "HEAD", "cross-site", "https://evil.test", None, False),
    ("nor OPTIONS", "OPTIONS", "cross-site", None, None, False),
    ("POST from another site", "POST", "cross-site", None, None, True),
    ("PUT from another site", "PUT", "cross-site", None, None, True),
    ("PATCH from another site", "PATCH", "cross-site", None, None, True),
    ("DELETE from another site", "DELETE", "cross-site", None, None, True),
    ("same-origin", "POST", "same-origin", None, None, False),
    ("same-site", "POST", "same-site", None, None, False),
    ("none: typed by the user", "POST", "none", None, None, False),
    ("Sec-Fetch-Site read without case or spaces", "POST", " Same-Origin ", None, None, False),
    ("an unknown Sec-Fetch-Site value", "POST", "elsewhere", None, None, True),
    (
        "Sec-Fetch-Site wins over a foreign Origin",
        "POST",
        "same-origin",
        "https://evil.test",
        None,
        False,
    ),
    ("Sec-Fetch-Site wins over our own Origin", "POST", "cross-site", OWN, None, True),
    ("no Sec-Fetch-Site and no Origin: not a browser", "POST", None, None, None, False),
    ("no Sec-Fetch-Site, our own Origin", "POST", None, OWN, None, False),
    ("our own Origin with a trailing slash and spaces", "POST", None, f" {OWN}/ ", None, False),
    ("a foreign Origin", "POST", None, "https://evil.test", None, True),
    ("a foreign Origin, no authorized parties", "POST", None, PARTY, (), True),
    ("an authorized party's Origin", "POST", None, PARTY, (PARTY,), False),
    ("an authorized party's Origin with a slash", "POST", None, f"{PARTY}/", (PARTY,), False),
    (
        "a foreign Origin, other parties authorized",
        "POST",
        None,
        "https://evil.test",
        (PARTY,),
        True,
    ),
    ("our origin with a suffix is another origin", "POST", None, f"{OWN}X", None, True),
    ("a party's origin with a suffix too", "POST", None, f"{PARTY}X/", (PARTY,), True),
    ("our origin as a path is not our origin", "POST", None, f"/{OWN}", None, True),
]


@pytest.mark.parametrize(
    ("description", "method", "fetch_site", "origin", "parties", "expected"),
    CROSS_SITE,
    ids=[c[0] for c in CROSS_SITE],
)
def test_cross_site(
    description: str,
    method: str,
    fetch_site: str | None,
    origin: str | None,
    parties: tuple[str, ...] | None,
    expected: bool,
) -> None:
    assert cross_site(method, fetch_site, origin, OWN, parties) is expected, description
