"""The Clerk stand-in over real loopback HTTP: the browser story (sign-in, handshake, nonce,
payload, sign-out), the Backend API's users, and `/demo/token`'s org and custom claims.

Tokens are checked with the gateway's own code (`gateway.clerk.tokens.verify` against the
stand-in's JWKS, `principal_from_claims`), so the stand-in is held to what the gateway reads.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.clerk.claims import principal_from_claims
from gateway.clerk.jwks import parse_jwks
from gateway.clerk.keys import cookie_suffix
from gateway.clerk.tokens import (
    Decoded,
    KeySet,
    VerifyOptions,
    check_header,
    check_signature,
    decode,
)
from gateway.clerk.tokens import (
    verify as verify_sequence,
)
from gateway.decision import Reason
from gateway.devclerk import DevClerk, serve
from gateway.devclerk.sessions import signed_out_directives

APP_URL = "http://127.0.0.1:8080/dashboard?tab=1"
APP_ORIGIN = "http://127.0.0.1:8080"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def verify(token: str, keys: KeySet | None, now_ms: float, options: VerifyOptions) -> Any:
    """THE verification sequence, its claims as a dict when the token is valid."""
    result = verify_sequence(token, keys, now_ms, options)
    return result if isinstance(result, Reason) else dict(result.claims)


@pytest.fixture
async def fapi(devclerk: DevClerk, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    """A browser-like client of the stand-in: it keeps the stand-in's cookies."""
    return await aiohttp_client(devclerk.app())


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def cookie(directives: list[str], name: str) -> str:
    values = [d.split(";")[0].partition("=")[2] for d in directives if d.split("=")[0] == name]
    assert len(values) == 1, f"{name} in {directives}"
    return values[0]


def names(directives: list[str]) -> list[str]:
    return [d.split("=", 1)[0] for d in directives]


def bearer(clerk: DevClerk) -> dict[str, str]:
    return {"Authorization": f"Bearer {clerk.secret_key}"}


async def published_keys(fapi: TestClient[Any, Any]) -> KeySet:
    """The keys a gateway would fetch: the stand-in's own JWKS, parsed by the gateway."""
    resp = await fapi.get("/.well-known/jwks.json")
    return KeySet(parse_jwks(await resp.read()))


