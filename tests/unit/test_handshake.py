"""Clerk's handshake rules (gateway/clerk/handshake.py) against the reference's vectors.

Vector numbers are those of the reference's section 10; "expected" is what Clerk's
JavaScript SDK (`authenticateRequest`) answers. The rules are pure: the inputs are a
Cookie header, a query, the request's facts and the instance.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway.clerk.handshake import (
    NO_COOKIES,
    NO_QUERY,
    ClerkQuery,
    Cookies,
    Handshake,
    Navigation,
    Resolve,
    SignedOut,
    Verify,
    after_verification,
    before_verification,
    clean_url,
    clearing,
    directives,
    handshake_url,
    instance_for,
    maybe_handshake,
    redirect_count_cookie,
    session_from,
    settled,
    without_handshake,
    without_handshake_cookies,
)
from gateway.clerk.keys import parse_publishable_key
from gateway.clerk.tokens import peek_claims
from gateway.decision import Principal, Reason
from gateway.devclerk import DevClerk

PROD = DevClerk(frontend_api="clerk.example.com", live=True, origin="https://app.example.com")
DEV = DevClerk(frontend_api="example.accounts.dev", origin="https://app.example.com")
URL = "https://app.example.com/x?y=1"


def instance(clerk: DevClerk, **kw: Any) -> Any:
    options: dict[str, Any] = {"proxy_url": None, "domain": None, "satellite": False}
    options.update(kw)
    return instance_for(
        parse_publishable_key(clerk.publishable_key), sign_in_url="/sign-in", **options
    )


def page(method: str = "GET", url: str = URL, referer: str | None = None) -> Navigation:
    """A browser navigation (Sec-Fetch-Dest: document)."""
    return Navigation(method, url, method in ("GET", "HEAD"), True, referer)


def api(method: str = "GET", url: str = URL) -> Navigation:
    """An API request (Sec-Fetch-Dest: empty)."""
    return Navigation(method, url, False, False)


def cookies(clerk: DevClerk, header: str) -> Cookies:
    pk = parse_publishable_key(clerk.publishable_key)
    return Cookies.parse(header.encode("latin-1"), pk, time.time(), peek_claims)


def step(
    clerk: DevClerk, header: str | None, request: Navigation, query: str = "", **kw: Any
) -> Any:
    jar = cookies(clerk, header) if header is not None else NO_COOKIES
    return before_verification(
        jar, ClerkQuery.parse(query), request, instance(clerk, **kw), peek_claims
    )


def handshake(reason: Reason) -> Handshake:
    return Handshake(reason)


# ---- before the signature: vectors 1-6 ------------------------------------------------------


def test_01_no_cookies_on_production_is_signed_out() -> None:
    assert step(PROD, None, page()) == SignedOut(
        Reason.SESSION_TOKEN_AND_UAT_MISSING, Reason.SESSION_TOKEN_MISSING
    )


def test_02_a_dev_instance_without_a_dev_browser_token_handshakes() -> None:
    assert step(DEV, None, page()) == handshake(Reason.DEV_BROWSER_MISSING)


def test_02_an_api_call_without_any_session_is_told_so_not_about_dev_browsers() -> None:
    assert step(DEV, None, api()) == SignedOut(
        Reason.DEV_BROWSER_MISSING, Reason.SESSION_TOKEN_MISSING
    )
    token = DEV.mint("user_1")
    with_session = step(DEV, f"__session={token}; __client_uat=1", api())
    assert with_session == SignedOut(Reason.DEV_BROWSER_MISSING, Reason.DEV_BROWSER_MISSING)


def test_02_a_dev_browser_token_in_the_query_is_synced_by_a_handshake() -> None:
    assert step(DEV, None, page(), "__clerk_db_jwt=dvb_1") == handshake(Reason.DEV_BROWSER_SYNC)
    # present as a cookie: on to the session checks
    assert step(DEV, "__clerk_db_jwt=dvb_1", page()) == SignedOut(
        Reason.SESSION_TOKEN_AND_UAT_MISSING, Reason.SESSION_TOKEN_MISSING
    )


def test_03_a_client_without_a_session_token_handshakes_on_navigations_only() -> None:
    assert step(PROD, "__client_uat=1700000000", page()) == handshake(
        Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN
    )
    assert step(PROD, "__client_uat=1700000000", api()) == SignedOut(
        Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN, Reason.SESSION_TOKEN_MISSING
    )


@pytest.mark.parametrize("uat", ["", "; __client_uat=0", "; __client_uat=junk"])
def test_04_a_session_without_a_client_uat_handshakes(uat: str) -> None:
    token = PROD.mint("user_1")
    assert step(PROD, f"__session={token}{uat}", page()) == handshake(
        Reason.SESSION_TOKEN_BUT_NO_CLIENT_UAT
    )


def test_05_a_token_older_than_the_last_sign_in_handshakes_before_any_signature_check() -> None:
    now = int(time.time())
    token = PROD.mint("user_1", now=now - 30)
    forged = token[:-8] + ("A" * 8 if not token.endswith("A" * 8) else "B" * 8)
    for value in (token, forged):
        assert step(PROD, f"__session={value}; __client_uat={now}", page()) == handshake(
            Reason.SESSION_TOKEN_IAT_BEFORE_CLIENT_UAT
        )


def test_06_a_token_minted_after_the_last_sign_in_is_verified() -> None:
    now = int(time.time())
    token = PROD.mint("user_1", now=now)
    assert step(PROD, f"__session={token}; __client_uat={now}", page()) == Verify(token)
    assert step(PROD, f"__session={token}; __client_uat={now - 5}", api()) == Verify(token)


def test_08_an_undecodable_cookie_token_is_signed_out_not_handshaken() -> None:
    assert step(PROD, "__session=a.b; __client_uat=1", page()) == SignedOut(
        Reason.TOKEN_INVALID, Reason.TOKEN_INVALID
    )


def test_08_a_machine_token_in_the_cookie_is_a_type_mismatch() -> None:
    token = PROD.mint("user_1", headers={"cat": "cl_B7d4PD222AAA"})
    assert step(PROD, f"__session={token}; __client_uat=1", page()) == SignedOut(
        Reason.TOKEN_TYPE_MISMATCH, Reason.TOKEN_TYPE_MISMATCH
    )


def test_the_suffixed_cookies_of_this_instance_are_read_and_reported() -> None:
    now = int(time.time())
    token = PROD.mint("user_1", now=now)
    suffix = PROD.cookie_suffix
    # another instance's plain cookie on the same host (a shared parent domain) is not ours
    theirs = DEV.mint("user_9", now=now + 10)
    header = f"__session_{suffix}={token}; __client_uat_{suffix}={now}; __session={theirs}"
    jar = cookies(PROD, header)
    assert jar.token == token
    assert jar.suffixed is True
    assert jar.client_uat == now


# ---- after the signature: vectors 8-11, 19 --------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "jar", "expected"),
    [
        (
            api(),
            "",
            SignedOut(Reason.SESSION_TOKEN_EXPIRED_NO_REFRESH_COOKIE, Reason.TOKEN_EXPIRED),
        ),
        (
            api("POST"),
            "",
            SignedOut(Reason.SESSION_TOKEN_EXPIRED_NON_GET, Reason.TOKEN_EXPIRED),
        ),
        (page(), "", Handshake(Reason.SESSION_TOKEN_EXPIRED_NO_REFRESH_COOKIE)),
        (page(), "__refresh_x=1", Handshake(Reason.SESSION_TOKEN_EXPIRED_NOT_REFRESHED)),
        # 19: a form POST with Sec-Fetch-Dest: document is never redirected
        (
            page("POST"),
            "",
            SignedOut(Reason.SESSION_TOKEN_EXPIRED_NON_GET, Reason.TOKEN_EXPIRED),
        ),
    ],
)
def test_08_an_expired_token_is_refreshed_on_navigations(
    request_: Navigation, jar: str, expected: object
) -> None:
    result = after_verification(Reason.TOKEN_EXPIRED, cookies(PROD, jar), request_, instance(PROD))
    assert result == expected


@pytest.mark.parametrize(
    ("failure", "auth"),
    [
        (Reason.TOKEN_NOT_ACTIVE_YET, Reason.SESSION_TOKEN_NBF),
        (Reason.TOKEN_IAT_IN_THE_FUTURE, Reason.SESSION_TOKEN_IAT_IN_THE_FUTURE),
    ],
)
def test_10_clock_errors_are_refreshed_too(failure: Reason, auth: Reason) -> None:
    assert after_verification(failure, NO_COOKIES, page(), instance(PROD)) == Handshake(auth)
    assert after_verification(failure, NO_COOKIES, api(), instance(PROD)) == SignedOut(
        auth, failure
    )


@pytest.mark.parametrize(
    "failure",
    [Reason.TOKEN_INVALID_SIGNATURE, Reason.TOKEN_INVALID_ALGORITHM, Reason.TOKEN_INVALID],
)
def test_11_a_bad_token_is_signed_out_never_handshaken(failure: Reason) -> None:
    assert after_verification(failure, NO_COOKIES, page(), instance(PROD)) == SignedOut(
        failure, failure
    )


def test_a_session_is_signed_in() -> None:
    principal = Principal(user_id="user_1")
    assert after_verification(principal, NO_COOKIES, page(), instance(PROD)) is principal


def test_11_a_session_arriving_from_another_origin_is_synchronised_first() -> None:
    principal = Principal(user_id="user_1")
    elsewhere = page(referer="https://other.example.net/page")
    assert after_verification(principal, NO_COOKIES, elsewhere, instance(PROD)) == Handshake(
        Reason.PRIMARY_DOMAIN_CROSS_ORIGIN_SYNC
    )
    for referer in (
        "https://app.example.com/other",  # same origin
        "https://clerk.example.com/v1/x",  # Clerk's frontend API
        "https://accounts.example.com/sign-in",  # the account portal
    ):
        same = page(referer=referer)
        assert after_verification(principal, NO_COOKIES, same, instance(PROD)) is principal
    # once the counter runs, the sync is not repeated
    counted = cookies(PROD, "__clerk_redirect_count=1")
    assert after_verification(principal, counted, elsewhere, instance(PROD)) is principal


# ---- the counter: vector 16 -----------------------------------------------------------------


@pytest.mark.parametrize(("count", "loop"), [(0, False), (2, False), (3, True), (9, True)])
def test_16_the_redirect_counter_stops_a_loop_at_three(count: int, loop: bool) -> None:
    jar = cookies(PROD, f"__clerk_redirect_count={count}")
    result = maybe_handshake(Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN, page(), jar)
    if loop:
        assert result == SignedOut(
            Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN, Reason.SESSION_TOKEN_MISSING, loop=True
        )
    else:
        assert result == Handshake(Reason.CLIENT_UAT_BUT_NO_SESSION_TOKEN)
        assert redirect_count_cookie(jar) == (
            f"__clerk_redirect_count={count + 1}; SameSite=Lax; HttpOnly; Max-Age=2"
        )


# ---- the wire: vectors 17, 18 ---------------------------------------------------------------


def test_17_the_handshake_url_is_clerks_in_clerks_order() -> None:
    location = handshake_url(
        instance(PROD), Reason.SESSION_TOKEN_EXPIRED_NO_REFRESH_COOKIE, page(), NO_COOKIES, NO_QUERY
    )
    assert location == (
        "https://clerk.example.com/v1/client/handshake?redirect_url=https%3A%2F%2Fapp.example.com"
        "%2Fx%3Fy%3D1&__clerk_api_version=2026-05-12&suffixed_cookies=false"
        "&__clerk_hs_reason=session-token-expired-refresh-non-eligible-no-refresh-cookie&format=nonce"
    )


def test_17_the_current_token_and_the_dev_browser_token_ride_along() -> None:
    token = DEV.mint("user_1")
    jar = cookies(DEV, f"__session={token}; __clerk_db_jwt=dvb_1; __client_uat=1")
    url = "https://app.example.com/x?__clerk_db_jwt=dvb_1&y=1"
    location = handshake_url(instance(DEV), Reason.DEV_BROWSER_SYNC, page(url=url), jar, NO_QUERY)
    params = dict(parse_qsl(urlsplit(location).query))
    assert params["redirect_url"] == "https://app.example.com/x?y=1"  # dev params dropped
    assert params["__session"] == token
    assert params["__clerk_db_jwt"] == "dvb_1"
    assert urlsplit(location).netloc == "example.accounts.dev"


@pytest.mark.parametrize(
    ("options", "base"),
    [
        ({"proxy_url": "https://app.example.com/__clerk"}, "https://app.example.com/__clerk"),
        ({"proxy_url": "/__clerk"}, "https://app.example.com/__clerk"),  # on the request's origin
        ({"domain": "example.org", "satellite": True}, "https://clerk.example.org"),
    ],
)
def test_17_a_proxy_or_a_production_satellite_replaces_the_frontend_api(
    options: dict[str, Any], base: str
) -> None:
    location = handshake_url(
        instance(PROD, **options),
        Reason.SESSION_TOKEN_EXPIRED_NO_REFRESH_COOKIE,
        page(),
        NO_COOKIES,
        NO_QUERY,
    )
    assert location.startswith(f"{base}/v1/client/handshake?redirect_url=")


def test_18_only_clerks_cookies_are_taken_from_a_payload() -> None:
    payload: list[Any] = [
        "__session=abc; Path=/; SameSite=Lax",
        "__session_QvfNY2dr=abc; Path=/",
        "__client_uat=1700000000; Path=/; Max-Age=31536000",
        "__clerk_db_jwt=dvb_1; Path=/",
        "__refresh_QvfNY2dr=r; Path=/; HttpOnly",
        "__clerk_handshake=; Path=/; Max-Age=0",
        "app_session=stolen; Path=/",  # not Clerk's: never set on the app's host
        "__session=x\r\nSet-Cookie: evil=1",  # would split the header
        "__session=caf\u00e9",  # not ASCII
        42,
        None,
    ]
    assert directives(payload) == payload[:6]
    assert session_from(directives(payload)) == "abc"
    assert session_from(["__client_uat=0; Path=/"]) is None


def test_the_clean_url_drops_only_the_handshakes_parameters_keeping_the_others_verbatim() -> None:
    url = (
        "https://app.example.com/p?a=b+c&__clerk_handshake_nonce=n1&q=%2F%20x"
        "&__clerk_hs_reason=r&__clerk_db_jwt=d&z="
    )
    assert clean_url(url) == "https://app.example.com/p?a=b+c&q=%2F%20x&z="
    assert clean_url("https://app.example.com/p?__clerk_handshake=t") == (
        "https://app.example.com/p"
    )
    assert clean_url("https://app.example.com/p") == "https://app.example.com/p"


# ---- what comes back: the return leg --------------------------------------------------------


def test_01_a_nonce_or_token_coming_back_is_resolved_on_navigations_only() -> None:
    assert step(PROD, None, page(), "__clerk_handshake_nonce=n1") == Resolve("n1", None)
    assert step(PROD, "__clerk_handshake=t1", page()) == Resolve(None, "t1")
    # an API call with a stale handshake cookie does not make the gateway ask Clerk
    assert step(PROD, "__clerk_handshake_nonce=n1", api()) == SignedOut(
        Reason.SESSION_TOKEN_AND_UAT_MISSING, Reason.SESSION_TOKEN_MISSING
    )


def test_the_handshakes_own_cookies_are_never_forwarded_and_are_cleared() -> None:
    jar = cookies(PROD, "a=1; __clerk_handshake=t; __clerk_redirect_count=2; b=2")
    assert jar.forwarded == b"a=1; b=2"
    assert clearing(jar) == ["__clerk_handshake=; Path=/; Max-Age=0"]
    assert cookies(PROD, "a=1; b=2").forwarded is None  # forwarded as received


# ---- satellites and dev syncing: vectors for steps 2 and 3 ----------------------------------


def test_a_satellites_first_visit_stays_signed_out_and_a_sync_request_handshakes() -> None:
    options = {"domain": "example.com", "satellite": True}
    assert step(PROD, None, page(), **options) == SignedOut(
        Reason.SESSION_TOKEN_AND_UAT_MISSING, Reason.SESSION_TOKEN_MISSING
    )
    assert step(PROD, None, page(), "__clerk_synced=false", **options) == Handshake(
        Reason.SATELLITE_NEEDS_SYNCING
    )
    assert step(PROD, None, page(), "__clerk_synced=true", **options) == SignedOut(
        Reason.SESSION_TOKEN_AND_UAT_MISSING, Reason.SESSION_TOKEN_MISSING
    )


def test_a_dev_satellite_syncs_through_the_primarys_sign_in_page() -> None:
    result = step(
        DEV, None, page(), "__clerk_synced=false", proxy_url="https://p.example.com", satellite=True
    )
    assert isinstance(result, Handshake)
    assert result.reason is Reason.SATELLITE_NEEDS_SYNCING
    assert result.location == (
        "/sign-in?__clerk_redirect_url=https%3A%2F%2Fapp.example.com%2Fx%3Fy%3D1"
    )


def test_a_dev_primary_sends_a_syncing_satellite_back_only_to_a_trusted_origin() -> None:
    trusted = ("https://sat.example.net",)
    query = "__clerk_redirect_url=https%3A%2F%2Fsat.example.net%2Fp"
    result = step(DEV, "__clerk_db_jwt=dvb_1", page(), query, trusted_redirects=trusted)
    assert result == Handshake(
        Reason.PRIMARY_RESPONDS_TO_SYNCING,
        "https://sat.example.net/p?__clerk_db_jwt=dvb_1&__clerk_synced=true",
    )
    evil = "__clerk_redirect_url=https%3A%2F%2Fevil.example%2Fsteal"
    assert not isinstance(
        step(DEV, "__clerk_db_jwt=dvb_1", page(), evil, trusted_redirects=trusted), Handshake
    )


# ---- hostile input ----------------------------------------------------------------------


def test_the_upstream_cookie_loses_only_the_handshake_pairs_byte_for_byte() -> None:
    header = b'msgs="a\\054b"; __clerk_redirect_count=1; flag; __clerk_handshake_nonce=n; x=y'
    assert without_handshake_cookies(header) == b'msgs="a\\054b"; flag; x=y'
    assert without_handshake_cookies(b"__clerk_handshake=j") == b""
    assert without_handshake_cookies(b"__clerk_db_jwt=d; a=1") is None  # nothing to cut
    assert without_handshake_cookies(b"a=1") is None


def test_the_upstream_target_loses_only_the_handshake_parameters() -> None:
    target = "/p?a=1&__clerk_handshake_nonce=n&b=%20+&__clerk_db_jwt=d&__dev_session=s"
    assert without_handshake(target) == "/p?a=1&b=%20+"
    assert without_handshake("/p?__clerk_handshake=j") == "/p"
    assert without_handshake("/p?__clerk_synced=true") == "/p?__clerk_synced=true"


def test_urls_any_client_shapes_never_raise() -> None:
    assert clean_url("http://[oops/x?__clerk_handshake=j&a=1") == "http://[oops/x?a=1"
    cookies = Cookies.parse(b"__client_uat=" + b"9" * 4400, None, 0.0, peek_claims)
    assert cookies.client_uat == 999_999_999_999_999  # 15 digits, never int("9" * 4400)
    query = ClerkQuery.parse("__clerk_redirect_url=http://[x&__clerk_db_jwt=d")
    request = Navigation("GET", URL, document=True, fetch_dest_document=True)
    instance = instance_for(
        parse_publishable_key(DEV.publishable_key),
        proxy_url=None,
        domain=None,
        satellite=False,
        sign_in_url="/sign-in",
        trusted_redirects=("https://app.example.com",),
    )
    step = before_verification(NO_COOKIES, query, request, instance, peek_claims)
    assert isinstance(step, Handshake)  # the broken redirect_url is ignored, not a crash


def test_a_failed_resolution_settles_on_the_cookies_without_the_handshake() -> None:
    cookies = Cookies.parse(b"__clerk_handshake_nonce=n; __client_uat=5", None, 0.0, peek_claims)
    query = ClerkQuery.parse("__clerk_handshake=j&a=1")
    after_cookies, after_query = settled(cookies, query)
    assert after_cookies.handshake_nonce is None
    assert after_cookies.client_uat == 5
    assert not after_query.has_handshake
