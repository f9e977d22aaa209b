"""decide(): from the matched route and the verification outcome to a Decision. Pure.

The outcome of verification is one of three values: a Principal (a verified session), a
Reason (a token was presented and failed), or None (no token at all). Webhook routes are
allowed here; their signature check happens on the body, in webhooks.py.
"""

from __future__ import annotations

from gateway.decision import Access, Decision, Principal, Reason
from gateway.routes import Requirement, Route

ADMIN_ROLE = "admin"

Outcome = Principal | Reason | None


def decide(route: Route | None, default: Access, outcome: Outcome) -> Decision:
    access = route.access if route is not None else default
    if access is Access.DENY:
        return Decision.deny(Reason.ROUTE_DENIED)
    accept_pending = route.accept_pending if route is not None else False
    principal = outcome if isinstance(outcome, Principal) else None
    if principal is not None and principal.pending and not accept_pending:
        # Clerk treats a pending session (unfinished session tasks) as signed out
        principal = None
        outcome = Reason.SESSION_PENDING
    if access in (Access.PUBLIC, Access.WEBHOOK):
        return Decision.allow(principal)
    if principal is None:
        reason = outcome if isinstance(outcome, Reason) else Reason.SESSION_TOKEN_MISSING
        return Decision.deny(reason)
    if access is Access.ADMIN and ADMIN_ROLE not in principal.roles:
        return Decision.deny(Reason.ROLE_REQUIRED, principal)
    failed = unmet(route.require if route is not None else Requirement(), principal)
    if failed is not None:
        return Decision.deny(failed, principal)
    return Decision.allow(principal)


def unmet(require: Requirement, principal: Principal) -> Reason | None:
    """The first requirement the principal does not meet, or None."""
    if require.roles and not any(role in principal.roles for role in require.roles):
        return Reason.ROLE_REQUIRED
    if require.org_roles and (
        principal.org_id is None or principal.org_role not in require.org_roles
    ):
        return Reason.ORG_ROLE_REQUIRED
    if require.org_permissions and (
        principal.org_id is None
        or not all(p in principal.org_permissions for p in require.org_permissions)
    ):
        return Reason.ORG_PERMISSION_REQUIRED
    return None
