"""A reused assertion keeps at least half its lifetime: the reuse window runs from the `iat`
written (whole seconds), not from the exact minting time."""

from __future__ import annotations

from unittest import mock

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.assertion import Signer
from gateway.decision import Principal
from gateway.model import AssertionSettings


def test_a_reused_assertion_has_at_least_half_its_lifetime_left() -> None:
    signer = Signer(
        AssertionSettings(issuer="x", ttl_s=2), [ec.generate_private_key(ec.SECP256R1())]
    )
    principal = Principal(user_id="user_1", session_id="sess_1")
    memo: dict[str, tuple[bytes, float]] = {}
    with mock.patch("gateway.assertion.time.time", return_value=1000.99):
        signer.header(memo, principal, "default")
    with mock.patch("gateway.assertion.time.time", return_value=1001.98):
        line = signer.header(memo, principal, "default")
    token = line.split(b": ", 1)[1].strip().decode()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - 1001.98 >= 2 / 2  # 0.02 s left
