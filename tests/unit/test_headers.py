"""Strip-then-inject, the security-critical header rewrite, as a table.

Every row compares the whole list sent upstream (order and duplicates included), so a
client's second X-Forwarded-For or a header that survives in another spelling shows."""

from __future__ import annotations

import pytest

from gateway.correlation import correlate
from gateway.headers import HeaderRules, scan, upstream_head
from gateway.model import IdentityHeaders

CLIENT = "198.51.100.7"
DEFAULTS = HeaderRules(IdentityHeaders().names())
CUSTOM = HeaderRules(IdentityHeaders(user_id="X-Remote-User").names(), ("X-Internal-Token",))


class Request:
    """What the engine's exchange offers `scan` and `upstream_head`."""

    method = b"GET"
    host = b""
    authorization: bytes | None = None
    cookie: bytes | None = None
    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    connection: bytes | None = None
    expect: bytes | None = None
    upgrade_to: bytes | None = None
    forwarded: list[tuple[int, bytes]] | None = None
    request_id = b""
    traceparent = b""
    tracestate: bytes | None = None
    user_agent: bytes | None = None

    def __init__(self) -> None:
        self.kept: list[bytes] = []


def forward(
    incoming: list[tuple[str, str]],
    *,
    trusted: bool = False,
    reserved: HeaderRules = DEFAULTS,
    identity: tuple[tuple[str, str], ...] = (),
    host_override: str | None = None,
) -> list[tuple[str, str]]:
    """The header lines sent upstream for `incoming`, in order, as (name, value)."""
    request = Request()
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in incoming]
    if not any(n.lower() == b"host" for n, _ in headers):
        headers.insert(0, (b"Host", b"app.example.com"))
    scan(headers, reserved, trusted, request)
    correlate(request, trusted)  # as the engine does
    head = upstream_head(
        request,
        b"/x",
        CLIENT.encode(),
        b"http",
        host_override.encode() if host_override else None,
        b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in identity),
    )
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "GET /x HTTP/1.1"
    assert lines[-2:] == ["", ""]
    sent = [(n, v.lstrip(" ")) for n, _, v in (line.partition(":") for line in lines[1:-2])]
    received = {v for n, v in incoming}
    return [(n, MADE if n in MADE_HERE and v not in received else v) for n, v in sent]


MADE = "<made by the gateway>"
MADE_HERE = ("X-Request-Id", "traceparent")
CORRELATION = [("X-Request-Id", MADE), ("traceparent", MADE)]
TAIL = [
    ("Host", "app.example.com"),
    ("X-Forwarded-For", CLIENT),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Host", "app.example.com"),
    *CORRELATION,
]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

