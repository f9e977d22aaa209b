"""Strip-then-inject, the security-critical header rewrite, as a table.

Every row compares the whole list sent upstream (order and duplicates included), so a
client's second X-Forwarded-For or a header that survives in another spelling shows."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.correlation import correlate
from gateway.headers import (
    _ACTIONS_CACHED,
    DROP,
    KEEP,
    HeaderRules,
    client_address,
    connection_tokens,
    forwarded_lines,
    replace_cookie,
    requested_host,
    safe_value,
    scan,
    upstream_head,
)
from gateway.model import IdentityHeaders

CLIENT = "198.51.100.7"
# (identity header names, strip_headers): the rules are built inside each test, so that
# nothing a test relies on was computed when the module was imported
Names = tuple[tuple[str, ...], tuple[str, ...]]
DEFAULTS: Names = (tuple(IdentityHeaders().names()), ())
CUSTOM: Names = (tuple(IdentityHeaders(user_id="X-Remote-User").names()), ("X-Internal-Token",))


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
    reserved: Names = DEFAULTS,
    identity: tuple[tuple[str, str], ...] = (),
    host_override: str | None = None,
    cookie: str | None = None,
) -> list[tuple[str, str]]:
    """The header lines sent upstream for `incoming`, in order, as (name, value); `cookie`:
    the Cookie the upstream gets instead of the client's (the handshake's cookies kept)."""
    request = Request()
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in incoming]
    if not any(n.lower() == b"host" for n, _ in headers):
        headers.insert(0, (b"Host", b"app.example.com"))
    scan(headers, HeaderRules(*reserved), trusted, request)
    correlate(request, trusted)  # as the engine does
    if cookie is not None:
        replace_cookie(request, cookie.encode("latin-1"))
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
        "'close' in Connection names no header",
        [("Connection", "close"), ("Close", "1"), ("Keep-Alive", "timeout=5"), ("Upgrade", "h2c")],
        {},
        [("Close", "1"), *TAIL],
    ),
    (
        "a header after a stripped one is kept",
        [("Keep-Alive", "x"), ("X-Clerk-User-Id", "u"), ("X-A", "1")],
        {},
        [("X-A", "1"), *TAIL],
    ),
    (
        "the headers the gateway reads are forwarded in place, but request id and trace",
        [
            ("Authorization", "Bearer t"),
            ("Cookie", "a=1"),
            ("User-Agent", "curl/8"),
            ("X-Request-Id", "r1"),
            ("traceparent", "00-1-2-01"),
            ("Cookie", "b=2"),
        ],
        {},
        [
            ("Authorization", "Bearer t"),
            ("Cookie", "a=1"),
            ("User-Agent", "curl/8"),
            ("Cookie", "b=2"),
            *TAIL,  # the gateway's own id (a client's), a new trace (an invalid one)
        ],
    ),
    (
        "a configured identity name in any spelling, default names too",
        [("x-clerk-user-id", "u"), ("X-Remote-User", "r")],
        {},
        [("X-Remote-User", "r"), *TAIL],
    ),
    (
        "names listed in Connection, spaces and case",
        [("Connection", " X-A , x-b "), ("X-A", "1"), ("X-B", "2")],
        {},
        TAIL,
    ),
    (
        "a name listed in Connection between two kept headers",
        [("Connection", "X-Hop"), ("X-A", "1"), ("X-Hop", "2"), ("X-B", "3")],
        {},
        [("X-A", "1"), ("X-B", "3"), *TAIL],
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
        "the client's Cookie headers, in any spelling, replaced by one, after the others",
        [
            ("Accept", "a"),
            ("Cookie", "__clerk_db_jwt=d; a=1"),
            ("X-A", "1"),
            ("cookie", "b=2"),
            ("COOKIE", "c=3"),
            ("X-B", "2"),
        ],
        {"cookie": "a=1; b=2; c=3"},
        [("Accept", "a"), ("X-A", "1"), ("X-B", "2"), ("Cookie", "a=1; b=2; c=3"), *TAIL],
    ),
    (
        "a replaced Cookie header with the client's only one",
        [("Cookie", "__clerk_db_jwt=d; a=1")],
        {"cookie": "a=1"},
        [("Cookie", "a=1"), *TAIL],
    ),
    (
        "no cookie left for the upstream: no Cookie header at all",
        [("Cookie", "__clerk_db_jwt=d"), ("X-A", "1"), ("Cookie", "__client_uat=0")],
        {"cookie": ""},
        [("X-A", "1"), *TAIL],
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


CODING = "a transfer-coding other than one 'chunked'"


@pytest.mark.parametrize(
    ("incoming", "message"),
    [
        ([("Host", "a.example"), ("Host", "b.example")], "two Host headers"),
        (
            [("Authorization", "Bearer a"), ("authorization", "Bearer b")],
            "two Authorization headers",
        ),
        ([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], CODING),
        ([("Transfer-Encoding", "gzip, chunked")], CODING),
    ],
    ids=["two Host", "two Authorization", "two Transfer-Encoding", "a coding besides chunked"],
)
def test_heads_whose_meaning_depends_on_the_reader_are_refused(
    incoming: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(ValueError, match=r"Host|Authorization|transfer-coding") as refused:
        forward(incoming)
    assert str(refused.value) == message


FIELDS = (
    "host",
    "authorization",
    "cookie",
    "content_length",
    "transfer_encoding",
    "connection",
    "expect",
    "upgrade_to",
    "forwarded",
    "request_id",
    "traceparent",
    "user_agent",
)

READS = [
    # (description, incoming, trusted, the fields set (every other stays unset))
    ("nothing but Host", [("Host", "a.example")], False, {"host": b"a.example"}),
    ("Authorization", [("authorization", "Bearer t")], False, {"authorization": b"Bearer t"}),
    (
        "two Cookie headers joined",
        [("Cookie", "a=1"), ("cookie", "b=2")],
        False,
        {"cookie": b"a=1; b=2"},
    ),
    ("framing", [("Content-Length", "5")], False, {"content_length": b"5"}),
    ("chunked", [("Transfer-Encoding", " Chunked ")], False, {"transfer_encoding": b" Chunked "}),
    (
        "two Connection headers joined",
        [("Connection", "a"), ("Connection", "b")],
        False,
        {"connection": b"a,b"},
    ),
    ("Expect", [("Expect", "100-continue")], False, {"expect": b"100-continue"}),
    ("Upgrade", [("Upgrade", "websocket")], False, {"upgrade_to": b"websocket"}),
    ("request id", [("X-Request-ID", "r1")], False, {"request_id": b"r1"}),
    ("trace context", [("Traceparent", "00-a-b-01")], False, {"traceparent": b"00-a-b-01"}),
    ("user agent", [("User-Agent", "curl/8")], False, {"user_agent": b"curl/8"}),
    ("X-Forwarded-* from a client are not read", [("X-Forwarded-For", "1.1.1.1")], False, {}),
    (
        "X-Forwarded-* from a trusted proxy, in order",
        [
            ("X-Forwarded-Host", "h.example"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-Proto", "https"),
        ],
        True,
        {"forwarded": [(13, b"h.example"), (11, b"1.1.1.1"), (12, b"https")]},
    ),
]


@pytest.mark.parametrize(
    ("description", "incoming", "trusted", "expected"), READS, ids=[c[0] for c in READS]
)
def test_what_scan_reads(
    description: str, incoming: list[tuple[str, str]], trusted: bool, expected: dict[str, object]
) -> None:
    request = Request()
    headers = [(n.encode(), v.encode()) for n, v in incoming]
    scan(headers, HeaderRules(*DEFAULTS), trusted, request)
    got = {f: getattr(request, f) for f in FIELDS if getattr(request, f) not in (None, b"")}
    assert got == expected, description


ENGINE_READS = [
    ("X-Request-Id", "from-the-client"),
    ("User-Agent", "from-the-client"),
    ("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("Tracestate", "from=the-client"),
    ("Expect", "100-continue"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("Forwarded", "for=203.0.113.9"),
]


@pytest.mark.parametrize("trusted", [False, True])
def test_strip_headers_drop_names_the_engine_reads_before_it_reads_them(trusted: bool) -> None:
    """A stripped name is as if never sent: not read (no request id, trace, Expect or
    forwarding facts believed) and not forwarded, in any spelling, even from a proxy."""
    request = Request()
    stripped = ((), tuple(name for name, _ in ENGINE_READS))
    sent = [(b"Host", b"a.example")] + [
        (spelling(n).encode(), v.encode()) for n, v in ENGINE_READS for spelling in SPELLINGS
    ]
    scan(sent, HeaderRules(*stripped), trusted, request)
    got = {f: getattr(request, f) for f in FIELDS if getattr(request, f) not in (None, b"")}
    assert got == {"host": b"a.example"}
    assert request.kept == []


SPELLINGS = (str, str.lower, str.upper, lambda n: n.replace("-", "_"))


def test_strip_headers_never_take_the_framing_or_the_credentials() -> None:
    """`check` refuses these in strip_headers; the rules keep reading them anyway, so the
    framing of a request never depends on a policy file."""
    request = Request()
    listed = ((), ("Host", "Content-Length", "Transfer-Encoding", "Authorization", "Cookie"))
    sent = [
        (b"Host", b"a.example"),
        (b"Content-Length", b"2"),
        (b"Authorization", b"Bearer t"),
        (b"Cookie", b"a=1"),
    ]
    scan(sent, HeaderRules(*listed), False, request)
    assert (request.host, request.content_length) == (b"a.example", b"2")
    assert (request.authorization, request.cookie) == (b"Bearer t", b"a=1")


def test_the_client_values_of_stripped_names_never_reach_the_upstream() -> None:
    stripped = ((), tuple(name for name, _ in ENGINE_READS))
    for trusted in (False, True):
        sent = forward(ENGINE_READS, trusted=trusted, reserved=stripped)
        assert sent == TAIL, trusted  # the gateway's own id, trace and X-Forwarded-*


FORWARDED = [
    # (description, trusted proxy's X-Forwarded-* headers, (For, Proto, Host))
    ("none: from the connection", [], (CLIENT, "http", "app.example.com")),
    (
        "a chain appended to",
        [("X-Forwarded-For", "1.1.1.1, 2.2.2.2")],
        (f"1.1.1.1, 2.2.2.2, {CLIENT}", "http", "app.example.com"),
    ),
    (
        "the first Proto and Host",
        [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "a"),
            ("X-Forwarded-Proto", "ws"),
            ("X-Forwarded-Host", "b"),
        ],
        (CLIENT, "https", "a"),
    ),
    ("Proto only", [("X-Forwarded-Proto", "https")], (CLIENT, "https", "app.example.com")),
]


@pytest.mark.parametrize(
    ("description", "incoming", "expected"), FORWARDED, ids=[c[0] for c in FORWARDED]
)
def test_forwarded_lines(
    description: str, incoming: list[tuple[str, str]], expected: tuple[str, str, str]
) -> None:
    request = Request()
    headers = [(b"Host", b"app.example.com")] + [(n.encode(), v.encode()) for n, v in incoming]
    scan(headers, HeaderRules(*DEFAULTS), True, request)
    got = forwarded_lines(request, CLIENT.encode(), b"http")
    assert got == tuple(v.encode() for v in expected), description


PROXIES = [ipaddress.ip_network("10.0.0.0/8")]
PEER = "10.1.2.3"  # the trusted proxy in front of the gateway
# what a trusted proxy sent besides X-Forwarded-For: read by `scan` into the same list
PROXY_FACTS = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "app.example.org")]


def a_proxy(address: str) -> bool:
    try:
        return any(ipaddress.ip_address(address) in net for net in PROXIES)
    except ValueError:
        return False


def proxy_said(incoming: list[tuple[str, str]]) -> list[tuple[int, bytes]]:
    """What `scan` keeps of a trusted proxy's X-Forwarded-* headers, in order."""
    request = Request()
    headers = [(b"Host", b"app.example.com")]
    headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in incoming]
    scan(headers, HeaderRules(*DEFAULTS), True, request)
    assert request.forwarded is not None
    return request.forwarded


