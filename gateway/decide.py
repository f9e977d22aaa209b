"""THE decision: from a request's facts and the verification outcome to a Decision.

Pure and synchronous, shared by the proxy, the forward-auth listener and `explain`, so
none of them can decide differently. Two steps:

- `locate`: the request target normalised once (the one place a path changes form) and
  matched against the route table, or the reason it cannot be (`path-ambiguous`);
- `decide`: the matched route's access and requirements against the verification
  outcome: a Principal (a verified session), a Reason (a token was presented and
  failed), or None (no token at all).

Webhook routes are allowed here; their signature is checked on the body (webhooks.py).
"""

from __future__ import annotations

from typing import Any

from gateway.clerk.handshake import Handshake, SignedOut
from gateway.decision import ALLOW_ANONYMOUS, Access, Decision, Principal, Reason
from gateway.model import Policy
from gateway.paths import Target, normalise_target
from gateway.routes import Ambiguous, Requirement, Route

ADMIN_ROLE = "admin"

# A verified session, why a token failed, no token at all, or (browser sessions, from
# clerk.handshake) a handshake to send the browser through, or a signed-out session.
Outcome = Principal | Reason | None | Handshake | SignedOut


class Located:
    """A request target that passed normalisation, and the route it matched (None: the
    policy's default applies)."""

    __slots__ = ("access", "engine", "route", "target")

    def __init__(self, target: Target, route: Route | None, access: Access) -> None:
        self.target = target
        self.route = route
        self.access = access
        self.engine: Any = None  # what the proxy derives from it once (app.Forwarding)


def locate(policy: Policy, method: str, host: str, raw_target: str) -> Located | Reason:
    """Normalise `raw_target` and match it; `host` is lower-case and without its port."""
    target = normalise_target(raw_target)
    if target is None:
        return Reason.PATH_AMBIGUOUS
    route = policy.table.match(method, host, target.path)
    if isinstance(route, Ambiguous):
        return Reason.PATH_AMBIGUOUS
    return Located(target, route, route.access if route is not None else policy.default)


def decide(located: Located, outcome: Outcome, *, cross_site: bool = False) -> Decision:
    """`cross_site`: a state-changing request whose session cookie came from another site
    (see `cross_site` below); refused unless the route turned the check off."""
    route, access = located.route, located.access
    if access is Access.DENY:
        return Decision.deny(Reason.ROUTE_DENIED)
    if cross_site and (route is None or route.csrf):
        return Decision.deny(Reason.CSRF_ORIGIN_MISMATCH)
    if isinstance(outcome, Handshake):
        return Decision(False, outcome.reason, None, handshake=outcome)
    auth: Reason | None = None
    if isinstance(outcome, SignedOut):
        auth, outcome = outcome.auth, outcome.reason
    accept_pending = route.accept_pending if route is not None else False
    principal = outcome if isinstance(outcome, Principal) else None
    if principal is not None and principal.pending and not accept_pending:
        # Clerk treats a pending session (unfinished session tasks) as signed out
        principal = None
        outcome = Reason.SESSION_PENDING
    if access is Access.PUBLIC or access is Access.WEBHOOK:
        return ALLOW_ANONYMOUS if principal is None else Decision(True, None, principal)
    if principal is None:
        reason = outcome if isinstance(outcome, Reason) else Reason.SESSION_TOKEN_MISSING
        return Decision.deny(reason) if auth is None else Decision(False, reason, None, auth=auth)
    if access is Access.ADMIN and ADMIN_ROLE not in principal.roles:
        return Decision(False, Reason.ROLE_REQUIRED, principal)
    if route is not None:
        require = route.require
        if require.roles or require.org_roles or require.org_permissions:
            failed = unmet(require, principal)
            if failed is not None:
                return Decision(False, failed, principal)
    return Decision(True, None, principal)


STATE_CHANGING = frozenset(["POST", "PUT", "PATCH", "DELETE"])
_SAME_SITE = frozenset(["same-origin", "same-site", "none"])


def cross_site(
    method: str,
    fetch_site: str | None,
    origin: str | None,
    own_origin: str,
    authorized_parties: tuple[str, ...] | None,
) -> bool:
    """Is a request that carries the session cookie a cross-site forgery candidate? Only
    state-changing methods; `Sec-Fetch-Site` when the browser sends it, else `Origin`
    (absent: not a browser) against the request's own origin and `authorized_parties`."""
    if method not in STATE_CHANGING:
        return False
    if fetch_site is not None:
        return fetch_site.strip().lower() not in _SAME_SITE
    if origin is None:
        return False
    origin = origin.strip().rstrip("/")
    return origin != own_origin and origin not in (authorized_parties or ())


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
