"""Identity for the upstream: header values from claims and profiles, the policy keys that
configure them, and the assertion signer."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.assertion import KeyFileError, Signer, generate_pem, load_keys, public_jwk
from gateway.config import parse_policy
from gateway.decision import Principal
from gateway.identity import encode, identity_values, path_values
from gateway.model import AssertionSettings, HeaderPath, IdentityHeaders
from gateway.profiles import view

# ---- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice@example.com", ("alice@example.com", False)),
        ("Zoë", ("Zo%C3%AB", True)),
        ("a\r\nX-Evil: 1", ("a%0D%0AX-Evil%3A%201", True)),
        (" padded ", ("%20padded%20", True)),  # a parser would trim the spaces
        ("tab\tinside", ("tab%09inside", True)),
        ("a-b_c.d~e", ("a-b_c.d~e", False)),
        (42, ("42", False)),
        (1.5, ("1.5", False)),
        (True, ("true", False)),
        (False, ("false", False)),
        (["eng", "ops"], ("eng,ops", False)),
        (["ünï", "x"], ("%C3%BCn%C3%AF%2Cx", True)),
        ([1, 2], ("1,2", False)),
        ("", None),
        ([], None),
        (None, None),
        ({"a": 1}, None),
        ([{"a": 1}], None),
        # more digits than Python will write (4,300): no header, never a 500
        pytest.param(10**5000, None, id="int-of-5001-digits"),
        pytest.param([1, 10**5000], None, id="list-with-int-of-5001-digits"),
    ],
)
def test_a_value_on_the_wire(value: Any, expected: tuple[str, bool] | None) -> None:
    assert encode(value) == expected


def test_paths_reach_into_nested_objects_and_add_the_companion() -> None:
    headers = (
        HeaderPath("X-Tenant", ("metadata", "tenant")),
        HeaderPath("X-Name", ("name",)),
        HeaderPath("X-Missing", ("metadata", "nope")),
        HeaderPath("X-Deep", ("name", "first")),  # a string has no members
    )
    source = {"metadata": {"tenant": "acme"}, "name": "Zoë"}
    assert path_values(headers, source) == [
        ("X-Tenant", "acme"),
        ("X-Name", "Zo%C3%AB"),
        ("X-Name-Encoding", "percent"),
    ]


def test_a_profile_view_derives_email_phone_and_name() -> None:
    user = {
        "first_name": "Ada",
        "last_name": None,
        "primary_email_address_id": "e2",
        "email_addresses": [
            {"id": "e1", "email_address": "old@example.com"},
            {"id": "e2", "email_address": "ada@example.com"},
        ],
        "primary_phone_number_id": None,
        "phone_numbers": [],
    }
    derived = view(user)
    assert derived["email"] == "ada@example.com"
    assert derived["name"] == "Ada"
    assert derived["phone"] is None
    assert view({})["name"] is None


# ---- the policy -----------------------------------------------------------------------------

BASE = """\
clerk:
  jwt_key: |
    -----BEGIN PUBLIC KEY-----
    MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo
    4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u
    +qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh
    kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ
    0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg
    cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc
    mwIDAQAB
    -----END PUBLIC KEY-----
  secret_key: sk_test_x