CLIENTS = [
    # (description, a trusted proxy's X-Forwarded-For lines, the client's address)
    ("no X-Forwarded-For: the peer", [], PEER),
    ("one hop: the address the proxy saw", ["203.0.113.9"], "203.0.113.9"),
    (
        "a client's own X-Forwarded-For is not believed",
        ["198.51.100.1, 203.0.113.9"],
        "203.0.113.9",
    ),
    ("proxies in a row: the first that is not one", ["203.0.113.9, 10.0.0.7"], "203.0.113.9"),
    ("a comma without a space", ["198.51.100.1,203.0.113.9,10.0.0.7"], "203.0.113.9"),
    ("two header lines, read as one list", ["198.51.100.1", "203.0.113.9"], "203.0.113.9"),
    ("two header lines, a proxy on the second", ["203.0.113.9", "10.0.0.7"], "203.0.113.9"),
    ("empty items skipped, the nearest last", ["203.0.113.9, , "], "203.0.113.9"),
    ("nothing but empty items: the peer", [" , "], PEER),
    ("every hop a trusted proxy: the farthest", ["10.0.0.5, 10.0.0.7"], "10.0.0.5"),
    ("what a proxy wrote, as written", ["unknown"], "unknown"),
    ("IPv6", ["2001:db8::1"], "2001:db8::1"),
    ("a byte beyond ASCII, as Latin-1", ["caf\xe9"], "caf\xe9"),
]