ROWS = [
    # (description, incoming, options, expected)
    (
        "plain headers pass in order",
        [("Accept", "a"), ("X-A", "1"), ("X-A", "2")],
        {},
        [("Accept", "a"), ("X-A", "1"), ("X-A", "2"), *TAIL],
    ),
    (
        "x-clerk- prefix in any case",
        [("x-CLERK-user-id", "u"), ("X-Clerk-Anything", "v")],
        {},
        TAIL,
    ),
    (
        "x-clerk- with underscores and dots",
        [("X_Clerk_Role", "admin"), ("X.Clerk.User.Id", "u"), ("x~clerk~org", "o")],
        {},
        TAIL,
    ),
    (
        "x-clerk- stripped from a trusted proxy too",
        [("X-Clerk-User-Id", "u")],
        {"trusted": True},
        TAIL,
    ),
    (
        "a configured identity name, folded",
        [("X-Remote-User", "a"), ("x_remote_user", "b"), ("X.REMOTE.USER", "c")],
        {"reserved": CUSTOM},
        TAIL,
    ),
    (
        "strip_headers names",
        [("X-Internal-Token", "t"), ("x_internal_token", "t")],
        {"reserved": CUSTOM},
        TAIL,
    ),
    (
        "a name that only starts like one is kept",
        [("X-Remote-Username", "a")],
        {"reserved": CUSTOM},
        [("X-Remote-Username", "a"), *TAIL],
    ),
    (
        "X-Clerk without the dash is not ours",
        [("X-Clerkish", "1")],
        {},
        [("X-Clerkish", "1"), *TAIL],
    ),
    (
        "every hop-by-hop header",
        [
            (n, "chunked" if n == "Transfer-Encoding" else "x")
            for n in (
                "Connection",
                "Keep-Alive",
                "Proxy-Authenticate",
                "Proxy-Authorization",
                "Proxy-Connection",
                "TE",
                "Trailer",
                "Transfer-Encoding",
                "Upgrade",
            )
        ],
        {},
        TAIL,
    ),
    (
        "names listed in Connection, comma without space",
        [("Connection", "close,X-Hop"), ("X-Hop", "1"), ("X-Keep", "2")],
        {},
        [("X-Keep", "2"), *TAIL],
    ),
    (
        "names listed in Connection, spaces and case",
        [("Connection", " X-A , x-b "), ("X-A", "1"), ("X-B", "2")],
        {},
        TAIL,
    ),
    (
        "names listed in two Connection headers",
        [("Connection", "X-A"), ("Connection", "X-B"), ("X-A", "1"), ("X-B", "2")],
        {},
        TAIL,
    ),
    (
        "framing and expectations are the gateway's",
        [("Content-Length", "5"), ("Expect", "100-continue")],
        {},
        TAIL,
    ),
    (
        "the client's Host is forwarded as sent",
        [("Host", "other.example")],
        {},
        [
            ("Host", "other.example"),
            ("X-Forwarded-For", CLIENT),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "other.example"),
            *CORRELATION,
        ],
    ),
    (
        "Host rewritten for the upstream",
        [],
        {"host_override": "upstream:4000"},
        [("Host", "upstream:4000"), *TAIL[1:]],
    ),
    (
        "X-Forwarded-* from an untrusted client, twice each",
        [
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-For", "2.2.2.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil"),
            ("Forwarded", "for=1.1.1.1"),
        ],
        {},
        TAIL,
    ),
    (
        "X-Forwarded-For from a trusted proxy is appended to",
        [("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2")],
        {"trusted": True},
        [
            ("Host", "app.example.com"),
            ("X-Forwarded-For", f"1.1.1.1, 2.2.2.2, {CLIENT}"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "app.example.com"),
            *CORRELATION,
        ],
    ),
    (
        "proto and host from a trusted proxy, first value",
        [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "app.example.org"),
        ],
        {"trusted": True},
        [
            ("Host", "app.example.com"),
            ("X-Forwarded-For", CLIENT),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "app.example.org"),
            *CORRELATION,
        ],
    ),
    (
        "Forwarded from a trusted proxy is kept",
        [("Forwarded", "for=1.1.1.1")],
        {"trusted": True},
        [("Forwarded", "for=1.1.1.1"), *TAIL],
    ),
    (
        "override headers from an untrusted client",
        [
            (n, "/admin")
            for n in (
                "X-Original-URL",
                "X-Rewrite-URL",
                "X-HTTP-Method-Override",
                "X-HTTP-Method",
                "X-Method-Override",
                "X-Real-IP",
                "True-Client-IP",
                "X-Forwarded-Prefix",
                "X-Forwarded-Port",
                "X-Forwarded-Ssl",
                "X-Forwarded-Server",
                "X-Forwarded-Scheme",
                "x_original_url",
            )
        ],
        {},
        TAIL,
    ),
    (
        "override headers from a trusted proxy are kept",
        [("X-Real-IP", "1.1.1.1"), ("X-Forwarded-Port", "443")],
        {"trusted": True},
        [("X-Real-IP", "1.1.1.1"), ("X-Forwarded-Port", "443"), *TAIL],
    ),
    (
        "a client's X-Request-Id never reaches the upstream",
        [("X-Request-Id", "forged-by-the-client"), ("x_request_id", "also")],
        {},
        TAIL,
    ),
    (
        "a trusted proxy's X-Request-Id is forwarded, once",
        [("X-Request-Id", "req-7f3a/1:ab"), ("X-Request-Id", "second")],
        {"trusted": True},
        [*TAIL[:4], ("X-Request-Id", "req-7f3a/1:ab"), ("traceparent", MADE)],
    ),
    *(
        (
            f"a trusted proxy's X-Request-Id that is not a sane token: {why}",
            [("X-Request-Id", value)],
            {"trusted": True},
            TAIL,
        )
        for why, value in [
            ("a space", "a b"),
            ("a quote", 'a"b'),
            ("a backslash", "a\\b"),
            ("a control character", "a\tb"),
            ("not ASCII", "caf\xe9"),
            ("over 128 characters", "x" * 129),
            ("empty", ""),
        ]
    ),
    (
        "a valid traceparent and its tracestate are forwarded unchanged",
        [("traceparent", TRACEPARENT), ("tracestate", "a=1"), ("TraceState", "b=2")],
        {},
        [*TAIL[:-1], ("traceparent", TRACEPARENT), ("tracestate", "a=1,b=2")],
    ),
    (
        "a later version with more fields is forwarded unchanged",
        [("traceparent", "01" + TRACEPARENT[2:] + "-what-comes-next")],
        {},
        [*TAIL[:-1], ("traceparent", "01" + TRACEPARENT[2:] + "-what-comes-next")],
    ),
    *(
        (
            f"an invalid traceparent starts a new trace, its tracestate dropped: {why}",
            [*headers, ("tracestate", "a=1")],
            {},
            TAIL,
        )
        for why, headers in [
            ("upper case", [("traceparent", TRACEPARENT.upper())]),
            ("version ff", [("traceparent", "ff" + TRACEPARENT[2:])]),
            ("a trace id of zeros", [("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01")]),
            ("a parent id of zeros", [("traceparent", TRACEPARENT[:36] + "0" * 16 + "-01")]),
            ("version 00 with more", [("traceparent", TRACEPARENT + "-x")]),
            ("short", [("traceparent", TRACEPARENT[:-1])]),
            ("two of them", [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)]),
        ]
    ),
    (
        "identity is added after the strip",
        [("X-Clerk-User-Id", "forged")],
        {"identity": (("X-Clerk-User-Id", "user_1"),)},
        [*TAIL, ("X-Clerk-User-Id", "user_1")],
    ),
]


@pytest.mark.parametrize(
    ("description", "incoming", "options", "expected"), ROWS, ids=[r[0] for r in ROWS]
)
def test_upstream_headers(
    description: str,
    incoming: list[tuple[str, str]],
    options: dict[str, object],
    expected: list[tuple[str, str]],
) -> None:
    assert forward(incoming, **options) == expected, description  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "incoming",
    [
        [("Host", "a.example"), ("Host", "b.example")],
        [("Authorization", "Bearer a"), ("authorization", "Bearer b")],
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
        [("Transfer-Encoding", "gzip, chunked")],
    ],
    ids=["two Host", "two Authorization", "two Transfer-Encoding", "a coding besides chunked"],
)
def test_heads_whose_meaning_depends_on_the_reader_are_refused(
    incoming: list[tuple[str, str]],
) -> None:
    with pytest.raises(ValueError, match=r"Host|Authorization|transfer-coding"):
        forward(incoming)
