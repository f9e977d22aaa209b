"""Token extraction and verification: the reference's test vectors, forged tokens, PyJWT as oracle."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clerk.jwks import KeyCache
from gateway.clerk.keys import (
    KeyMaterialError,
    PublishableKey,
    cookie_suffix,
    load_pem_key,
    parse_publishable_key,
)
from gateway.clerk.tokens import (
    KeySet,
    VerifyKey,
    VerifyOptions,
    b64url_decode,
    check_header,
    decode,
    extract,
    token_from_authorization,
)
from gateway.clerk.tokens import (
    verify as verify_sequence,
)
from gateway.clerk.verifier import SessionVerifier
from gateway.decide import Located, decide
from gateway.decision import Access, Reason
from gateway.devclerk import DevClerk, SigningKey
from gateway.model import ClerkSettings
from gateway.paths import Target

NOW = 1_750_000_000
NOW_MS = NOW * 1000
OPTIONS = VerifyOptions(issuer="https://clerk.gateway-demo.localhost", clock_skew_ms=5000)


def verify(token: str, keys: KeySet | None, now_ms: float, options: VerifyOptions) -> Any:
    """THE verification sequence, its claims as a dict when the token is valid."""
    result = verify_sequence(token, keys, now_ms, options)
    return result if isinstance(result, Reason) else dict(result.claims)


def keyset(clerk: DevClerk) -> KeySet:
    return KeySet({k.kid: VerifyKey(k.private.public_key(), "RS256") for k in clerk.keys})


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def tamper(token: str, **claims: Any) -> str:
    head, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=="))
    data.update(claims)
    return f"{head}.{b64(data)}.{sig}"


# ---- verification vectors (reference §10) -------------------------------------------------

VECTORS = [
    # (description, mint keyword arguments, options or None, expected Reason or None for valid)
    ("6: a valid token verifies", {}, None, None),
    ("9: exp 4 s ago is inside the 5000 ms skew", {"claims": {"exp": NOW - 4}}, None, None),
    (
        "9: exp exactly 5 s ago is expired (<=)",
        {"claims": {"exp": NOW - 5}},
        None,
        Reason.TOKEN_EXPIRED,
    ),
    ("8: exp 6 s ago is expired", {"claims": {"exp": NOW - 6}}, None, Reason.TOKEN_EXPIRED),
    (
        "10: nbf 6 s ahead is not active yet",
        {"claims": {"nbf": NOW + 6}},
        None,
        Reason.TOKEN_NOT_ACTIVE_YET,
    ),
    ("10: nbf 5 s ahead is inside the skew", {"claims": {"nbf": NOW + 5}}, None, None),
    (
        "10: iat 5 s ahead is inside the skew",
        {"claims": {"iat": NOW + 5, "nbf": None}},
        None,
        None,
    ),
    (
        "10: iat 6 s ahead is in the future",
        {"claims": {"iat": NOW + 6, "nbf": None}},
        None,
        Reason.TOKEN_IAT_IN_THE_FUTURE,
    ),
    ("exp missing fails", {"claims": {"exp": None}}, None, Reason.TOKEN_VERIFICATION_FAILED),
    (
        "exp a string fails",
        {"claims": {"exp": str(NOW + 60)}},
        None,
        Reason.TOKEN_VERIFICATION_FAILED,
    ),
    ("exp a boolean fails", {"claims": {"exp": True}}, None, Reason.TOKEN_VERIFICATION_FAILED),
    # Python's json reads NaN and Infinity: a NaN exp compares false with every instant
    # and would never expire
    ("exp NaN fails", {"claims": {"exp": math.nan}}, None, Reason.TOKEN_VERIFICATION_FAILED),
    ("exp Infinity fails", {"claims": {"exp": math.inf}}, None, Reason.TOKEN_VERIFICATION_FAILED),
    ("nbf NaN fails", {"claims": {"nbf": math.nan}}, None, Reason.TOKEN_VERIFICATION_FAILED),
    ("iat -Infinity fails", {"claims": {"iat": -math.inf}}, None, Reason.TOKEN_VERIFICATION_FAILED),
    ("sub missing fails", {"claims": {"sub": None}}, None, Reason.TOKEN_VERIFICATION_FAILED),
    ("sub a number fails", {"claims": {"sub": 42}}, None, Reason.TOKEN_VERIFICATION_FAILED),
    (
        "12: typ at+jwt is another token type",
        {"headers": {"typ": "at+jwt"}},
        None,
        Reason.TOKEN_TYPE_MISMATCH,
    ),
    (
        "12: a JWT-template category is another type",
        {"headers": {"cat": "cl_B7d4PD222AAA"}},
        None,
        Reason.TOKEN_TYPE_MISMATCH,
    ),
    (
        "12: an M2M category is another type",
        {"headers": {"cat": "cl_B7d4PD333AAA"}},
        None,
        Reason.TOKEN_TYPE_MISMATCH,
    ),
    ("12: the no-class marker is accepted", {"headers": {"cat": "cl_I7d4PD111III"}}, None, None),
    ("12: no cat header is accepted (legacy)", {"headers": {"cat": None}}, None, None),
    (
        "13: azp not in the list",
        {"claims": {"azp": "https://evil.com"}},
        VerifyOptions(authorized_parties=frozenset(["https://app.com"])),
        Reason.TOKEN_INVALID_AUTHORIZED_PARTIES,
    ),
    (
        "13: azp missing with a list",
        {"claims": {"azp": None}},
        VerifyOptions(authorized_parties=frozenset(["https://app.com"])),
        Reason.TOKEN_INVALID_AUTHORIZED_PARTIES,
    ),
    (
        "13: azp missing with the documented opt-out",
        {"claims": {"azp": None}},
        VerifyOptions(authorized_parties=frozenset(["https://app.com"]), allow_missing_azp=True),
        None,
    ),
    (
        "13: azp wrong with the opt-out still fails",
        {"claims": {"azp": "https://evil.com"}},
        VerifyOptions(authorized_parties=frozenset(["https://app.com"]), allow_missing_azp=True),
        Reason.TOKEN_INVALID_AUTHORIZED_PARTIES,
    ),
    (
        "13: azp in the list",
        {"claims": {"azp": "https://app.com"}},
        VerifyOptions(authorized_parties=frozenset(["https://app.com"])),
        None,
    ),
    ("13: no list, missing azp passes", {"claims": {"azp": None}}, VerifyOptions(), None),
    (
        "14: aud is not checked (Clerk tokens have none)",
        {"claims": {"aud": "something"}},
        None,
        None,
    ),
    (
        "another instance's issuer",
        {"claims": {"iss": "https://clerk.other.com"}},
        None,
        Reason.TOKEN_INVALID_ISSUER,
    ),
    ("missing issuer", {"claims": {"iss": None}}, None, Reason.TOKEN_INVALID_ISSUER),
    ("no issuer configured: not checked", {"claims": {"iss": "https://x"}}, VerifyOptions(), None),
]


@pytest.mark.parametrize(
    ("description", "mint", "options", "expected"), VECTORS, ids=[v[0] for v in VECTORS]
)
def test_verification_vectors(
    devclerk: DevClerk,
    description: str,
    mint: dict[str, Any],
    options: VerifyOptions | None,
    expected: Reason | None,
) -> None:
    headers = mint.get("headers")
    token = devclerk.mint("user_1", now=NOW, **{k: v for k, v in mint.items() if k != "headers"})
    if headers is not None:
        token = _with_header(devclerk, token, headers)
    result = verify(token, keyset(devclerk), NOW_MS, options or OPTIONS)
    if expected is None:
        assert isinstance(result, dict), f"{description}: {result}"
        assert result["sub"] == "user_1"
    else:
        assert result == expected, description


def _with_header(clerk: DevClerk, token: str, changes: dict[str, Any]) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    header.update(changes)
    header = {k: v for k, v in header.items() if v is not None}
    return jwt.encode(claims, clerk.signer.private, algorithm="RS256", headers=header)


# ---- forged and malformed tokens ----------------------------------------------------------


def forged(clerk: DevClerk, other: rsa.RSAPrivateKey) -> list[tuple[str, str, Reason]]:
    valid = clerk.mint("user_1", now=NOW)
    claims = jwt.decode(valid, options={"verify_signature": False})
    pem = clerk.signer.public_pem()
    head_none = b64({"alg": "none", "kid": clerk.signer.kid, "typ": "JWT"})
    return [
        ("11: tampered payload", tamper(valid, sub="user_admin"), Reason.TOKEN_INVALID_SIGNATURE),
        ("11: two parts", "a.b", Reason.TOKEN_INVALID),
        (
            "11: alg none with a known kid",
            f"{head_none}.{b64(claims)}.",
            Reason.TOKEN_INVALID_ALGORITHM,
        ),
        (
            "11: HS256 signed with the public key as secret",
            _hs256_with_public_key(claims, clerk, pem),
            Reason.TOKEN_INVALID_ALGORITHM,
        ),
        (
            "ES256-labelled token",
            f"{b64({'alg': 'ES256', 'kid': clerk.signer.kid})}.{b64(claims)}.{b64(b'x' * 64)}",
            Reason.TOKEN_INVALID_ALGORITHM,
        ),
        (
            "valid signature from another key with the same kid",
            jwt.encode(claims, other, algorithm="RS256", headers={"kid": clerk.signer.kid}),
            Reason.TOKEN_INVALID_SIGNATURE,
        ),
        (
            "15: unknown kid",
            jwt.encode(claims, other, algorithm="RS256", headers={"kid": "ins_unknown"}),
            Reason.JWK_KID_MISMATCH,
        ),
        (
            "no kid at all",
            jwt.encode(claims, clerk.signer.private, algorithm="RS256"),
            Reason.JWK_KID_MISMATCH,
        ),
        (
            "truncated signature",
            valid.rsplit(".", 1)[0] + "." + b64(b64url_decode(valid.rsplit(".", 1)[1])[:-6]),
            Reason.TOKEN_INVALID_SIGNATURE,
        ),
        ("signature cut mid-character", valid[:-1], Reason.TOKEN_INVALID),
        ("truncated token", valid[: len(valid) // 2], Reason.TOKEN_INVALID),
        ("garbage", "not a token at all", Reason.TOKEN_INVALID),
        ("empty parts", "..", Reason.TOKEN_INVALID),
        (
            "header is JSON but not an object",
            f"{b64(b'[1]')}.{b64(claims)}.{b64(b'sig')}",
            Reason.TOKEN_INVALID,
        ),
        (
            "padded base64",
            valid.split(".")[0] + "=." + ".".join(valid.split(".")[1:]),
            Reason.TOKEN_INVALID,
        ),
        (
            "standard-alphabet base64",
            valid.replace("-", "+").replace("_", "/")
            if ("-" in valid or "_" in valid)
            else "a+b.c.d",
            Reason.TOKEN_INVALID,
        ),
        ("non-ASCII characters", valid + "é", Reason.TOKEN_INVALID),
        (
            "huge token (> 16 KiB)",
            f"{valid.split('.')[0]}.{b64({'sub': 'x', 'pad': 'a' * 20000})}.{valid.split('.')[2]}",
            Reason.TOKEN_TOO_LARGE,
        ),
        (
            "deeply nested JSON",
            f"{b64(b'[' * 100000)}.{b64(claims)}.{b64(b'x')}",
            Reason.TOKEN_TOO_LARGE,
        ),
        (
            "typ that is not JWT",
            _with_header(clerk, valid, {"typ": "JOSE+JSON"}),
            Reason.TOKEN_INVALID,
        ),
    ]


def _hs256_with_public_key(claims: dict[str, Any], clerk: DevClerk, pem: str) -> str:
    import hashlib
    import hmac

    header = b64({"alg": "HS256", "kid": clerk.signer.kid, "typ": "JWT"})
    body = f"{header}.{b64(claims)}"
    sig = hmac.new(pem.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{b64(sig)}"


def test_forged_tokens_are_rejected_with_a_reason(
    devclerk: DevClerk, spare_keys: list[rsa.RSAPrivateKey]
) -> None:
    for description, token, expected in forged(devclerk, spare_keys[0]):
        result = verify(token, keyset(devclerk), NOW_MS, OPTIONS)
        assert result == expected, description


def test_hs256_with_public_key_is_rejected_in_pem_mode_too(devclerk: DevClerk) -> None:
    pem_keys = KeySet({}, VerifyKey(load_pem_key(devclerk.signer.public_pem()), "RS256"))
    claims = jwt.decode(devclerk.mint(now=NOW), options={"verify_signature": False})
    token = _hs256_with_public_key(claims, devclerk, devclerk.signer.public_pem())
    assert verify(token, pem_keys, NOW_MS, OPTIONS) == Reason.TOKEN_INVALID_ALGORITHM


def test_15_pem_key_verifies_any_kid(devclerk: DevClerk) -> None:
    pem_keys = KeySet({}, VerifyKey(load_pem_key(devclerk.signer.public_pem()), "RS256"))
    token = devclerk.mint("user_1", now=NOW, headers=None)
    token = _with_header(devclerk, token, {"kid": "ins_anything"})
    assert isinstance(verify(token, pem_keys, NOW_MS, OPTIONS), dict)


def test_key_set_alg_must_equal_token_alg(devclerk: DevClerk) -> None:
    keys = KeySet({devclerk.signer.kid: VerifyKey(devclerk.signer.private.public_key(), "RS512")})
    assert verify(devclerk.mint(now=NOW), keys, NOW_MS, OPTIONS) == Reason.TOKEN_INVALID_ALGORITHM


def test_rs384_and_rs512_verify(devclerk: DevClerk) -> None:
    claims = jwt.decode(devclerk.mint(now=NOW), options={"verify_signature": False})
    keys = KeySet({devclerk.signer.kid: VerifyKey(devclerk.signer.private.public_key())})
    for alg in ("RS384", "RS512"):
        token = jwt.encode(
            claims, devclerk.signer.private, algorithm=alg, headers={"kid": devclerk.signer.kid}
        )
        assert isinstance(verify(token, keys, NOW_MS, OPTIONS), dict), alg


def test_20_pending_session_verifies_but_is_signed_out(devclerk: DevClerk) -> None:
    from gateway.clerk.claims import principal_from_claims

    claims = verify(
        devclerk.mint(now=NOW, claims={"sts": "pending"}), keyset(devclerk), NOW_MS, OPTIONS
    )
    assert isinstance(claims, dict)
    principal = principal_from_claims(claims, None)
    assert principal is not None
    assert principal.pending
    from gateway.routes import Route, compile_pattern

    route = Route(0, (compile_pattern("/x"),), Access.PROTECTED)
    located = Located(Target("/x", "", False), route, Access.PROTECTED)
    assert decide(located, principal).reason is Reason.SESSION_PENDING


# PyJWT is the oracle for strictness: whatever we accept, PyJWT accepts, same claims.
@settings(max_examples=150, deadline=None)
@given(position=st.integers(min_value=0, max_value=2000), char=st.sampled_from(list("Aa0-_=+/.é ")))
def test_mutations_accepted_only_where_pyjwt_accepts(position: int, char: str) -> None:
    clerk = _ORACLE_CLERK
    token = _ORACLE_TOKEN
    i = position % (len(token) + 1)
    mutated = token[:i] + char + token[i:]
    ours = verify(mutated, keyset(clerk), NOW_MS, VerifyOptions(clock_skew_ms=10**15))
    try:
        theirs = jwt.decode(
            mutated,
            clerk.signer.private.public_key(),
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.PyJWTError:
        theirs = None
    if isinstance(ours, dict):
        assert theirs == ours


def test_b64url_is_canonical() -> None:
    assert b64url_decode("QQ") == b"A"
    assert b64url_decode("AAAX") == b"\x00\x00\x17"  # ends in the letter X
    assert b64url_decode("QUI") == b"AB"
    for bad in ("QR", "QQ=", "Q", "Q Q", "QQ\n"):
        with pytest.raises(ValueError):  # noqa: PT011
            b64url_decode(bad)


NOT_URLSAFE = "not base64url: padding, '+', '/' or another byte"


@pytest.mark.parametrize(
    ("description", "part", "message"),
    [
        ("one character too many", "QQQQQ", "impossible base64 length"),
        ("trailing bits set", "QR", "non-canonical base64url: trailing bits set"),
        ("trailing bits set, three", "QUJ", "non-canonical base64url: trailing bits set"),
        ("padding", "QQ==", NOT_URLSAFE),
        ("padding first", "=QQ", NOT_URLSAFE),
        ("standard alphabet", "+/8", NOT_URLSAFE),
        ("a space", "Q Q", NOT_URLSAFE),
    ],
)
def test_b64url_refusals_say_why(description: str, part: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:  # noqa: PT011
        b64url_decode(part)
    assert str(refused.value) == message, description


def test_the_size_cap_is_inclusive() -> None:
    cap = 16_384  # as the contract states it (not imported: a changed cap must fail here)
    assert decode("a" * cap) is Reason.TOKEN_INVALID
    assert decode("a" * (cap + 1)) is Reason.TOKEN_TOO_LARGE


HEADERS = [
    # (description, JOSE header, Reason or None)
    ("RS256", {"alg": "RS256"}, None),
    ("RS384", {"alg": "RS384"}, None),
    ("RS512", {"alg": "RS512"}, None),
    ("alg none", {"alg": "none"}, Reason.TOKEN_INVALID_ALGORITHM),
    ("alg HS256", {"alg": "HS256"}, Reason.TOKEN_INVALID_ALGORITHM),
    ("alg in lower case", {"alg": "rs256"}, Reason.TOKEN_INVALID_ALGORITHM),
    ("alg not a string", {"alg": ["RS256"]}, Reason.TOKEN_INVALID_ALGORITHM),
    ("no alg", {"typ": "JWT"}, Reason.TOKEN_INVALID_ALGORITHM),
    ("typ JWT", {"alg": "RS256", "typ": "JWT"}, None),
    ("typ jwt in any case", {"alg": "RS256", "typ": "jwt"}, None),
    ("typ at+jwt", {"alg": "RS256", "typ": "at+jwt"}, Reason.TOKEN_TYPE_MISMATCH),
    ("typ AT+JWT", {"alg": "RS256", "typ": "AT+JWT"}, Reason.TOKEN_TYPE_MISMATCH),
    (
        "typ application/at+jwt",
        {"alg": "RS256", "typ": "application/at+jwt"},
        Reason.TOKEN_TYPE_MISMATCH,
    ),
    ("typ another", {"alg": "RS256", "typ": "JOSE"}, Reason.TOKEN_INVALID),
    ("typ not a string", {"alg": "RS256", "typ": 1}, Reason.TOKEN_INVALID),
    ("the session category", {"alg": "RS256", "cat": "cl_B7d4PD111AAA"}, None),
    ("the no-class marker", {"alg": "RS256", "cat": "cl_I7d4PD111III"}, None),
    ("a JWT template", {"alg": "RS256", "cat": "cl_B7d4PD222AAA"}, Reason.TOKEN_TYPE_MISMATCH),
    ("crit", {"alg": "RS256", "crit": ["exp"]}, Reason.TOKEN_INVALID),
    (
        "the algorithm is checked first",
        {"alg": "none", "typ": "at+jwt"},
        Reason.TOKEN_INVALID_ALGORITHM,
    ),
]


@pytest.mark.parametrize(
    ("description", "header", "expected"), HEADERS, ids=[c[0] for c in HEADERS]
)
def test_check_header(description: str, header: dict[str, Any], expected: Reason | None) -> None:
    assert check_header(header) == expected, description


def test_alg_none_is_refused_for_a_key_that_declares_no_algorithm(devclerk: DevClerk) -> None:
    keys = KeySet({devclerk.signer.kid: VerifyKey(devclerk.signer.private.public_key())})
    claims = jwt.decode(devclerk.mint(now=NOW), options={"verify_signature": False})
    head = b64({"alg": "none", "kid": devclerk.signer.kid})
    token = f"{head}.{b64(claims)}.{b64(b'sig')}"
    assert verify(token, keys, NOW_MS, OPTIONS) == Reason.TOKEN_INVALID_ALGORITHM


# ---- extraction (reference §2) -------------------------------------------------------------

PK = "pk_test_Y2xlcmsuY2xlcmsuZGV2JA"  # clerk.clerk.dev, suffix QvfNY2dr
INSTANCE = parse_publishable_key(PK)


def session_token(
    iss: object = "https://clerk.clerk.dev", iat: object = NOW, sub: str = "u", **more: Any
) -> str:
    claims: dict[str, Any] = {"sub": sub, "iat": iat, **more}
    if iss:
        claims["iss"] = iss
    return f"{b64({'alg': 'RS256'})}.{b64(claims)}.{b64(b'sig')}"


T_PLAIN = session_token(iat=NOW)
T_SUFFIXED = session_token(iat=NOW - 100)
T_NEWER_PLAIN = session_token(iat=NOW + 100)
T_OTHER_APP = session_token(iss="https://clerk.other-app.dev")
T_NO_ISS = session_token(iss=None)

EXTRACTION = [
    # (description, Authorization header, cookies, expected (token, source, client_uat))
    ("1: nothing at all", None, {}, (None, "none", None)),
    ("7: bearer token", "Bearer abc", {}, ("abc", "header", None)),
    (
        "7: bearer wins over a garbage cookie",
        "Bearer abc",
        {"__session": "garbage"},
        ("abc", "header", None),
    ),
    ("7: no scheme: the whole value is the token", "abc", {}, ("abc", "header", None)),
    (
        "7: Basic falls through to the cookie",
        "Basic dXNlcjpwdw==",
        {"__session": T_PLAIN, "__client_uat": "1"},
        (T_PLAIN, "cookie", "1"),
    ),
    (
        "the scheme is case-insensitive (RFC 9110; the contract)",
        "bearer abc",
        {},
        ("abc", "header", None),
    ),
    ("...in any spelling", "BeArEr abc", {}, ("abc", "header", None)),
    (
        "another scheme falls through to the cookie",
        "Basic abc",
        {"__session": T_PLAIN},
        (T_PLAIN, "cookie", None),
    ),
    (
        "6: plain session cookie",
        None,
        {"__session": T_PLAIN, "__client_uat": "5"},
        (T_PLAIN, "cookie", "5"),
    ),
    (
        "suffixed cookie preferred",
        None,
        {
            "__session_QvfNY2dr": T_SUFFIXED,
            "__client_uat_QvfNY2dr": "7",
            "__session": T_PLAIN,
            "__client_uat": "0",
        },
        (T_SUFFIXED, "cookie", "7"),
    ),
    (
        "newer plain session wins when both signed in",
        None,
        {
            "__session_QvfNY2dr": T_SUFFIXED,
            "__client_uat_QvfNY2dr": "7",
            "__session": T_NEWER_PLAIN,
            "__client_uat": "8",
        },
        (T_NEWER_PLAIN, "cookie", "8"),
    ),
    (
        "suffixed says signed out, plain signed in: plain",
        None,
        {
            "__session_QvfNY2dr": T_SUFFIXED,
            "__client_uat_QvfNY2dr": "0",
            "__session": T_PLAIN,
            "__client_uat": "9",
        },
        (T_PLAIN, "cookie", "9"),
    ),
    (
        "plain cookie of another app: suffixed trusted",
        None,
        {
            "__session_QvfNY2dr": T_SUFFIXED,
            "__client_uat_QvfNY2dr": "7",
            "__session": T_OTHER_APP,
            "__client_uat": "9",
        },
        (T_SUFFIXED, "cookie", "7"),
    ),
    (
        "another app's suffixed cookie is never read",
        None,
        {"__session_OTHERAPP": T_PLAIN, "__client_uat_OTHERAPP": "3"},
        (None, "none", None),
    ),
    (
        "plain session without iss: plain (signed out, no loop)",
        None,
        {"__session_QvfNY2dr": T_SUFFIXED, "__client_uat_QvfNY2dr": "7", "__session": T_NO_ISS},
        (T_NO_ISS, "cookie", None),
    ),
    (
        "suffixed session without its uat: plain",
        None,
        {"__session_QvfNY2dr": T_SUFFIXED, "__session": T_PLAIN, "__client_uat": "4"},
        (T_PLAIN, "cookie", "4"),
    ),
    ("empty session cookie is no token", None, {"__session": ""}, (None, "none", None)),
    (
        "the scheme ends at the first space",
        "Bearer a b",
        {},
        ("a b", "header", None),
    ),
    (
        "an empty Authorization header falls through",
        "",
        {"__session": T_PLAIN},
        (T_PLAIN, "cookie", None),
    ),
    (
        "a Bearer without a token falls through",
        "Bearer  ",
        {"__session": T_PLAIN},
        (T_PLAIN, "cookie", None),
    ),
]


@pytest.mark.parametrize(
    ("description", "auth", "cookies", "expected"), EXTRACTION, ids=[e[0] for e in EXTRACTION]
)
def test_extraction(
    description: str,
    auth: str | None,
    cookies: dict[str, str],
    expected: tuple[str | None, str, str | None],
) -> None:
    got = extract(auth, cookies, INSTANCE, NOW)
    assert (got.token, got.source, got.client_uat) == expected, description


# ---- the cookie choice: Clerk's shouldUseSuffixed (reference §2) -------------------------

SUFFIX = "QvfNY2dr"
DEV = INSTANCE  # pk_test: a development instance
LIVE = PublishableKey(INSTANCE.frontend_api, True, SUFFIX)  # the same, in production

S_NEW = session_token(sub="suffixed-new", iat=NOW)
S_OLD = session_token(sub="suffixed-old", iat=NOW - 100)
P_NEW = session_token(sub="plain-new", iat=NOW)
P_OLD = session_token(sub="plain-old", iat=NOW - 100)
S_EXPIRED = session_token(sub="suffixed-expired", iat=NOW - 100, exp=NOW)
S_HALF = session_token(sub="suffixed-half", iat=NOW - 100, exp=NOW + 0.5)
S_LIVE = session_token(sub="suffixed-live", iat=NOW - 100, exp=NOW + 1)
S_BAD_EXP = session_token(sub="suffixed-bad-exp", iat=NOW - 100, exp="soon")


def jar(
    suffixed: str | None = None,
    suffixed_uat: str | None = None,
    plain: str | None = None,
    plain_uat: str | None = None,
) -> dict[str, str]:
    cookies = {
        f"__session_{SUFFIX}": suffixed,
        f"__client_uat_{SUFFIX}": suffixed_uat,
        "__session": plain,
        "__client_uat": plain_uat,
    }
    return {name: value for name, value in cookies.items() if value is not None}


SUFFIXED, PLAIN = True, False  # the family read (the handshake's `suffixed_cookies=`)

COOKIE_CHOICE = [
    # (description, instance, cookies, (token, client_uat, the family) read)
    ("only this app's suffixed cookies", DEV, jar(S_OLD, "7"), (S_OLD, "7", SUFFIXED)),
    ("a suffixed uat without its session", DEV, jar(suffixed_uat="7"), (None, "7", SUFFIXED)),
    (
        "no suffixed cookies, another instance's plain session: suffixed, so no token",
        DEV,
        jar(plain=session_token(iss="https://clerk.other.dev", sub="p"), plain_uat="8"),
        (None, None, SUFFIXED),
    ),
    (
        "a suffixed uat without its session, a plain session: suffixed",
        DEV,
        jar(suffixed_uat="7", plain=P_OLD, plain_uat="0"),
        (None, "7", SUFFIXED),
    ),
    (
        "no suffixed cookies, a plain session signed out: plain",
        DEV,
        jar(plain=P_NEW, plain_uat="0"),
        (P_NEW, "0", PLAIN),
    ),
    (
        "the suffixed session newer: suffixed",
        DEV,
        jar(S_NEW, "7", P_OLD, "8"),
        (S_NEW, "7", SUFFIXED),
    ),
    ("the plain session newer: plain", DEV, jar(S_OLD, "7", P_NEW, "8"), (P_NEW, "8", PLAIN)),
    (
        "both issued in the same second: suffixed",
        DEV,
        jar(S_NEW, "7", session_token(sub="plain-same", iat=NOW), "8"),
        (S_NEW, "7", SUFFIXED),
    ),
    (
        "the plain session newer but signed out: suffixed",
        DEV,
        jar(S_OLD, "7", P_NEW, "0"),
        (S_OLD, "7", SUFFIXED),
    ),
    (
        "the plain session newer, the suffixed uat says signed out: plain",
        DEV,
        jar(S_OLD, "0", P_NEW, "8"),
        (P_NEW, "8", PLAIN),
    ),
    ("both signed out: suffixed", DEV, jar(S_NEW, "0", P_OLD, "0"), (S_NEW, "0", SUFFIXED)),
    (
        "both signed out, the suffixed token expired: suffixed",
        DEV,
        jar(S_EXPIRED, "0", P_OLD, "0"),
        (S_EXPIRED, "0", SUFFIXED),
    ),
    (
        "development: suffixed signed in but expired, plain signed out: plain",
        DEV,
        jar(S_EXPIRED, "7", P_OLD, "0"),
        (P_OLD, "0", PLAIN),
    ),
    (
        "development: expiry compares whole seconds (exp half a second ahead is not past)",
        DEV,
        jar(S_HALF, "7", P_OLD, "0"),
        (S_HALF, "7", SUFFIXED),
    ),
    (
        "development: suffixed signed in and not expired: suffixed",
        DEV,
        jar(S_LIVE, "7", P_OLD, "0"),
        (S_LIVE, "7", SUFFIXED),
    ),
    (
        "development: an exp that is no number is not expired",
        DEV,
        jar(S_BAD_EXP, "7", P_OLD, "0"),
        (S_BAD_EXP, "7", SUFFIXED),
    ),
    (
        "development: expired suffixed, but plain signed in and older: suffixed",
        DEV,
        jar(S_EXPIRED, "7", session_token(sub="plain-older", iat=NOW - 200), "9"),
        (S_EXPIRED, "7", SUFFIXED),
    ),
    (
        "production: an expired suffixed session is still the one read",
        LIVE,
        jar(S_EXPIRED, "7", P_OLD, "0"),
        (S_EXPIRED, "7", SUFFIXED),
    ),
    (
        "a plain session that is not a JWT: plain (signed out, no loop)",
        DEV,
        jar(S_NEW, "7", "not-a-jwt", "8"),
        ("not-a-jwt", "8", PLAIN),
    ),
    (
        "a plain session with an empty iss: plain",
        DEV,
        jar(S_NEW, "7", session_token(iss="", sub="p"), "8"),
        (session_token(iss="", sub="p"), "8", PLAIN),
    ),
    (
        "a plain session with a numeric iss: plain (malformed)",
        DEV,
        jar(S_NEW, "7", session_token(iss=5, sub="p"), "8"),
        (session_token(iss=5, sub="p"), "8", PLAIN),
    ),
    (
        "a plain session of this instance over plain http, upper case: compared",
        DEV,
        jar(S_OLD, "7", session_token(iss="HTTP://clerk.clerk.dev", sub="p", iat=NOW), "8"),
        (session_token(iss="HTTP://clerk.clerk.dev", sub="p", iat=NOW), "8", PLAIN),
    ),
    (
        "a plain session of another instance: suffixed even if newer",
        DEV,
        jar(S_OLD, "7", session_token(iss="https://clerk.other.dev", sub="p", iat=NOW), "8"),
        (S_OLD, "7", SUFFIXED),
    ),
    (
        "a plain session without iat counts as issued at 0 (not newer than 0)",
        DEV,
        jar(session_token(sub="s0", iat=0), "7", session_token(sub="p", iat=None), "8"),
        (session_token(sub="s0", iat=0), "7", SUFFIXED),
    ),
    (
        "a plain session whose iat is no number counts as oldest",
        DEV,
        jar(S_OLD, "7", session_token(sub="p", iat="late"), "8"),
        (S_OLD, "7", SUFFIXED),
    ),
]


@pytest.mark.parametrize(
    ("description", "instance", "cookies", "expected"),
    COOKIE_CHOICE,
    ids=[c[0] for c in COOKIE_CHOICE],
)
def test_cookie_choice(
    description: str,
    instance: PublishableKey,
    cookies: dict[str, str],
    expected: tuple[str | None, str | None, bool],
) -> None:
    got = extract(None, cookies, instance, NOW + 0.9)
    assert (got.token, got.client_uat, got.suffixed) == expected, description
    assert got.source == ("cookie" if got.token else "none")


def test_no_instance_reads_the_plain_cookies() -> None:
    got = extract(None, jar(S_NEW, "7", P_OLD, "8"), None, NOW)
    assert (got.token, got.client_uat, got.suffixed) == (P_OLD, "8", PLAIN)


@pytest.mark.parametrize(
    ("description", "value", "token"),
    [
        ("Bearer", "Bearer t", "t"),
        ("no scheme", "t", "t"),
        ("empty", "", None),
        ("Basic", "Basic dXNlcg==", None),
        ("spaces after the scheme", "Bearer   t ", "t"),
    ],
)
def test_token_from_authorization(description: str, value: str, token: str | None) -> None:
    assert token_from_authorization(value) == token, description


# ---- keys (reference vector 22) ----------------------------------------------------------

KEYS = [
    ("pk_test_Y2xlcmsuY2xlcmsuZGV2JA", "clerk.clerk.dev", False, "QvfNY2dr"),
    (
        "pk_live_ZmFrZS1jbGVyay10ZXN0LmNsZXJrLmFjY291bnRzLmRldiQ=",
        "fake-clerk-test.clerk.accounts.dev",
        True,
        "qReyu04C",
    ),
    (
        "pk_test_ZXhhbXBsZS5hY2NvdW50cy5kZXYk",
        "example.accounts.dev",
        False,
        cookie_suffix("pk_test_ZXhhbXBsZS5hY2NvdW50cy5kZXYk"),
    ),
]


@pytest.mark.parametrize(("key", "host", "live", "suffix"), KEYS)
def test_22_publishable_keys(key: str, host: str, live: bool, suffix: str) -> None:
    parsed = parse_publishable_key(key)
    assert (parsed.frontend_api, parsed.live, parsed.cookie_suffix) == (host, live, suffix)
    assert parsed.issuer == f"https://{host}"


BAD_KEYS = [
    ("no $", "pk_test_" + base64.b64encode(b"example.com").decode()),
    ("no dot", "pk_test_" + base64.b64encode(b"localhost$").decode()),
    ("two $", "pk_test_" + base64.b64encode(b"a.com$$").decode()),
    ("wrong prefix", "sk_test_" + base64.b64encode(b"a.com$").decode()),
    ("not base64", "pk_test_!!!!"),
    ("too many parts", "pk_test_abc_def"),
]


@pytest.mark.parametrize(("description", "key"), BAD_KEYS, ids=[b[0] for b in BAD_KEYS])
def test_22_malformed_publishable_keys(description: str, key: str) -> None:
    with pytest.raises(KeyMaterialError):
        parse_publishable_key(key)


def test_pem_loading_rejects_non_rsa_and_short_keys() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(KeyMaterialError, match="RSA"):
        load_pem_key(ec_pem)
    with pytest.raises(KeyMaterialError, match="not a PEM"):
        load_pem_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")


def _oracle() -> tuple[DevClerk, str]:
    from tests.conftest import rsa_keys

    clerk = DevClerk(keys=[SigningKey("ins_oracle", rsa_keys(1)[0])])
    return clerk, clerk.mint("user_oracle", now=NOW)


_ORACLE_CLERK, _ORACLE_TOKEN = _oracle()


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
async def test_a_pem_key_verifies_every_rsa_algorithm(devclerk: DevClerk, alg: str) -> None:
    """clerk.jwt_key declares no algorithm, so none is pinned (the contract), through the
    same key cache and verifier that `run` uses."""
    settings = ClerkSettings(jwt_key=devclerk.signer.public_pem(), issuer=OPTIONS.issuer)
    verifier = SessionVerifier(settings, KeyCache(settings), None, clock=lambda: NOW)
    claims = jwt.decode(devclerk.mint(now=NOW), options={"verify_signature": False})
    token = jwt.encode(claims, devclerk.signer.private, algorithm=alg, headers={"kid": "x"})
    result = await verifier.verify(token)
    assert not isinstance(result, Reason), result
    assert result.principal.user_id == claims["sub"]


@pytest.mark.parametrize(
    ("crit", "expected"),
    [
        (["exp"], Reason.TOKEN_INVALID),
        (["b64"], Reason.TOKEN_INVALID),
        ([], Reason.TOKEN_INVALID),
        ("not-a-list", Reason.TOKEN_INVALID),
    ],
)
def test_a_crit_header_is_refused(devclerk: DevClerk, crit: object, expected: Reason) -> None:
    """RFC 7515 4.1.11: extensions a recipient does not understand must be refused; this
    gateway understands none (Clerk's SDK refuses them too)."""
    token = devclerk.mint(now=NOW, headers={"crit": crit, "b64": True})
    assert verify(token, keyset(devclerk), NOW_MS, OPTIONS) == expected