@pytest.mark.parametrize(("description", "lines", "client"), CLIENTS, ids=[r[0] for r in CLIENTS])
def test_the_client_address(description: str, lines: list[str], client: str) -> None:
    """Walked from our side over what `scan` read of a trusted proxy's headers, the
    X-Forwarded-Proto and -Host among them (never read as addresses)."""
    sent = [*PROXY_FACTS, *(("X-Forwarded-For", line) for line in lines)]
    assert client_address(proxy_said(sent), PEER, a_proxy) == client, description


HOSTS = [
    # (description, a trusted proxy's X-Forwarded-* headers, the host the log names)
    (
        "no X-Forwarded-Host: the Host received",
        [("X-Forwarded-For", "203.0.113.9")],
        "app.example.com",
    ),
    (
        "the first X-Forwarded-Host, whatever stands before it",
        [
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "a.example"),
            ("X-Forwarded-Host", "b.example"),
        ],
        "a.example",
    ),
]


@pytest.mark.parametrize(("description", "incoming", "host"), HOSTS, ids=[r[0] for r in HOSTS])
def test_the_requested_host(description: str, incoming: list[tuple[str, str]], host: str) -> None:
    got = requested_host(proxy_said(incoming), b"app.example.com")
    assert got == host.encode(), description


RESERVED = [
    # (description, header name as sent, never sent by a client)
    ("our prefix", "X-Clerk-User-Id", True),
    ("our prefix, folded", "x_clerk.anything", True),
    ("a configured identity name", "X-Remote-User", True),
    ("a configured identity name, folded", "x.remote_USER", True),
    ("a strip_headers name", "x_internal_token", True),
    ("a longer name", "X-Remote-Username", False),
    ("the prefix without its dash", "X-Clerkish", False),
    ("an ordinary header", "Accept", False),
]


