"""The vocabulary: principals, decisions and the shared instances behind them."""

from __future__ import annotations

import pytest

from gateway.decision import ALLOW_ANONYMOUS, Access, Decision, Principal, Reason

USER = Principal(user_id="user_1", session_id="sess_1")

PENDING = [
    # (description, session status, pending)
    ("a pending session", "pending", True),
    ("an active session", "active", False),
    ("no status claim", None, False),
    ("the status compared exactly", "Pending", False),
]


@pytest.mark.parametrize(("description", "status", "pending"), PENDING, ids=[c[0] for c in PENDING])
def test_pending_follows_the_session_status(
    description: str, status: str | None, pending: bool
) -> None:
    assert Principal(user_id="u", session_status=status).pending is pending, description


DECISIONS = [
    # (description, how the decision is made, (allowed, reason, principal))
    ("allow a session", lambda: Decision.allow(USER), (True, None, USER)),
    ("allow anonymously", lambda: Decision.allow(None), (True, None, None)),
    (
        "deny without a principal",
        lambda: Decision.deny(Reason.SESSION_TOKEN_MISSING),
        (False, Reason.SESSION_TOKEN_MISSING, None),
    ),
    (
        "deny with the principal that was not enough",
        lambda: Decision.deny(Reason.ROLE_REQUIRED, USER),
        (False, Reason.ROLE_REQUIRED, USER),
    ),
    (
        "made directly",
        lambda: Decision(False, Reason.ROUTE_DENIED, USER),
        (False, Reason.ROUTE_DENIED, USER),
    ),
]


@pytest.mark.parametrize(
    ("description", "make", "expected"), DECISIONS, ids=[c[0] for c in DECISIONS]
)
def test_decisions(description: str, make: object, expected: tuple[object, ...]) -> None:
    decision = make()  # type: ignore[operator]
    assert (decision.allowed, decision.reason, decision.principal) == expected, description


def test_decisions_without_a_principal_are_shared() -> None:
    assert Decision.allow(None) is ALLOW_ANONYMOUS
    for reason in Reason:
        assert Decision.deny(reason) is Decision.deny(reason), reason
    assert Decision.allow(USER) is not Decision.allow(USER)


REPRS = [
    # (description, decision, repr)
    (
        "a session allowed",
        Decision(True, None, USER),
        "Decision(allowed=True, reason=None, user=user_1)",
    ),
    (
        "an anonymous denial",
        Decision(False, Reason.ROUTE_DENIED, None),
        "Decision(allowed=False, reason=route-denied, user=None)",
    ),
]


@pytest.mark.parametrize(("description", "decision", "text"), REPRS, ids=[c[0] for c in REPRS])
def test_repr_names_the_user_never_the_token(
    description: str, decision: Decision, text: str
) -> None:
    assert repr(decision) == text, description


def test_codes_are_kebab_case_strings() -> None:
    assert Access("webhook") is Access.WEBHOOK
    for reason in Reason:
        assert reason.value == reason.value.lower()
        assert " " not in reason.value
        assert "_" not in reason.value
        assert str(reason) == reason.value


def test_a_browser_decision_carries_its_handshake_and_clerks_reason() -> None:
    handshake = object()  # a clerk.handshake.Handshake in the gateway; opaque here
    started = Decision(False, Reason.DEV_BROWSER_MISSING, None, handshake=handshake)
    assert started.handshake is handshake
    assert started.auth is None
    signed_out = Decision(
        False, Reason.SESSION_TOKEN_MISSING, None, auth=Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN
    )
    assert signed_out.auth is Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN
    assert signed_out.handshake is None