async def sign_in(fapi: TestClient[Any, Any], user: str = "alice") -> str:
    """The sign-in form's POST; the handshake URL it redirects to."""
    resp = await fapi.post(
        "/sign-in", data={"user": user, "redirect_url": APP_URL}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    return resp.headers["Location"]


async def follow(fapi: TestClient[Any, Any], url: str) -> aiohttp.ClientResponse:
    resp = await fapi.session.get(url, allow_redirects=False)
    await resp.read()
    return resp


async def exchange(
    fapi: TestClient[Any, Any], nonce: str, headers: dict[str, str] | None
) -> aiohttp.ClientResponse:
    resp = await fapi.get(
        "/v1/clients/handshake_payload", params={"nonce": nonce}, headers=headers or {}
    )
    await resp.read()
    return resp


async def handshake(fapi: TestClient[Any, Any], **params: str) -> aiohttp.ClientResponse:
    resp = await fapi.get(
        "/v1/client/handshake",
        params={"redirect_url": APP_URL, **params},
        allow_redirects=False,
    )
    await resp.read()
    return resp


async def nonce_directives(fapi: TestClient[Any, Any], clerk: DevClerk, location: str) -> list[str]:
    resp = await exchange(fapi, query_of(location)["__clerk_handshake_nonce"], bearer(clerk))
    assert resp.status == 200, await resp.text()
    directives: list[str] = (await resp.json())["directives"]
    return directives


def set_client_cookie(fapi: TestClient[Any, Any], client_id: str) -> None:
    """As if this browser had signed in on the stand-in's page earlier."""
    fapi.session.cookie_jar.update_cookies({"__client": client_id})


# ---- serving -------------------------------------------------------------------------------


async def test_serve_names_the_stand_in_apart_from_the_app(devclerk: DevClerk) -> None:
    runner = await serve(devclerk, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        assert devclerk.frontend_url == f"http://localhost:{port}"
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/sign-in") as resp,
        ):
            assert resp.status == 200
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
async def test_serve_binds_to_loopback_only(devclerk: DevClerk, host: str) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        await serve(devclerk, host, 0)


# ---- sign-in ------------------------------------------------------------------------------


async def test_the_sign_in_page_offers_the_demo_people(fapi: TestClient[Any, Any]) -> None:
    resp = await fapi.get("/sign-in", params={"redirect_url": APP_URL})
    page = await resp.text()
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "no-store"
    for name in ("alice", "bob", "admin"):
        assert f'name="user" value="{name}"' in page
    assert '<form method="post" action="/sign-in">' in page
    assert 'value="http://127.0.0.1:8080/dashboard?tab=1"' in page
    assert "<script" not in page


async def test_the_sign_in_page_says_who_this_browser_is(fapi: TestClient[Any, Any]) -> None:
    await sign_in(fapi, "bob")
    page = await (await fapi.get("/sign-in", params={"redirect_url": APP_URL})).text()
    assert "signed in as <b>bob</b>" in page


async def test_the_sign_in_page_escapes_the_redirect_url(fapi: TestClient[Any, Any]) -> None:
    resp = await fapi.get("/sign-in", params={"redirect_url": 'http://a.test/?x="><script>'})
    page = await resp.text()
    assert resp.status == 200
    assert "&quot;&gt;&lt;script&gt;" in page
    assert "<script" not in page


@pytest.mark.parametrize(
    "form",
    [
        {"user": "mallory", "redirect_url": APP_URL},
        {"redirect_url": APP_URL},
        {"user": "alice", "redirect_url": "/relative"},
        {"user": "alice", "redirect_url": "javascript:alert(1)"},
    ],
    ids=["an unknown user", "no user", "a relative redirect", "a javascript: redirect"],
)
async def test_a_bad_sign_in_is_refused(
    fapi: TestClient[Any, Any], devclerk: DevClerk, form: dict[str, str]
) -> None:
    resp = await fapi.post("/sign-in", data=form, allow_redirects=False)
    assert resp.status == 400
    assert devclerk.clients == {}
    assert "__client" not in resp.cookies


async def test_sign_in_sets_the_client_cookie_and_goes_through_the_handshake(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    resp = await fapi.post(
        "/sign-in", data={"user": "bob", "redirect_url": APP_URL}, allow_redirects=False
    )
    assert resp.status == 303
    location = resp.headers["Location"]
    assert location.startswith(str(fapi.make_url("/v1/client/handshake?")))
    assert query_of(location) == {"redirect_url": APP_URL, "format": "nonce"}
    morsel = resp.cookies["__client"]
    assert morsel.value in devclerk.clients
    assert (morsel["httponly"], morsel["samesite"], morsel["path"]) == (True, "Lax", "/")
    assert not morsel["domain"]  # the stand-in's own host only
    client = devclerk.clients[morsel.value]
    assert client.user_id == "user_2bob"
    assert abs(client.client_uat - time.time()) < 5


async def test_a_frontend_url_names_the_handshake_link(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    devclerk.frontend_url = "http://localhost:8091"
    location = await sign_in(fapi)
    assert location.startswith("http://localhost:8091/v1/client/handshake?redirect_url=")


# ---- the handshake, nonce format ----------------------------------------------------------


async def test_sign_in_then_handshake_then_payload_gives_the_app_a_session(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    devclerk.session_lifetime_s = 5
    back = await follow(fapi, await sign_in(fapi, "admin"))
    assert back.status == 307
    assert back.headers["Cache-Control"] == "no-store"
    location = back.headers["Location"]
    assert location.startswith(APP_URL + "&__clerk_handshake_nonce=")
    assert "__clerk_handshake=" not in location

    directives = await nonce_directives(fapi, devclerk, location)
    assert names(directives) == ["__session", "__client_uat", "__clerk_db_jwt"]
    (client,) = devclerk.clients.values()
    assert directives[1] == (
        f"__client_uat={client.client_uat}; Path=/; SameSite=Lax; Max-Age=31536000"
    )
    assert directives[0].endswith("; Path=/; SameSite=Lax")
    assert "domain" not in " ".join(directives).lower()

    options = VerifyOptions(issuer=devclerk.issuer, authorized_parties=frozenset([APP_ORIGIN]))
    token = cookie(directives, "__session")
    claims = verify(token, await published_keys(fapi), time.time() * 1000, options)
    assert not isinstance(claims, Reason), claims
    assert (claims["sub"], claims["sid"]) == ("user_2admin", client.session_id)
    assert claims["azp"] == APP_ORIGIN
    assert claims["metadata"] == {"role": "admin"}
    assert claims["v"] == 2
    assert claims["exp"] - claims["iat"] == 5
    assert claims["iat"] >= client.client_uat
    assert devclerk.handshake_requests == [{"redirect_url": APP_URL, "format": "nonce"}]


async def test_the_token_expires_after_session_lifetime(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    devclerk.session_lifetime_s = 2
    directives = await nonce_directives(
        fapi, devclerk, (await follow(fapi, await sign_in(fapi))).headers["Location"]
    )
    token = cookie(directives, "__session")
    keys = await published_keys(fapi)
    options = VerifyOptions(clock_skew_ms=0)
    claims = verify(token, keys, time.time() * 1000, options)
    assert not isinstance(claims, Reason)
    iat_ms = claims["iat"] * 1000
    assert verify(token, keys, iat_ms + 1999, options) is not Reason.TOKEN_EXPIRED
    assert verify(token, keys, iat_ms + 2000, options) is Reason.TOKEN_EXPIRED


async def test_a_nonce_is_good_once(fapi: TestClient[Any, Any], devclerk: DevClerk) -> None:
    location = (await follow(fapi, await sign_in(fapi))).headers["Location"]
    nonce = query_of(location)["__clerk_handshake_nonce"]
    assert (await exchange(fapi, nonce, bearer(devclerk))).status == 200
    again = await exchange(fapi, nonce, bearer(devclerk))
    assert again.status == 404
    assert (await again.json())["errors"][0]["code"] == "resource_not_found"
    assert devclerk.handshake_payload_hits == 2


async def test_a_nonce_expires(fapi: TestClient[Any, Any], devclerk: DevClerk) -> None:
    now = [1000.0]
    devclerk.clock = lambda: now[0]
    first = query_of((await handshake(fapi, format="nonce")).headers["Location"])
    second = query_of((await handshake(fapi, format="nonce")).headers["Location"])
    now[0] += 59
    assert (await exchange(fapi, first["__clerk_handshake_nonce"], bearer(devclerk))).status == 200
    now[0] += 2
    late = await exchange(fapi, second["__clerk_handshake_nonce"], bearer(devclerk))
    assert late.status == 404


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sk_test_wrong", "Basic {sk}", "{sk}", "bearer {sk}"],
    ids=["none", "a wrong key", "another scheme", "no scheme", "lower-case scheme"],
)
async def test_the_payload_needs_the_secret_key(
    fapi: TestClient[Any, Any], devclerk: DevClerk, authorization: str | None
) -> None:
    nonce = query_of((await handshake(fapi, format="nonce")).headers["Location"])
    headers = (
        {}
        if authorization is None
        else {"Authorization": authorization.format(sk=devclerk.secret_key)}
    )
    refused = await exchange(fapi, nonce["__clerk_handshake_nonce"], headers)
    assert refused.status == 401
    assert (await refused.json())["errors"][0]["code"] == "clerk_key_invalid"
    # A refused call does not use the nonce up.
    assert (await exchange(fapi, nonce["__clerk_handshake_nonce"], bearer(devclerk))).status == 200


async def test_the_payload_endpoint_can_be_down(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    nonce = query_of((await handshake(fapi, format="nonce")).headers["Location"])
    devclerk.handshake_payload_status = 503
    down = await exchange(fapi, nonce["__clerk_handshake_nonce"], bearer(devclerk))
    assert down.status == 503
    assert "errors" in await down.json()
    devclerk.handshake_payload_status = 200
    assert (await exchange(fapi, nonce["__clerk_handshake_nonce"], bearer(devclerk))).status == 200
    assert devclerk.handshake_payload_hits == 2


async def test_the_payload_endpoint_can_be_slow(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    nonce = query_of((await handshake(fapi, format="nonce")).headers["Location"])
    devclerk.handshake_payload_delay_s = 1.0
    with pytest.raises(asyncio.TimeoutError):
        await fapi.get(
            "/v1/clients/handshake_payload",
            params={"nonce": nonce["__clerk_handshake_nonce"]},
            headers=bearer(devclerk),
            timeout=aiohttp.ClientTimeout(total=0.2),
        )


async def test_a_payload_without_a_nonce_is_a_bad_request(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    resp = await fapi.get("/v1/clients/handshake_payload", headers=bearer(devclerk))
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "missing_parameter"


# ---- the handshake, token format, and its variants ----------------------------------------


@pytest.mark.parametrize("format_", [None, "token", "jwt"])
async def test_the_token_format_carries_signed_directives(
    fapi: TestClient[Any, Any], devclerk: DevClerk, format_: str | None
) -> None:
    set_client_cookie(fapi, devclerk.sign_in("alice"))
    resp = await handshake(fapi, **({} if format_ is None else {"format": format_}))
    assert resp.status == 307
    params = query_of(resp.headers["Location"])
    assert "__clerk_handshake_nonce" not in params
    decoded = decode(params["__clerk_handshake"])
    assert isinstance(decoded, Decoded)
    key = (await published_keys(fapi)).get(decoded.kid)
    assert key is not None
    assert check_header(decoded.header) is None
    assert check_signature(decoded, key) is None
    assert set(decoded.claims) == {"handshake"}  # no exp: Clerk checks no times
    directives = decoded.claims["handshake"]
    assert names(directives) == ["__session", "__client_uat", "__clerk_db_jwt"]
    token_claims = decode(cookie(directives, "__session"))
    assert isinstance(token_claims, Decoded)
    assert token_claims.claims["sub"] == "user_2alice"
    assert len(devclerk.nonces) == 0


@pytest.mark.parametrize("client_cookie", [None, "client_unknown"])
async def test_no_client_gets_signed_out_directives(
    fapi: TestClient[Any, Any], devclerk: DevClerk, client_cookie: str | None
) -> None:
    if client_cookie is not None:
        set_client_cookie(fapi, client_cookie)
    resp = await handshake(fapi, format="nonce", __clerk_db_jwt="dvb_held")
    directives = await nonce_directives(fapi, devclerk, resp.headers["Location"])
    assert directives == [
        "__session=; Path=/; Max-Age=0",
        "__client_uat=0; Path=/; SameSite=Lax; Max-Age=31536000",
    ]


@pytest.mark.parametrize(("asked", "suffixed"), [("true", True), ("false", False), (None, False)])
async def test_suffixed_cookies_when_asked(
    fapi: TestClient[Any, Any], devclerk: DevClerk, asked: str | None, suffixed: bool
) -> None:
    set_client_cookie(fapi, devclerk.sign_in("alice"))
    params = {"format": "nonce", **({} if asked is None else {"suffixed_cookies": asked})}
    directives = await nonce_directives(
        fapi, devclerk, (await handshake(fapi, **params)).headers["Location"]
    )
    suffix = cookie_suffix(devclerk.publishable_key)
    expected = ["__session", "__client_uat", "__clerk_db_jwt"]
    if suffixed:
        expected = [n for base in expected for n in (base, f"{base}_{suffix}")]
    assert names(directives) == expected
    if suffixed:
        assert cookie(directives, f"__session_{suffix}") == cookie(directives, "__session")


@pytest.mark.parametrize(
    ("live", "held", "minted"),
    [(False, None, True), (False, "dvb_held", False), (True, None, False)],
    ids=["dev without one", "dev holding one", "production"],
)
async def test_a_dev_instance_hands_out_a_dev_browser_token(
    devclerk: DevClerk,
    aiohttp_client: ClientFactory,
    live: bool,
    held: str | None,
    minted: bool,
) -> None:
    devclerk.live = live
    fapi = await aiohttp_client(devclerk.app())
    params = {"format": "nonce", **({} if held is None else {"__clerk_db_jwt": held})}
    directives = await nonce_directives(
        fapi, devclerk, (await handshake(fapi, **params)).headers["Location"]
    )
    dev = [d for d in directives if d.startswith("__clerk_db_jwt")]
    if minted:
        assert len(dev) == 1
        assert dev[0].endswith("; Path=/; SameSite=Lax")
        assert cookie(directives, "__clerk_db_jwt").startswith("dvb_")
    else:
        assert dev == []


async def test_two_dev_browser_tokens_differ(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    seen = set()
    for _ in range(2):
        location = (await handshake(fapi, format="nonce")).headers["Location"]
        seen.add(cookie(await nonce_directives(fapi, devclerk, location), "__clerk_db_jwt"))
    assert len(seen) == 2


async def test_the_handshake_records_clerks_parameters(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    sent = {
        "__clerk_api_version": "2026-05-12",
        "suffixed_cookies": "false",
        "__clerk_hs_reason": "session-token-expired-refresh-non-eligible-no-refresh-cookie",
        "format": "nonce",
        "__session": "old.token.here",
    }
    assert (await handshake(fapi, **sent)).status == 307
    assert devclerk.handshake_requests == [{"redirect_url": APP_URL, **sent}]


@pytest.mark.parametrize(
    "redirect_url",
    [None, "", "/dashboard", "javascript:alert(1)", "ftp://example.com/", "http:///nohost"],
)
async def test_the_handshake_refuses_a_bad_redirect_url(
    fapi: TestClient[Any, Any], devclerk: DevClerk, redirect_url: str | None
) -> None:
    params = {"format": "nonce"} if redirect_url is None else {"redirect_url": redirect_url}
    resp = await fapi.get("/v1/client/handshake", params=params, allow_redirects=False)
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["message"].startswith("redirect_url")
    assert len(devclerk.nonces) == 0


async def test_the_redirect_keeps_the_apps_own_query(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    url = "https://app.example/p/a%2Fb?q=%7e&empty=#top"
    resp = await fapi.get(
        "/v1/client/handshake",
        params={"redirect_url": url, "format": "nonce"},
        allow_redirects=False,
    )
    location = resp.headers["Location"]
    assert location.startswith("https://app.example/p/a%2Fb?q=%7e&empty=&__clerk_handshake_nonce=")
    assert location.endswith("#top")


async def test_the_token_names_the_app_it_returns_to(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    set_client_cookie(fapi, devclerk.sign_in("alice"))
    resp = await fapi.get(
        "/v1/client/handshake",
        params={"redirect_url": "https://other.example:8443/x", "format": "nonce"},
        allow_redirects=False,
    )
    directives = await nonce_directives(fapi, devclerk, resp.headers["Location"])
    token = decode(cookie(directives, "__session"))
    assert isinstance(token, Decoded)
    assert token.claims["azp"] == "https://other.example:8443"


# ---- sign-out -----------------------------------------------------------------------------


async def test_sign_out_comes_back_with_directives_that_clear_the_app(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    await follow(fapi, await sign_in(fapi, "alice"))
    (client,) = devclerk.clients.values()
    first_session = client.session_id
    resp = await fapi.get("/sign-out", params={"redirect_url": APP_URL}, allow_redirects=False)
    assert resp.status == 307
    assert resp.headers["Location"].startswith(APP_URL + "&__clerk_handshake_nonce=")
    directives = await nonce_directives(fapi, devclerk, resp.headers["Location"])
    # Plain and suffixed, whichever the app holds.
    assert directives == signed_out_directives(cookie_suffix(devclerk.publishable_key))
    assert "__client" not in resp.cookies  # the client stays; its session ended
    assert not client.signed_in
    after = await handshake(fapi, format="nonce", __clerk_db_jwt="dvb_held")
    assert (
        cookie(await nonce_directives(fapi, devclerk, after.headers["Location"]), "__client_uat")
        == "0"
    )
    # A later sign-in on the same browser is a new session on the same client.
    await sign_in(fapi, "alice")
    assert list(devclerk.clients) == [client.id]
    assert client.session_id not in (None, first_session)


async def test_sign_out_by_form_post(fapi: TestClient[Any, Any], devclerk: DevClerk) -> None:
    await sign_in(fapi)
    resp = await fapi.post("/sign-out", data={"redirect_url": APP_URL}, allow_redirects=False)
    assert resp.status == 307
    assert "__clerk_handshake_nonce=" in resp.headers["Location"]
    assert not any(c.signed_in for c in devclerk.clients.values())


async def test_sign_out_without_a_redirect_shows_a_page(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    await sign_in(fapi)
    resp = await fapi.get("/sign-out", allow_redirects=False)
    assert resp.status == 200
    assert "Signed out" in await resp.text()
    assert not any(c.signed_in for c in devclerk.clients.values())
    assert len(devclerk.nonces) == 0


async def test_sign_out_refuses_a_bad_redirect_url(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    await sign_in(fapi)
    resp = await fapi.get(
        "/sign-out", params={"redirect_url": "//evil.example/"}, allow_redirects=False
    )
    assert resp.status == 400
    assert all(c.signed_in for c in devclerk.clients.values())


# ---- Backend API users ----------------------------------------------------------------------


async def get_user(
    fapi: TestClient[Any, Any], user_id: str, headers: dict[str, str] | None
) -> aiohttp.ClientResponse:
    resp = await fapi.get(f"/v1/users/{user_id}", headers=headers or {})
    await resp.read()
    return resp


async def test_a_user_is_served_as_clerks_user_json(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    resp = await get_user(fapi, "user_2alice", bearer(devclerk))
    assert resp.status == 200
    user = await resp.json()
    assert (user["id"], user["object"], user["username"]) == ("user_2alice", "user", "alice")
    assert (user["first_name"], user["last_name"]) == ("Alice", "Liddell")
    assert user["image_url"].startswith("https://")
    (email,) = user["email_addresses"]
    assert email == {**email, "object": "email_address", "email_address": "alice@example.com"}
    assert user["primary_email_address_id"] == email["id"]
    assert user["public_metadata"] == {"role": "member"}
    assert user["private_metadata"] == user["unsafe_metadata"] == {}
    assert abs(user["created_at"] / 1000 - time.time()) < 60  # milliseconds
    assert user["updated_at"] >= user["created_at"]
    assert devclerk.users_hits == 1


@pytest.mark.parametrize("authorization", [None, "Bearer sk_test_wrong"])
async def test_users_need_the_secret_key(
    fapi: TestClient[Any, Any], devclerk: DevClerk, authorization: str | None
) -> None:
    headers = None if authorization is None else {"Authorization": authorization}
    resp = await get_user(fapi, "user_2alice", headers)
    assert resp.status == 401
    assert (await resp.json())["errors"][0]["code"] == "clerk_key_invalid"


async def test_an_unknown_user_is_not_found(fapi: TestClient[Any, Any], devclerk: DevClerk) -> None:
    resp = await get_user(fapi, "user_nobody", bearer(devclerk))
    assert resp.status == 404
    error = (await resp.json())["errors"][0]
    assert error["code"] == "resource_not_found"
    assert error["message"]


async def test_a_rate_limited_lookup_says_when_to_retry(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    devclerk.users_status = 429
    devclerk.users_retry_after_s = 7
    resp = await get_user(fapi, "user_2alice", bearer(devclerk))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert (await resp.json())["errors"][0]["code"] == "too_many_requests"
    devclerk.users_status = 200
    assert (await get_user(fapi, "user_2alice", bearer(devclerk))).status == 200
    assert devclerk.users_hits == 2


@pytest.mark.parametrize("status", [500, 503])
async def test_an_outage_answers_with_clerks_error_shape(
    fapi: TestClient[Any, Any], devclerk: DevClerk, status: int
) -> None:
    devclerk.users_status = status
    resp = await get_user(fapi, "user_2alice", bearer(devclerk))
    assert resp.status == status
    assert "Retry-After" not in resp.headers
    assert (await resp.json())["errors"][0]["code"]


async def test_a_slow_lookup_is_slow(fapi: TestClient[Any, Any], devclerk: DevClerk) -> None:
    devclerk.users_delay_s = 1.0
    with pytest.raises(asyncio.TimeoutError):
        await fapi.get(
            "/v1/users/user_2alice",
            headers=bearer(devclerk),
            timeout=aiohttp.ClientTimeout(total=0.2),
        )


async def test_update_user_changes_what_the_api_serves(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    event = devclerk.update_user("user_2bob", first_name="Robert", email="rob@example.org")
    user = await (await get_user(fapi, "user_2bob", bearer(devclerk))).json()
    assert user["first_name"] == "Robert"
    assert user["email_addresses"][0]["email_address"] == "rob@example.org"
    assert user == event["data"]


async def test_a_sent_event_changes_the_store_and_carries_the_user(
    fapi: TestClient[Any, Any],
    devclerk: DevClerk,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    received: list[dict[str, Any]] = []

    async def webhook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", webhook)
    server = await aiohttp_server(receiver)
    devclerk.webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    devclerk.webhook_url = str(server.make_url("/hook"))

    status = await devclerk.send_user_event(
        "user.updated", user_id="user_2alice", last_name="Smith"
    )
    assert status == 204
    user = await (await get_user(fapi, "user_2alice", bearer(devclerk))).json()
    assert user["last_name"] == "Smith"
    assert received[-1]["data"] == user

    resp = await fapi.post("/demo/users", json={"type": "user.deleted", "user_id": "user_2alice"})
    assert await resp.json() == {
        "sent": "user.deleted",
        "user_id": "user_2alice",
        "gateway_status": 204,
    }
    assert received[-1]["data"] == {"object": "user", "id": "user_2alice", "deleted": True}
    assert (await get_user(fapi, "user_2alice", bearer(devclerk))).status == 404


async def test_demo_users_updates_the_store_without_a_webhook_url(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    resp = await fapi.post(
        "/demo/users",
        json={
            "type": "user.updated",
            "user_id": "user_2bob",
            "username": "bobby",
            "public_metadata": {"role": "admin", "tenant": "t1"},
        },
    )
    assert resp.status == 200
    assert (await resp.json())["gateway_status"] is None
    user = await (await get_user(fapi, "user_2bob", bearer(devclerk))).json()
    assert user["username"] == "bobby"
    assert user["public_metadata"] == {"role": "admin", "tenant": "t1"}
    created = await (await fapi.post("/demo/users", json={"first_name": "Carol"})).json()
    assert created["sent"] == "user.created"
    assert devclerk.users[created["user_id"]]["first_name"] == "Carol"


@pytest.mark.parametrize(
    "body",
    [{"type": "session.created"}, {"user_id": 5}, {"user_id": ""}],
)
async def test_demo_users_refuses_bad_input(
    fapi: TestClient[Any, Any], devclerk: DevClerk, body: dict[str, Any]
) -> None:
    before = len(devclerk.users)
    resp = await fapi.post("/demo/users", json=body)
    assert resp.status == 400
    assert len(devclerk.users) == before


# ---- /demo/token --------------------------------------------------------------------------


async def test_demo_tokens_carry_org_permissions_the_gateway_decodes(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    asked = ["org:reports:read", "org:reports:manage", "org:billing:read", "org:teams:invite"]
    resp = await fapi.get(
        "/demo/token/alice",
        params={
            "org_id": "org_1",
            "org_slug": "acme",
            "org_role": "admin",
            "org_permissions": ",".join(asked),
            "claims": json.dumps({"email": "a@b.c", "metadata": {"role": "member", "tier": 2}}),
            "lifetime": "120",
        },
    )
    assert resp.status == 200, await resp.text()
    options = VerifyOptions(issuer=devclerk.issuer, authorized_parties=frozenset([devclerk.origin]))
    claims = verify(await resp.text(), await published_keys(fapi), time.time() * 1000, options)
    assert not isinstance(claims, Reason), claims
    principal = principal_from_claims(claims, ("metadata", "role"))
    assert principal is not None
    assert principal.user_id == "user_2alice"
    assert principal.roles == ("member",)
    assert (principal.org_id, principal.org_slug, principal.org_role) == (
        "org_1",
        "acme",
        "org:admin",
    )
    assert sorted(principal.org_permissions) == sorted(asked)
    assert claims["o"]["rol"] == "admin"
    assert claims["email"] == "a@b.c"
    assert claims["metadata"] == {"role": "member", "tier": 2}
    assert claims["exp"] - claims["iat"] == 120


async def test_a_plain_demo_token_is_unchanged(
    fapi: TestClient[Any, Any], devclerk: DevClerk
) -> None:
    resp = await fapi.get("/demo/token/admin")
    decoded = decode(await resp.text())
    assert isinstance(decoded, Decoded)
    assert decoded.claims["sub"] == "user_2admin"
    assert decoded.claims["metadata"] == {"role": "admin"}
    assert decoded.claims["exp"] - decoded.claims["iat"] == 60
    assert "o" not in decoded.claims
    assert "fea" not in decoded.claims


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("lifetime=0", "lifetime"),
        ("lifetime=99999", "lifetime"),
        ("lifetime=1.5", "lifetime"),
        ("claims=not-json", "JSON object"),
        ("claims=%5B1%5D", "JSON object"),
        ("org_permissions=org:a:b", "org_id"),
        ("org_id=o&org_permissions=org:a", "org_permissions"),
        ("org_id=o&org_role=", "must not be empty"),
        ("lifetime=5&lifetime=6", "more than once"),
        ("role=admin", "unknown parameter"),
    ],
)
async def test_a_bad_demo_token_query_is_a_400_that_says_why(
    fapi: TestClient[Any, Any], query: str, message: str
) -> None:
    resp = await fapi.get(f"/demo/token/alice?{query}")
    assert resp.status == 400
    assert message in await resp.text()


async def test_an_unknown_demo_user_is_not_found(fapi: TestClient[Any, Any]) -> None:
    resp = await fapi.get("/demo/token/mallory")
    assert resp.status == 404
    assert "alice" in await resp.text()