@pytest.mark.parametrize(
    ("description", "name", "reserved"), RESERVED, ids=[c[0] for c in RESERVED]
)
def test_is_reserved(description: str, name: str, reserved: bool) -> None:
    assert HeaderRules(*CUSTOM).is_reserved(name.encode()) is reserved, description


@pytest.mark.parametrize(
    ("description", "value", "tokens"),
    [
        ("absent", None, set()),
        ("comma without space", "close,X-Hop", {"close", "x-hop"}),
        ("spaces, case and empty items", " Keep-Alive ,, x-A ,", {"keep-alive", "x-a"}),
    ],
)
def test_connection_tokens(description: str, value: str | None, tokens: set[str]) -> None:
    got = connection_tokens(value.encode() if value is not None else None)
    assert got == {t.encode() for t in tokens}, description


@pytest.mark.parametrize(
    ("description", "value", "safe"),
    [
        ("printable ASCII", "user_1 (admin)", True),
        ("empty", "", True),
        ("CR LF", "a\r\nX-Clerk-Role: admin", False),
        ("a tab", "a\tb", False),
        ("non-ASCII", "caf\u00e9", False),
        ("DEL", "a\x7f", False),
    ],
)
def test_safe_value(description: str, value: str, safe: bool) -> None:
    assert safe_value(value) is safe, description


