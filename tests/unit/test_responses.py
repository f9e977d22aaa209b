"""Reason -> status, body and the bytes on the wire: the one place a denial is answered."""

from __future__ import annotations

import json

import pytest

from gateway.decision import Reason
from gateway.responses import (
    Denial,
    body_of,
    denial,
    is_navigation,
    refusal,
    render,
    status_of,
    with_query,
)

STATUSES = [
    # (description, reason, status, error kind in the body)
    ("an ambiguous path is the client's fault", Reason.PATH_AMBIGUOUS, 400, "bad_request"),
    ("a malformed request", Reason.REQUEST_MALFORMED, 400, "bad_request"),
    ("a webhook being delivered now", Reason.WEBHOOK_IN_PROGRESS, 409, "conflict"),
    (
        "a header too large",
        Reason.REQUEST_HEADER_TOO_LARGE,
        431,
        "request_header_fields_too_large",
    ),
    ("a request line too long", Reason.REQUEST_LINE_TOO_LONG, 414, "uri_too_long"),
    ("a slow head", Reason.REQUEST_HEAD_TIMEOUT, 408, "request_timeout"),
    ("a slow body", Reason.REQUEST_BODY_TIMEOUT, 408, "request_timeout"),
    ("a missing role", Reason.ROLE_REQUIRED, 403, "forbidden"),
    ("a missing org role", Reason.ORG_ROLE_REQUIRED, 403, "forbidden"),
    ("a missing org permission", Reason.ORG_PERMISSION_REQUIRED, 403, "forbidden"),
    ("a deny route", Reason.ROUTE_DENIED, 403, "forbidden"),
    ("webhook headers missing", Reason.WEBHOOK_HEADERS_MISSING, 400, "bad_request"),
    ("webhook headers invalid", Reason.WEBHOOK_HEADERS_INVALID, 400, "bad_request"),
    ("a bad webhook signature", Reason.WEBHOOK_SIGNATURE_INVALID, 400, "bad_request"),
    ("an old webhook", Reason.WEBHOOK_TIMESTAMP_TOO_OLD, 400, "bad_request"),
    ("a webhook from the future", Reason.WEBHOOK_TIMESTAMP_TOO_NEW, 400, "bad_request"),
    ("a webhook body too large", Reason.WEBHOOK_BODY_TOO_LARGE, 413, "payload_too_large"),
    ("a webhook delivered before", Reason.WEBHOOK_ALREADY_DELIVERED, 200, "ok"),
    ("keys that cannot be fetched", Reason.JWK_REMOTE_FAILED_TO_LOAD, 503, "unavailable"),
    ("an unreachable upstream", Reason.UPSTREAM_UNREACHABLE, 502, "bad_gateway"),
    ("an upstream reset", Reason.UPSTREAM_RESET, 502, "bad_gateway"),
    ("a slow upstream", Reason.UPSTREAM_TIMEOUT, 504, "gateway_timeout"),
    ("a broken upstream response", Reason.UPSTREAM_INVALID_RESPONSE, 502, "bad_gateway"),
    ("the gateway's own bug", Reason.INTERNAL_ERROR, 500, "internal"),
    ("no token", Reason.SESSION_TOKEN_MISSING, 401, "unauthorized"),
    ("a pending session", Reason.SESSION_PENDING, 401, "unauthorized"),
    ("an expired token", Reason.TOKEN_EXPIRED, 401, "unauthorized"),
    ("an unknown key id", Reason.JWK_KID_MISMATCH, 401, "unauthorized"),
]


@pytest.mark.parametrize(
    ("description", "reason", "status", "kind"), STATUSES, ids=[c[0] for c in STATUSES]
)
def test_status_and_body(description: str, reason: Reason, status: int, kind: str) -> None:
    assert status_of(reason) == status, description
    assert json.loads(body_of(reason)) == {"error": kind, "reason": reason.value}


NAVIGATIONS = [
    # (description, method, sec-fetch-dest, accept, navigation)
    ("a page load", "GET", "document", None, True),
    ("an iframe", "GET", "iframe", None, True),
    ("Sec-Fetch-Dest spelled loosely", "GET", " Document ", None, True),
    ("HEAD of a page", "HEAD", "document", None, True),
    ("a fetch() call", "GET", "empty", "text/html", False),
    ("an image", "GET", "image", None, False),
    ("a form POST is not redirected", "POST", "document", "text/html", False),
    ("no Sec-Fetch-Dest, Accept asks for HTML", "GET", None, "text/html,*/*", True),
    ("no Sec-Fetch-Dest, Accept in capitals", "GET", None, "TEXT/HTML", True),
    ("no Sec-Fetch-Dest, JSON wanted", "GET", None, "application/json", False),
    ("no headers at all", "GET", None, None, False),
]