upstream: http://127.0.0.1:9
"""


def load(extra: str) -> Any:
    return parse_policy(BASE + textwrap.dedent(extra), "routes.yaml", for_run=True, env={})


def test_identity_headers_take_any_claim_and_strip_every_configured_name() -> None:
    result = load(
        """\
        identity_headers:
          user_id: X-User
          X-Clerk-Email: email
          X-Tenant: metadata.tenant
        """
    )
    assert result.policy is not None, result.problems
    identity = result.policy.identity_headers
    assert identity.user_id == "X-User"
    assert identity.claims == (
        HeaderPath("X-Clerk-Email", ("email",)),
        HeaderPath("X-Tenant", ("metadata", "tenant")),
    )
    names = result.policy.identity_names()
    assert {"X-Tenant", "X-Tenant-Encoding", "X-Clerk-Email-Encoding"} <= set(names)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("X Bad: email", "is not a valid header name"),
        ("Host: email", "managed by the gateway"),
        ("Cookie: email", "managed by the gateway"),
        ("X-Forwarded-For: email", "managed by the gateway"),
        ("X.Request.Id: email", "managed by the gateway"),  # folded as servers read it
        ("X-Forwarded-Uri: email", "describe the request"),
        ("X_Forwarded_Port: email", "describe the request"),
        ("X-Original-URL: email", "describe the request"),
        ("X-Real-IP: email", "describe the request"),
        ("X-Email: 'a..b'", "must be a dot path"),
        ("X-Email: ''", "needs a claim path"),
        ("X-Email: 3", "must be a string"),
        ("X-User-Id: sub\n  user_id: x-user-id", "set from two sources"),
        ("X.Clerk.Role: email", "set from two sources"),  # X-Clerk-Role to CGI and WSGI
    ],
)
def test_bad_identity_headers_are_errors(entry: str, message: str) -> None:
    result = load(f"identity_headers:\n  {entry}\n")
    assert result.policy is None
    assert any(message in str(p) for p in result.problems), result.problems


def test_the_oauth2_proxy_identity_names_stay_allowed() -> None:
    result = load("identity_headers:\n  X-Forwarded-Email: email\n  X-Forwarded-User: sub\n")
    assert result.policy is not None, result.problems


def test_forward_auth_mode_names_every_header_the_proxy_must_copy_and_strip() -> None:
    text = BASE.replace("upstream: http://127.0.0.1:9\n", "") + textwrap.dedent(
        """\
        mode: forward-auth
        trusted_proxies: [127.0.0.1/32]
        identity_headers:
          X-Tenant: metadata.tenant
        assertion:
          issuer: gw
        """
    )
    result = parse_policy(text, "routes.yaml", for_run=False, env={})
    assert result.errors == (), result.errors
    [warning] = [str(p) for p in result.warnings if "must copy" in str(p)]
    for name in ("X-Tenant", "X-Tenant-Encoding", "X-Clerk-Gateway-Assertion"):
        assert name in warning
    assert "X-Clerk-Role," not in warning  # the shipped configurations handle the built-ins
    proxy_mode = load("identity_headers:\n  X-Tenant: t\n")
    assert not [p for p in proxy_mode.warnings if "must copy" in str(p)]


def test_a_reversed_entry_is_flagged() -> None:
    result = load("identity_headers:\n  email: X-Clerk-Email\n")
    assert any("did you mean `X-Clerk-Email: email`" in str(p) for p in result.problems)


def test_user_profile_needs_headers_and_the_secret_key() -> None:
    result = load("user_profile:\n  ttl_s: 10\n")
    assert result.policy is None
    assert any("needs at least one" in str(p) for p in result.problems)
    no_secret = parse_policy(
        BASE.replace("  secret_key: sk_test_x\n", "")
        + "user_profile:\n  headers: {X-Clerk-User-Email: email}\n",
        "routes.yaml",
        for_run=True,
        env={},
    )
    assert any("clerk.secret_key is required" in str(p) for p in no_secret.problems)
    good = load("user_profile:\n  headers: {X-Clerk-User-Email: email}\n  ttl_s: 60\n")
    assert good.policy is not None
    assert good.policy.user_profile is not None
    assert good.policy.user_profile.ttl_s == 60
    assert "X-Clerk-User-Email" in good.policy.identity_names()


def test_assertion_settings_and_their_key_file(tmp_path: Path) -> None:
    missing_issuer = load("assertion:\n  ttl_s: 30\n")
    assert any("assertion.issuer" in str(p) for p in missing_issuer.problems)
    no_file = load("assertion:\n  issuer: https://gw.test\n")
    assert no_file.policy is not None
    assert any("generated at every start" in str(p) for p in no_file.problems)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    refused = load(f"assertion:\n  issuer: https://gw.test\n  key_file: {bad}\n")
    assert refused.policy is None
    good = tmp_path / "good.pem"
    good.write_bytes(generate_pem())
    ok = load(f"assertion:\n  issuer: https://gw.test\n  key_file: {good}\n  ttl_s: 10\n")
    assert ok.policy is not None
    assert ok.policy.assertion == AssertionSettings(
        header="X-Clerk-Gateway-Assertion", issuer="https://gw.test", key_file=str(good), ttl_s=10
    )


# ---- the signer -----------------------------------------------------------------------------

SETTINGS = AssertionSettings(issuer="https://gw.test", ttl_s=30)
WHO = Principal(user_id="user_1", session_id="sess_1", roles=("admin", "ops"), org_id="org_1")


def test_an_assertion_verifies_with_the_published_key_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "keys.pem"
    path.write_bytes(generate_pem() + generate_pem())
    keys = load_keys(str(path))
    signer = Signer(SETTINGS, keys)
    token = signer.mint(WHO, "billing", time.time())
    published = signer.jwks["keys"]
    assert [k["kid"] for k in published] == [public_jwk(k)["kid"] for k in keys]
    assert jwt.get_unverified_header(token)["kid"] == published[0]["kid"]
    key = jwt.PyJWK(published[0]).key
    claims = jwt.decode(
        token, key, algorithms=["ES256"], audience="billing", issuer="https://gw.test"
    )
    assert claims["sub"] == "user_1"
    assert claims["role"] == "admin,ops"
    assert claims["exp"] - claims["iat"] == 30
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, jwt.PyJWK(published[1]).key, algorithms=["ES256"], audience="billing")


def test_the_kid_is_the_rfc_7638_thumbprint() -> None:
    # RFC 7638's example is RSA; for EC the members are crv, kty, x, y in that order
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key)
    assert set(jwk) == {"crv", "kty", "x", "y", "kid", "alg", "use"}
    assert public_jwk(key)["kid"] == jwk["kid"]
    assert len(jwk["kid"]) == 43  # base64url of a SHA-256


def test_the_memo_reuses_an_assertion_for_half_its_lifetime() -> None:
    signer = Signer(
        AssertionSettings(issuer="i", ttl_s=2), [ec.generate_private_key(ec.SECP256R1())]
    )
    memo: dict[str, tuple[bytes, float]] = {}
    first = signer.header(memo, WHO, "a")
    assert signer.header(memo, WHO, "a") == first
    assert signer.header(memo, WHO, "b") != first
    memo["a"] = (first, time.time() - 1)  # past half its lifetime
    assert signer.header(memo, WHO, "a") != first


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a readable"),
    ],
)
def test_unusable_key_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=message):
        load_keys(str(path))


def test_an_rsa_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="not an EC P-256 key"):
        load_keys(str(path))


def test_a_role_outside_ascii_is_percent_encoded_not_dropped_with_the_others() -> None:
    identity = IdentityHeaders()
    principal = Principal(
        user_id="user_1", roles=("admin", "Président"), org_slug="café", org_id="org_é"
    )
    pairs = dict(identity_values(principal, {}, identity))
    assert pairs["X-Clerk-Role"] == "admin%2CPr%C3%A9sident"
    assert pairs["X-Clerk-Role-Encoding"] == "percent"
    assert pairs["X-Clerk-Org-Slug"] == "caf%C3%A9"
    assert "X-Clerk-Org-Id" not in pairs  # ids are Clerk's, and ASCII: never encoded
    assert "X-Clerk-Org-Id-Encoding" not in pairs
    # a control character is never sent, encoded or not
    bad = Principal(user_id="user_1", roles=("admin\r\nX-Injected: yes",))
    assert "X-Clerk-Role" not in dict(identity_values(bad, {}, identity))
    names = identity.names()
    assert "X-Clerk-Role-Encoding" in names
    assert "X-Clerk-User-Id-Encoding" not in names
