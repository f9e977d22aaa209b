"""The shared vocabulary: reasons, principals and decisions.

Every other module speaks in these terms, so this one imports nothing local. A reason
code is the same string in the response body, the log line and the metric label.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Access(enum.StrEnum):
    PUBLIC = "public"
    PROTECTED = "protected"
    ADMIN = "admin"
    WEBHOOK = "webhook"
    DENY = "deny"


class Reason(enum.StrEnum):
    """Stable kebab-case codes. Clerk's own names where Clerk has one."""

    # request shape
    PATH_AMBIGUOUS = "path-ambiguous"
    REQUEST_MALFORMED = "request-malformed"
    REQUEST_HEADER_TOO_LARGE = "request-header-too-large"
    REQUEST_LINE_TOO_LONG = "request-line-too-long"
    REQUEST_HEAD_TIMEOUT = "request-head-timeout"
    REQUEST_BODY_TIMEOUT = "request-body-timeout"
    PROXY_UNTRUSTED = "proxy-untrusted"  # forward-auth asked by an address not trusted
    # session (Clerk's names)
    SESSION_TOKEN_MISSING = "session-token-missing"
    SESSION_PENDING = "session-pending"
    TOKEN_INVALID = "token-invalid"
    TOKEN_INVALID_ALGORITHM = "token-invalid-algorithm"
    TOKEN_INVALID_SIGNATURE = "token-invalid-signature"
    TOKEN_EXPIRED = "token-expired"
    TOKEN_NOT_ACTIVE_YET = "token-not-active-yet"
    TOKEN_IAT_IN_THE_FUTURE = "token-iat-in-the-future"
    TOKEN_VERIFICATION_FAILED = "token-verification-failed"
    TOKEN_INVALID_AUTHORIZED_PARTIES = "token-invalid-authorized-parties"
    TOKEN_TYPE_MISMATCH = "token-type-mismatch"
    JWK_KID_MISMATCH = "jwk-kid-mismatch"
    JWK_FAILED_TO_RESOLVE = "jwk-failed-to-resolve"
    JWK_REMOTE_FAILED_TO_LOAD = "jwk-remote-failed-to-load"
    # ours, where we check more than Clerk's SDKs
    TOKEN_INVALID_ISSUER = "token-invalid-issuer"
    TOKEN_TOO_LARGE = "token-too-large"
    # Clerk's handshake (browser sessions); the reasons of `authenticateRequest`
    CLIENT_UAT_BUT_NO_SESSION_TOKEN = "client-uat-but-no-session-token"
    DEV_BROWSER_MISSING = "dev-browser-missing"
    DEV_BROWSER_SYNC = "dev-browser-sync"
    PRIMARY_RESPONDS_TO_SYNCING = "primary-responds-to-syncing"
    PRIMARY_DOMAIN_CROSS_ORIGIN_SYNC = "primary-domain-cross-origin-sync"
    SATELLITE_NEEDS_SYNCING = "satellite-needs-syncing"
    SESSION_TOKEN_AND_UAT_MISSING = "session-token-and-uat-missing"
    SESSION_TOKEN_BUT_NO_CLIENT_UAT = "session-token-but-no-client-uat"
    SESSION_TOKEN_IAT_BEFORE_CLIENT_UAT = "session-token-iat-before-client-uat"
    SESSION_TOKEN_NBF = "session-token-nbf"
    SESSION_TOKEN_IAT_IN_THE_FUTURE = "session-token-iat-in-the-future"
    SESSION_TOKEN_EXPIRED_NON_GET = "session-token-expired-refresh-non-eligible-non-get"
    SESSION_TOKEN_EXPIRED_NO_REFRESH_COOKIE = (
        "session-token-expired-refresh-non-eligible-no-refresh-cookie"
    )
    SESSION_TOKEN_EXPIRED_NOT_REFRESHED = "session-token-expired-refresh-not-attempted"
    # authorization
    CSRF_ORIGIN_MISMATCH = "csrf-origin-mismatch"
    ROLE_REQUIRED = "role-required"
    ORG_ROLE_REQUIRED = "org-role-required"
    ORG_PERMISSION_REQUIRED = "org-permission-required"
    ROUTE_DENIED = "route-denied"
    # webhooks
    WEBHOOK_HEADERS_MISSING = "webhook-headers-missing"
    WEBHOOK_HEADERS_INVALID = "webhook-headers-invalid"
    WEBHOOK_SIGNATURE_INVALID = "webhook-signature-invalid"
    WEBHOOK_TIMESTAMP_TOO_OLD = "webhook-timestamp-too-old"
    WEBHOOK_TIMESTAMP_TOO_NEW = "webhook-timestamp-too-new"
    WEBHOOK_BODY_TOO_LARGE = "webhook-body-too-large"
    WEBHOOK_ALREADY_DELIVERED = "webhook-already-delivered"
    WEBHOOK_IN_PROGRESS = "webhook-in-progress"
    # upstream
    UPSTREAM_UNREACHABLE = "upstream-unreachable"
    UPSTREAM_RESET = "upstream-reset"
    UPSTREAM_TIMEOUT = "upstream-timeout"
    UPSTREAM_INVALID_RESPONSE = "upstream-invalid-response"
    # the gateway's own failure: a bug, logged with its traceback
    INTERNAL_ERROR = "internal-error"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is impersonating the user (Clerk's `act` claim)."""

    subject: str
    session_id: str | None
    issuer: str | None


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified identity, built from session claims; nothing here is client-chosen."""

    user_id: str
    session_id: str | None = None
    roles: tuple[str, ...] = ()
    org_id: str | None = None
    org_slug: str | None = None
    org_role: str | None = None
    org_permissions: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    plan: tuple[str, ...] = ()
    factor_ages: tuple[int, int] | None = None
    session_status: str | None = None
    actor: Actor | None = None
    pending: bool = field(init=False, default=False)  # sts = pending: signed out by default

    def __post_init__(self) -> None:
        object.__setattr__(self, "pending", self.session_status == "pending")


class Decision:
    """What to do with one request. `reason` is None exactly when allowed.

    A plain slotted class treated as immutable, not a frozen dataclass: denials without a
    principal are shared instances, and an allowed session's decision is made once per
    verified token, so the request path allocates none of them."""

    __slots__ = ("allowed", "auth", "handshake", "principal", "reason")

    def __init__(
        self,
        allowed: bool,
        reason: Reason | None,
        principal: Principal | None,
        *,
        handshake: Any = None,
        auth: Reason | None = None,
    ) -> None:
        self.allowed = allowed
        self.reason = reason
        self.principal = principal
        self.handshake = handshake  # a clerk.handshake.Handshake: send the browser through Clerk
        self.auth = auth  # Clerk's reason for a signed-out browser session (x-clerk-auth-reason)

    def __repr__(self) -> str:
        who = self.principal.user_id if self.principal is not None else None
        return f"Decision(allowed={self.allowed}, reason={self.reason}, user={who})"

    @staticmethod
    def allow(principal: Principal | None) -> Decision:
        return Decision(True, None, principal) if principal is not None else ALLOW_ANONYMOUS

    @staticmethod
    def deny(reason: Reason, principal: Principal | None = None) -> Decision:
        return Decision(False, reason, principal) if principal is not None else _DENIED[reason]


ALLOW_ANONYMOUS = Decision(True, None, None)
_DENIED = {reason: Decision(False, reason, None) for reason in Reason}