@pytest.mark.parametrize(
    ("description", "method", "dest", "accept", "expected"),
    NAVIGATIONS,
    ids=[c[0] for c in NAVIGATIONS],
)
def test_is_navigation(
    description: str, method: str, dest: str | None, accept: str | None, expected: bool
) -> None:
    assert is_navigation(method, dest, accept) is expected, description


SIGN_IN = "https://accounts.example.com/sign-in"
UNAUTHORIZED = "https://app.example.com/unauthorized"
ORIGINAL = "https://app.example.com/x?y=1"
REDIRECT = f"{SIGN_IN}?redirect_url=https%3A%2F%2Fapp.example.com%2Fx%3Fy%3D1"

DENIALS = [
    # (description, reason, navigation, (status, location, kind, www_authenticate))
    (
        "an API call without a session",
        Reason.SESSION_TOKEN_MISSING,
        False,
        (401, None, "deny", True),
    ),
    ("a page without a session", Reason.TOKEN_EXPIRED, True, (307, REDIRECT, "redirect", False)),
    ("an API call without the role", Reason.ROLE_REQUIRED, False, (403, None, "deny", False)),
    (
        "a page without the role",
        Reason.ROLE_REQUIRED,
        True,
        (307, UNAUTHORIZED, "redirect", False),
    ),
    (
        "a page without the org role",
        Reason.ORG_ROLE_REQUIRED,
        True,
        (307, UNAUTHORIZED, "redirect", False),
    ),
    (
        "a page without the org permission",
        Reason.ORG_PERMISSION_REQUIRED,
        True,
        (307, UNAUTHORIZED, "redirect", False),
    ),
    ("a deny route is not redirected", Reason.ROUTE_DENIED, True, (403, None, "deny", False)),
    ("an ambiguous page path", Reason.PATH_AMBIGUOUS, True, (400, None, "deny", False)),
    ("keys down on a page", Reason.JWK_REMOTE_FAILED_TO_LOAD, True, (503, None, "deny", False)),
]


@pytest.mark.parametrize(
    ("description", "reason", "navigation", "expected"), DENIALS, ids=[c[0] for c in DENIALS]
)
def test_denial(
    description: str, reason: Reason, navigation: bool, expected: tuple[object, ...]
) -> None:
    answer = denial(
        reason,
        navigation=navigation,
        sign_in_url=SIGN_IN,
        unauthorized_url=UNAUTHORIZED,
        original_url=ORIGINAL,
    )
    assert answer.reason is reason
    got = (answer.status, answer.location, answer.kind, answer.www_authenticate)
    assert got == expected, description


QUERIES = [
    # (description, url, value, result)
    ("first parameter", "https://a.example/in", "/x", "https://a.example/in?redirect_url=%2Fx"),
    (
        "appended to a query",
        "https://a.example/in?a=1",
        "v",
        "https://a.example/in?a=1&redirect_url=v",
    ),
    (
        "the fragment stays last",
        "https://a.example/in#top",
        "v",
        "https://a.example/in?redirect_url=v#top",
    ),
    (
        "a '?' in the fragment is not a query",
        "https://a.example/in#a?b",
        "v",
        "https://a.example/in?redirect_url=v#a?b",
    ),
    (
        "every reserved character encoded",
        "https://a.example/in",
        "https://b/c?d=e&f#g",
        "https://a.example/in?redirect_url=https%3A%2F%2Fb%2Fc%3Fd%3De%26f%23g",
    ),
]


@pytest.mark.parametrize(
    ("description", "url", "value", "result"), QUERIES, ids=[c[0] for c in QUERIES]
)
def test_with_query(description: str, url: str, value: str, result: str) -> None:
    assert with_query(url, "redirect_url", value) == result, description