def test_the_upstream_head_with_nothing_added() -> None:
    request = Request()
    scan(
        [(b"Host", b"app.example.com"), (b"Accept", b"*/*")], HeaderRules(*DEFAULTS), False, request
    )
    request.request_id, request.traceparent = b"r1", TRACEPARENT.encode()  # as correlated
    assert upstream_head(request, b"/x?y", b"10.0.0.1", b"https") == (
        b"GET /x?y HTTP/1.1\r\n"
        b"Accept: */*\r\n"
        b"Host: app.example.com\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: app.example.com\r\n"
        b"X-Request-Id: r1\r\n"
        b"traceparent: " + TRACEPARENT.encode() + b"\r\n"
        b"\r\n"
    )


def test_the_upstream_head_with_identity_and_framing() -> None:
    request = Request()
    request.method = b"POST"
    scan([(b"Host", b"app.example.com")], HeaderRules(*DEFAULTS), False, request)
    request.request_id, request.traceparent = b"r1", TRACEPARENT.encode()
    request.tracestate = b"v=1"
    head = upstream_head(
        request,
        b"/x",
        b"10.0.0.1",
        b"http",
        b"upstream:8080",
        b"X-Clerk-User-Id: user_1\r\n",
        b"Content-Length: 2\r\n",
    )
    assert head == (
        b"POST /x HTTP/1.1\r\n"
        b"Host: upstream:8080\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: app.example.com\r\n"
        b"X-Request-Id: r1\r\n"
        b"traceparent: " + TRACEPARENT.encode() + b"\r\n"
        b"tracestate: v=1\r\n"
        b"X-Clerk-User-Id: user_1\r\n"
        b"Content-Length: 2\r\n"
        b"\r\n"
    )


def test_the_verdict_per_name_is_remembered_used_and_bounded() -> None:
    """The verdict cache: what `action` and `scan` decide by (a name's remembered verdict
    wins over classifying it again), and bounded, so a flood of made-up names is
    classified each time rather than remembered."""
    rules = HeaderRules([])
    assert rules.action(b"X-Custom") == KEEP
    assert rules.known[b"X-Custom"] == KEEP
    rules.known[b"X-Seeded"] = DROP  # a verdict remembered: it is the one used
    assert rules.action(b"X-Seeded") == DROP
    into = Request()
    scan([(b"X-Seeded", b"v"), (b"X-Custom", b"w")], rules, False, into)
    assert into.kept == [b"X-Custom", b": ", b"w", b"\r\n"]
    for i in range(_ACTIONS_CACHED + 100):
        assert rules.action(b"X-Flood-%d" % i) == KEEP
    assert len(rules.known) == _ACTIONS_CACHED
