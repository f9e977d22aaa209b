"""The Clerk stand-in's pure parts: claim encoding, query parsing, directives, nonces, users.

The gateway's own decoders are the oracle: what the stand-in encodes, `gateway.clerk`
must read back as what was asked.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from gateway.clerk.claims import decode_permissions, principal_from_claims
from gateway.clerk.keys import cookie_suffix, parse_publishable_key
from gateway.clerk.tokens import (
    SESSION_CATEGORY,
    Decoded,
    KeySet,
    VerifyKey,
    VerifyOptions,
    check_header,
    decode,
)
from gateway.clerk.tokens import (
    verify as verify_sequence,
)
from gateway.decision import Reason
from gateway.devclerk import DEMO_USERS, DevClerk, default_frontend_url, org_claims
from gateway.devclerk.claims import TokenRequest, encode_org_permissions, parse_token_query
from gateway.devclerk.frontend import app_url, origin_of, with_query
from gateway.devclerk.sessions import (
    NonceStore,
    dev_browser_directives,
    signed_in_directives,
    signed_out_directives,
)


def verify(token: str, keys: KeySet | None, now_ms: float, options: VerifyOptions) -> Any:
    """THE verification sequence, its claims as a dict when the token is valid."""
    result = verify_sequence(token, keys, now_ms, options)
    return result if isinstance(result, Reason) else dict(result.claims)


def keyset(clerk: DevClerk) -> KeySet:
    return KeySet({k.kid: VerifyKey(k.private.public_key(), "RS256") for k in clerk.keys})


def claims_of(token: str) -> dict[str, Any]:
    data: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return data


# ---- org permissions, the v2 way ---------------------------------------------------------

PERMISSIONS = [
    # (description, asked, expected fea, per, fpm)
    (
        "the docs' example: two features sharing names",
        ["org:dashboard:manage", "org:dashboard:read", "org:teams:read"],
        ("o:dashboard,o:teams", "manage,read", "3,2"),
    ),
    (
        "the reference's second vector",
        [
            "org:repositories:read",
            "org:repositories:create",
            "org:repositories:update",
            "org:projects:read",
            "org:projects:update",
            "org:projects:revoke",
        ],
        ("o:repositories,o:projects", "read,create,update,revoke", "7,13"),
    ),
    ("one permission", ["org:reports:read"], ("o:reports", "read", "1")),
    ("a repeat counts once", ["org:a:x", "org:a:x"], ("o:a", "x", "1")),
    ("none", [], ("", "", "")),
]


@pytest.mark.parametrize(
    ("asked", "expected"), [(a, e) for _, a, e in PERMISSIONS], ids=[d for d, _, _ in PERMISSIONS]
)
def test_org_permissions_are_encoded_positionally(
    asked: list[str], expected: tuple[str, str, str]
) -> None:
    assert encode_org_permissions(asked) == expected
    fea, per, fpm = expected
    assert sorted(decode_permissions(fea, per, fpm)) == sorted(set(asked))


@pytest.mark.parametrize(
    "bad", ["reports:read", "org:reports", "org::read", "org:a:b:c", "org:a b:read", "org:a,b:x"]
)
def test_a_malformed_permission_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="org:<feature>:<permission>"):
        encode_org_permissions([bad])


def test_org_claims_decode_back_to_the_principal_asked_for() -> None:
    asked = ["org:billing:manage", "org:teams:read", "org:billing:read"]
    claims = {
        "sub": "user_1",
        **org_claims("org_1", slug="acme", role="org:admin", permissions=asked),
    }
    assert claims["o"]["rol"] == "admin"  # v2 drops the prefix...
    principal = principal_from_claims(claims, None)
    assert principal is not None
    assert principal.org_role == "org:admin"  # ...and readers put it back
    assert (principal.org_id, principal.org_slug) == ("org_1", "acme")
    assert sorted(principal.org_permissions) == sorted(asked)


# ---- /demo/token's query -----------------------------------------------------------------

GOOD_QUERIES = [
    ("nothing asked", {}, TokenRequest()),
    ("a lifetime", {"lifetime": "300"}, TokenRequest(300)),
    ("the shortest lifetime", {"lifetime": "1"}, TokenRequest(1)),
    ("the longest lifetime", {"lifetime": "3600"}, TokenRequest(3600)),
    ("an org without extras", {"org_id": "org_1"}, TokenRequest(None, {"o": {"id": "org_1"}})),
    (
        "custom claims",
        {"claims": '{"email": "a@b.c", "n": 1}'},
        TokenRequest(None, {"email": "a@b.c", "n": 1}),
    ),
    (
        "custom claims override the org ones",
        {"org_id": "org_1", "claims": '{"o": {"id": "org_2"}}'},
        TokenRequest(None, {"o": {"id": "org_2"}}),
    ),
]


@pytest.mark.parametrize(
    ("query", "expected"), [(q, e) for _, q, e in GOOD_QUERIES], ids=[d for d, _, _ in GOOD_QUERIES]
)
def test_token_queries_that_parse(query: dict[str, str], expected: TokenRequest) -> None:
    assert parse_token_query(query) == expected


BAD_QUERIES = [
    ("an unknown parameter", {"role": "admin"}, "unknown parameter"),
    ("a lifetime of zero", {"lifetime": "0"}, "lifetime"),
    ("a lifetime too long", {"lifetime": "3601"}, "lifetime"),
    ("a negative lifetime", {"lifetime": "-5"}, "lifetime"),
    ("a lifetime that is not a number", {"lifetime": "soon"}, "lifetime"),
    ("a non-ASCII digit lifetime", {"lifetime": "٣"}, "lifetime"),
    ("claims that are not JSON", {"claims": "{email}"}, "JSON object"),
    ("claims that are a list", {"claims": "[1]"}, "JSON object"),
    ("deeply nested claims", {"claims": "[" * 100_000}, "JSON object"),
    ("an org role without an org", {"org_role": "admin"}, "need(s) org_id"),
    ("permissions without an org", {"org_permissions": "org:a:b"}, "need(s) org_id"),
    ("an empty org id", {"org_id": ""}, "must not be empty"),
    ("an empty org role", {"org_id": "o", "org_role": "org:"}, "must not be empty"),
    ("a malformed permission", {"org_id": "o", "org_permissions": "read"}, "org_permissions"),
]


@pytest.mark.parametrize(
    ("query", "message"), [(q, m) for _, q, m in BAD_QUERIES], ids=[d for d, _, _ in BAD_QUERIES]
)
def test_token_queries_that_are_refused_say_why(query: dict[str, str], message: str) -> None:
    outcome = parse_token_query(query)
    assert isinstance(outcome, str)
    assert message in outcome


def test_a_parameter_given_twice_is_refused() -> None:
    outcome = parse_token_query({"lifetime": "5"}, repeated=["lifetime"])
    assert isinstance(outcome, str)
    assert "more than once: lifetime" in outcome


# ---- handshake directives and nonces ------------------------------------------------------


def test_signed_in_directives_are_clerks_cookies_for_the_app() -> None:
    assert signed_in_directives("tok", 1700000000, None) == [
        "__session=tok; Path=/; SameSite=Lax",
        "__client_uat=1700000000; Path=/; SameSite=Lax; Max-Age=31536000",
    ]


def test_signed_out_directives_clear_the_session_and_zero_the_uat() -> None:
    assert signed_out_directives(None) == [
        "__session=; Path=/; Max-Age=0",
        "__client_uat=0; Path=/; SameSite=Lax; Max-Age=31536000",
    ]


def test_suffixed_directives_come_beside_the_plain_ones() -> None:
    names = [d.split("=", 1)[0] for d in signed_in_directives("t", 1, "Ab12Cd34")]
    assert names == ["__session", "__session_Ab12Cd34", "__client_uat", "__client_uat_Ab12Cd34"]
    names = [d.split("=", 1)[0] for d in signed_out_directives("Ab12Cd34")]
    assert names == ["__session", "__session_Ab12Cd34", "__client_uat", "__client_uat_Ab12Cd34"]
    assert dev_browser_directives("dvb_x", "S") == [
        "__clerk_db_jwt=dvb_x; Path=/; SameSite=Lax",
        "__clerk_db_jwt_S=dvb_x; Path=/; SameSite=Lax",
    ]


def test_no_directive_names_a_domain() -> None:
    directives = signed_in_directives("t", 1, "S") + signed_out_directives("S")
    assert not any("domain" in d.lower() for d in directives)


def test_a_nonce_is_good_once() -> None:
    store = NonceStore()
    nonce = store.issue(["a=1"], now=100.0, ttl_s=60)
    assert store.take(nonce, now=100.0) == ["a=1"]
    assert store.take(nonce, now=100.0) is None


def test_a_nonce_expires_after_its_ttl() -> None:
    store = NonceStore()
    nonce = store.issue(["a=1"], now=100.0, ttl_s=60)
    assert store.take(nonce, now=160.0) is None
    fresh = store.issue(["b=2"], now=100.0, ttl_s=60)
    assert store.take(fresh, now=159.9) == ["b=2"]


def test_an_unknown_nonce_yields_nothing() -> None:
    assert NonceStore().take("never-issued", now=0.0) is None


def test_uncollected_payloads_are_dropped_when_they_expire() -> None:
    store = NonceStore()
    for _ in range(5):
        store.issue(["a=1"], now=0.0, ttl_s=1)
    store.issue(["b=2"], now=2.0, ttl_s=1)
    assert len(store) == 1


def test_nonces_are_unpredictable_and_distinct() -> None:
    store = NonceStore()
    nonces = {store.issue([], now=0.0, ttl_s=60) for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) >= 32 for n in nonces)


# ---- sessions driven without HTTP ---------------------------------------------------------


def test_a_sign_in_gives_a_token_like_mint(devclerk: DevClerk) -> None:
    devclerk.session_lifetime_s = 7
    client_id = devclerk.sign_in("admin")
    client = devclerk.clients[client_id]
    directives = devclerk.handshake_directives(client_id, origin="http://app.test:8080")
    token = directives[0].removeprefix("__session=").split(";")[0]
    options = VerifyOptions(
        issuer=devclerk.issuer, authorized_parties=frozenset(["http://app.test:8080"])
    )
    claims = verify(token, keyset(devclerk), client.client_uat * 1000, options)
    assert not isinstance(claims, Reason)
    assert claims["sub"] == "user_2admin"
    assert claims["sid"] == client.session_id
    assert claims["sid"].startswith("sess_")
    assert claims["metadata"] == {"role": "admin"}
    assert claims["exp"] - claims["iat"] == 7
    assert claims["iat"] >= client.client_uat  # never "iat before client_uat": no loop
    assert (
        directives[1] == f"__client_uat={client.client_uat}; Path=/; SameSite=Lax; Max-Age=31536000"
    )


def test_each_sign_in_is_a_new_session_on_the_same_client(devclerk: DevClerk) -> None:
    client_id = devclerk.sign_in("alice")
    first = devclerk.clients[client_id].session_id
    assert devclerk.sign_in("bob", client_id=client_id) == client_id
    assert devclerk.clients[client_id].session_id not in (None, first)
    assert devclerk.clients[client_id].user_id == "user_2bob"


def test_sign_out_keeps_the_client_and_ends_the_session(devclerk: DevClerk) -> None:
    client_id = devclerk.sign_in("alice")
    devclerk.sign_out(client_id)
    assert client_id in devclerk.clients
    assert devclerk.handshake_directives(client_id) == signed_out_directives(None)


@pytest.mark.parametrize("client_id", [None, "client_unknown"])
def test_no_client_means_signed_out(devclerk: DevClerk, client_id: str | None) -> None:
    assert devclerk.handshake_directives(client_id) == signed_out_directives(None)


def test_sign_in_of_an_unknown_user_is_refused(devclerk: DevClerk) -> None:
    with pytest.raises(KeyError):
        devclerk.sign_in("mallory")


def test_handshake_directives_use_this_instances_suffix(devclerk: DevClerk) -> None:
    client_id = devclerk.sign_in("alice")
    suffix = cookie_suffix(devclerk.publishable_key)
    names = {d.split("=", 1)[0] for d in devclerk.handshake_directives(client_id, suffixed=True)}
    assert names == {"__session", f"__session_{suffix}", "__client_uat", f"__client_uat_{suffix}"}


def test_the_handshake_token_holds_the_directives_and_verifies(devclerk: DevClerk) -> None:
    directives = ["__session=x; Path=/", "__client_uat=0; Path=/"]
    token = devclerk.handshake_token(directives)
    decoded = decode(token)
    assert isinstance(decoded, Decoded)
    assert check_header(decoded.header) is None
    # Clerk mints handshake tokens in the session category; its SDK refuses other classes.
    assert decoded.header["cat"] == SESSION_CATEGORY
    assert decoded.header["kid"] == devclerk.signer.kid
    public = devclerk.signer.private.public_key()
    payload = jwt.decode(token, public, algorithms=["RS256"], options={"require": []})
    assert payload == {"handshake": directives}  # no time claims: Clerk checks none


def test_a_live_instance_has_a_live_publishable_key(devclerk: DevClerk) -> None:
    clerk = DevClerk(live=True, keys=devclerk.keys)
    parsed = parse_publishable_key(clerk.publishable_key)
    assert parsed.live
    assert parsed.frontend_api == clerk.frontend_api


# ---- the user store -----------------------------------------------------------------------


def test_the_store_is_seeded_with_the_demo_people(devclerk: DevClerk) -> None:
    for name, (user_id, role) in DEMO_USERS.items():
        user = devclerk.user(user_id)
        assert user is not None
        assert user["username"] == name
        assert user["public_metadata"] == {"role": role}
        primary = [
            e for e in user["email_addresses"] if e["id"] == user["primary_email_address_id"]
        ]
        assert [e["email_address"] for e in primary] == [f"{name}@example.com"]
        assert user["first_name"]
        assert user["last_name"]


def test_update_user_changes_the_store_and_returns_the_event(devclerk: DevClerk) -> None:
    before = dict(devclerk.users["user_2alice"])
    event = devclerk.update_user("user_2alice", first_name="Alicia", email="alicia@example.org")
    user = devclerk.users["user_2alice"]
    assert user["first_name"] == "Alicia"
    assert user["email_addresses"][0]["email_address"] == "alicia@example.org"
    assert user["updated_at"] > before["updated_at"]
    assert user["created_at"] == before["created_at"]
    assert event["type"] == "user.updated"
    assert event["data"] == user
    assert event["data"] is not user  # the event is a snapshot


def test_update_user_of_an_unknown_user_is_refused(devclerk: DevClerk) -> None:
    with pytest.raises(KeyError):
        devclerk.update_user("user_nobody", first_name="X")


def test_a_role_change_reaches_the_next_session_token(devclerk: DevClerk) -> None:
    client_id = devclerk.sign_in("bob")
    devclerk.update_user("user_2bob", public_metadata={"role": "admin"})
    token = devclerk.session_token(client_id)
    assert token is not None
    assert claims_of(token)["metadata"] == {"role": "admin"}


def test_user_created_stores_a_new_user(devclerk: DevClerk) -> None:
    event = devclerk.user_event("user.created", first_name="Carol", email="carol@example.com")
    user_id = event["data"]["id"]
    assert user_id.startswith("user_")
    assert devclerk.users[user_id]["first_name"] == "Carol"
    assert event["data"]["email_addresses"][0]["email_address"] == "carol@example.com"
    assert (event["object"], event["type"]) == ("event", "user.created")


def test_user_deleted_removes_the_user_and_ends_its_sessions(devclerk: DevClerk) -> None:
    client_id = devclerk.sign_in("alice")
    event = devclerk.user_event("user.deleted", "user_2alice")
    assert event["data"] == {"object": "user", "id": "user_2alice", "deleted": True}
    assert devclerk.user("user_2alice") is None
    assert devclerk.session_token(client_id) is None


def test_user_events_of_other_kinds_are_refused(devclerk: DevClerk) -> None:
    with pytest.raises(ValueError, match="not a user event"):
        devclerk.user_event("session.created")


def test_a_signed_event_carries_the_stored_user(devclerk: DevClerk) -> None:
    devclerk.webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers, body = devclerk.signed_webhook(devclerk.update_user("user_2bob", last_name="Ross"))
    assert json.loads(body)["data"]["last_name"] == "Ross"
    assert headers["svix-signature"].startswith("v1,")


# ---- URLs ---------------------------------------------------------------------------------

APP_URLS = [
    ("an http URL", "http://127.0.0.1:8080/x?y=1", True),
    ("an https URL", "https://app.example.com/", True),
    ("a relative path", "/dashboard", False),
    ("a scheme-relative URL", "//evil.example/x", False),
    ("javascript:", "javascript:alert(1)", False),
    ("another scheme", "ftp://example.com/", False),
    ("no host", "http:///x", False),
    ("a bad port", "http://example.com:99999/", False),
    ("a CR LF", "http://example.com/\r\nX-Injected: 1", False),
    ("a space", "http://example.com/a b", False),
    ("empty", "", False),
    ("absent", None, False),
]


@pytest.mark.parametrize(
    ("value", "ok"), [(v, ok) for _, v, ok in APP_URLS], ids=[d for d, _, _ in APP_URLS]
)
def test_redirect_urls_must_be_absolute_http(value: str | None, ok: bool) -> None:
    assert app_url(value) == (value if ok else None)


def test_the_origin_of_a_url_drops_path_and_credentials() -> None:
    assert origin_of("http://u:p@App.Example:8080/x?y#z") == "http://app.example:8080"
    assert origin_of("https://[::1]:8443/") == "https://[::1]:8443"


def test_a_parameter_is_appended_without_respelling_the_query() -> None:
    url = "http://a.test/p?q=%7e&r#frag"
    assert with_query(url, {"n": "a b"}) == "http://a.test/p?q=%7e&r&n=a+b#frag"
    assert with_query("http://a.test/p", {"n": "1"}) == "http://a.test/p?n=1"


@pytest.mark.parametrize(
    ("host", "app", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080", "http://localhost:8091"),
        ("127.0.0.1", "http://localhost:8080", "http://127.0.0.1:8091"),
        ("localhost", "http://localhost:8080", "http://127.0.0.1:8091"),
        ("::1", "http://localhost:8080", "http://[::1]:8091"),
        ("::1", "http://[::1]:8080", "http://localhost:8091"),
    ],
)
def test_the_stand_in_never_shares_the_apps_host_name(host: str, app: str, expected: str) -> None:
    assert default_frontend_url(host, 8091, app) == expected