def head_and_body(raw: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def body_line(reason: Reason) -> bytes:
    return b"Content-Length: %d" % len(body_of(reason))


RENDERED = [
    # (description, denial, options, the head's lines)
    (
        "a 401 to an anonymous client, kept alive",
        Denial(401, Reason.SESSION_TOKEN_MISSING),
        {"keep_alive": True},
        [
            b"HTTP/1.1 401 Unauthorized",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"WWW-Authenticate: Bearer",
            body_line(Reason.SESSION_TOKEN_MISSING),
            b"Connection: keep-alive",
        ],
    ),
    (
        "a 401 for a token that failed",
        Denial(401, Reason.TOKEN_EXPIRED),
        {"keep_alive": False, "token_given": True},
        [
            b"HTTP/1.1 401 Unauthorized",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b'WWW-Authenticate: Bearer error="invalid_token"',
            body_line(Reason.TOKEN_EXPIRED),
            b"Connection: close",
        ],
    ),
    (
        "a 403 has no challenge",
        Denial(403, Reason.ROLE_REQUIRED),
        {"keep_alive": True, "token_given": True},
        [
            b"HTTP/1.1 403 Forbidden",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            body_line(Reason.ROLE_REQUIRED),
            b"Connection: keep-alive",
        ],
    ),
    (
        "a redirect carries its Location",
        Denial(307, Reason.TOKEN_EXPIRED, "https://a.example/in?r=%2Fx"),
        {"keep_alive": True},
        [
            b"HTTP/1.1 307 Temporary Redirect",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Location: https://a.example/in?r=%2Fx",
            body_line(Reason.TOKEN_EXPIRED),
            b"Connection: keep-alive",
        ],
    ),
    (
        "a non-Latin-1 Location cannot break the head",
        Denial(307, Reason.TOKEN_EXPIRED, "https://a.example/\u2028x"),
        {"keep_alive": True},
        [
            b"HTTP/1.1 307 Temporary Redirect",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Location: https://a.example/?x",
            body_line(Reason.TOKEN_EXPIRED),
            b"Connection: keep-alive",
        ],
    ),
    (
        "a 503 says when to come back",
        Denial(503, Reason.JWK_REMOTE_FAILED_TO_LOAD),
        {"keep_alive": False},
        [
            b"HTTP/1.1 503 Service Unavailable",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Retry-After: 5",
            body_line(Reason.JWK_REMOTE_FAILED_TO_LOAD),
            b"Connection: close",
        ],
    ),
    (
        "extra header lines before the framing",
        Denial(409, Reason.WEBHOOK_IN_PROGRESS),
        {"keep_alive": True, "extra": (b"Retry-After: 1\r\n",)},
        [
            b"HTTP/1.1 409 Conflict",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Retry-After: 1",
            body_line(Reason.WEBHOOK_IN_PROGRESS),
            b"Connection: keep-alive",
        ],
    ),
    (
        "a 401 with extra lines still says the token failed",
        Denial(401, Reason.TOKEN_EXPIRED),
        {"keep_alive": True, "token_given": True, "extra": (b"Set-Cookie: a=b\r\n",)},
        [
            b"HTTP/1.1 401 Unauthorized",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b'WWW-Authenticate: Bearer error="invalid_token"',
            b"Set-Cookie: a=b",
            body_line(Reason.TOKEN_EXPIRED),
            b"Connection: keep-alive",
        ],
    ),
    (
        "a status without a standard phrase",
        Denial(599, Reason.UPSTREAM_RESET),
        {"keep_alive": False},
        [
            b"HTTP/1.1 599 Unknown",
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            body_line(Reason.UPSTREAM_RESET),
            b"Connection: close",
        ],
    ),
]


@pytest.mark.parametrize(
    ("description", "answer", "options", "lines"), RENDERED, ids=[c[0] for c in RENDERED]
)
def test_render(
    description: str, answer: Denial, options: dict[str, object], lines: list[bytes]
) -> None:
    raw = render(answer, **options)  # type: ignore[arg-type]
    head, body = head_and_body(raw)
    assert head == lines, description
    assert body == body_of(answer.reason)


def test_rendered_denials_are_kept_per_shape() -> None:
    plain = Denial(401, Reason.TOKEN_INVALID)
    first = render(plain, keep_alive=True)
    assert render(Denial(401, Reason.TOKEN_INVALID), keep_alive=True) is first
    # each part of the shape is part of the key
    assert render(plain, keep_alive=False) != first
    assert render(plain, keep_alive=True, token_given=True) != first
    assert render(Denial(401, Reason.TOKEN_EXPIRED), keep_alive=True) != first
    assert render(Denial(403, Reason.TOKEN_INVALID), keep_alive=True) != first
    # a Location or extra lines are never cached under the plain shape
    located = Denial(401, Reason.TOKEN_INVALID, "https://a.example/")
    assert b"Location: https://a.example/" in render(located, keep_alive=True)
    assert render(plain, keep_alive=True) is first
    assert b"X-A: 1" in render(plain, keep_alive=True, extra=(b"X-A: 1\r\n",))
    assert render(plain, keep_alive=True) is first


REFUSALS = [
    # (description, reason, status line)
    ("a malformed request", Reason.REQUEST_MALFORMED, b"HTTP/1.1 400 Bad Request"),
    (
        "a header too large",
        Reason.REQUEST_HEADER_TOO_LARGE,
        b"HTTP/1.1 431 Request Header Fields Too Large",
    ),
    ("a slow head", Reason.REQUEST_HEAD_TIMEOUT, b"HTTP/1.1 408 Request Timeout"),
]


@pytest.mark.parametrize(
    ("description", "reason", "status"), REFUSALS, ids=[c[0] for c in REFUSALS]
)
def test_refusals_close_the_connection(description: str, reason: Reason, status: bytes) -> None:
    head, body = head_and_body(refusal(reason))
    assert head[0] == status, description
    assert head[-1] == b"Connection: close"
    assert json.loads(body)["reason"] == reason.value
