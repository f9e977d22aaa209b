"""Request headers toward the upstream, on bytes: strip what a client may not say, then inject.

Identity headers are trustworthy only if no client can set them. So on EVERY request,
whatever the route or outcome, any client header that looks like one of ours is removed
first: every name starting with `X-Clerk-`, every configured identity header name and
every `strip_headers` name, compared case-insensitively with every character that is not a
letter or digit read as `-` (CGI and WSGI fold `X_Clerk_User_Id` into the same variable
as `X-Clerk-User-Id`; some frameworks read `X.Clerk.User.Id` alike). A configured name is
removed before the gateway reads it, so a stripped X-Request-Id, User-Agent, traceparent or
Expect is as if never sent (the framing and the credentials cannot be stripped: `check`
refuses them, model.UNSTRIPPABLE). Headers that servers
and frameworks trust to rewrite the URL, the method or the client address are removed too
unless a trusted proxy sent them.

The work is one pass over the header list as llhttp delivered it (bytes, names as sent),
with the decision about each name cached per policy: a name seen before costs one dict
lookup. Kept headers are forwarded byte for byte; the forwarded head is one join.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.correlation import traced
from gateway.model import UNSTRIPPABLE

# What to do with a request header (the cached verdict per name).
KEEP = 0
DROP = 1  # hop-by-hop, reserved (identity), strip_headers
OVERRIDE = 2  # kept only from a trusted proxy
HOST = 3
AUTHORIZATION = 4  # kept, and read
COOKIE = 5  # kept, and read
CONTENT_LENGTH = 6
TRANSFER_ENCODING = 7
CONNECTION = 8
EXPECT = 9
UPGRADE = 10
X_FORWARDED_FOR = 11
X_FORWARDED_PROTO = 12
X_FORWARDED_HOST = 13
FORWARDED = 14
REQUEST_ID = 15  # read, and replaced (correlation.py)
TRACEPARENT = 16  # read, and forwarded only when valid
USER_AGENT = 17  # kept, and read (the access log)
TRACESTATE = 18  # read, and forwarded with a valid traceparent only

RESERVED_PREFIX = b"x-clerk-"
TWO_TRACEPARENTS = b"two"  # what `scan` reads then: invalid, so a new trace begins

# RFC 9110 7.6.1: connection-specific headers never cross a proxy.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)

_NOT_ALNUM = bytes.maketrans(
    bytes(c for c in range(256) if not chr(c).isascii() or not chr(c).isalnum()),
    b"-" * sum(1 for c in range(256) if not chr(c).isascii() or not chr(c).isalnum()),
)


def fold(name: bytes) -> bytes:
    """A header name as the most lenient server reads it: lower case, `-` for the rest."""
    return name.lower().translate(_NOT_ALNUM)


# Read by servers and frameworks as the URL, the method or the client's address: only a
# trusted proxy may send them (contract: "Headers that servers trust").
OVERRIDES = frozenset(
    fold(name)
    for name in (
        b"X-Original-URL",
        b"X-Rewrite-URL",
        b"X-HTTP-Method-Override",
        b"X-HTTP-Method",
        b"X-Method-Override",
        b"X-Real-IP",
        b"True-Client-IP",
        b"X-Forwarded-Prefix",
        b"X-Forwarded-Port",
        b"X-Forwarded-Ssl",
        b"X-Forwarded-Server",
        b"X-Forwarded-Scheme",
    )
)

# Names with a meaning of their own, by their exact lower-case spelling (llhttp reads
# framing by exact name: `content_length` is not a Content-Length, but it is stripped
# below if it folds onto a reserved name).
_SPECIAL = {
    b"host": HOST,
    b"authorization": AUTHORIZATION,
    b"cookie": COOKIE,
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"expect": EXPECT,
    b"upgrade": UPGRADE,
    b"x-forwarded-for": X_FORWARDED_FOR,
    b"x-forwarded-proto": X_FORWARDED_PROTO,
    b"x-forwarded-host": X_FORWARDED_HOST,
    b"forwarded": FORWARDED,
    b"x-request-id": REQUEST_ID,
    b"traceparent": TRACEPARENT,
    b"tracestate": TRACESTATE,
    b"user-agent": USER_AGENT,
}
# `check` refuses them in strip_headers; kept here too, so framing never depends on it
_UNSTRIPPABLE = frozenset(name.encode("latin-1") for name in UNSTRIPPABLE)
_ACTIONS_CACHED = 2048  # distinct names remembered per policy; a flood of others is just slower


class HeaderRules:
    """The verdict on every request header name, for one policy."""

    __slots__ = ("known", "reserved")

    def __init__(self, identity_names: Iterable[str], strip: Iterable[str] = ()) -> None:
        self.reserved = frozenset(fold(n.encode("latin-1")) for n in (*identity_names, *strip))
        self.known: dict[bytes, int] = {}  # the verdict per name as sent

    def action(self, name: bytes) -> int:
        """What to do with a header named `name` (as sent): cached per name."""
        action = self.known.get(name)
        if action is None:
            action = self._classify(name)
            if len(self.known) < _ACTIONS_CACHED:
                self.known[name] = action
        return action

    def _classify(self, name: bytes) -> int:
        lower = name.lower()
        folded = lower.translate(_NOT_ALNUM)
        if folded in self.reserved and folded not in _UNSTRIPPABLE:
            # a configured name is dropped before the engine reads it: a stripped
            # X-Request-Id, User-Agent, traceparent or Expect is as if never sent
            return DROP
        special = _SPECIAL.get(lower)
        if special is not None:
            return special
        if lower in HOP_BY_HOP or folded.startswith(RESERVED_PREFIX):
            return DROP
        if folded == b"x-request-id":
            return DROP  # X_Request_Id is X-Request-Id to CGI and WSGI: the gateway's, only
        if folded in OVERRIDES:
            return OVERRIDE
        return KEEP

    def is_reserved(self, name: bytes) -> bool:
        """Never sent by a client: the `x-clerk-` prefix or a configured name."""
        folded = fold(name)
        return folded.startswith(RESERVED_PREFIX) or folded in self.reserved


class RequestHeaders(Protocol):
    """Where `scan` leaves what it read (the engine's exchange)."""

    method: bytes
    kept: list[bytes]
    host: bytes
    authorization: bytes | None
    cookie: bytes | None
    content_length: bytes | None
    transfer_encoding: bytes | None
    connection: bytes | None
    expect: bytes | None
    upgrade_to: bytes | None
    forwarded: list[tuple[int, bytes]] | None
    request_id: bytes  # b"": none sent
    traceparent: bytes  # b"": none sent
    tracestate: bytes | None
    user_agent: bytes | None


def scan(
    headers: list[tuple[bytes, bytes]], rules: HeaderRules, trusted: bool, into: RequestHeaders
) -> None:
    """One pass over the client's headers: what the gateway reads, and what it forwards
    (strip first; `kept` is a flat list of name, ': ', value, CRLF pieces). Raises
    ValueError for a head whose meaning depends on who reads it (duplicate Host or
    Authorization, a transfer-coding other than chunked): a 400."""
    kept = into.kept
    known = rules.known  # the verdicts so far, asked directly: a call per header costs more
    for name, value in headers:
        action = known.get(name)
        if action is None:
            action = rules.action(name)
        if action == KEEP:
            kept += (name, b": ", value, b"\r\n")
        elif action == DROP:
            continue
        elif action == AUTHORIZATION:
            if into.authorization is not None:
                # the upstream might read the other one than the gateway verified
                raise ValueError("two Authorization headers")
            into.authorization = value
            kept += (name, b": ", value, b"\r\n")
        elif action == HOST:
            if into.host:
                raise ValueError("two Host headers")  # RFC 9112 3.2: a 400
            into.host = value
        elif action == COOKIE:
            into.cookie = value if into.cookie is None else into.cookie + b"; " + value
            kept += (name, b": ", value, b"\r\n")
        elif action == CONTENT_LENGTH:
            into.content_length = value
        elif action == TRANSFER_ENCODING:
            if into.transfer_encoding is not None or value.strip().lower() != b"chunked":
                # "gzip, chunked" and friends: we would not re-encode them faithfully
                raise ValueError("a transfer-coding other than one 'chunked'")
            into.transfer_encoding = value
        elif action == CONNECTION:
            into.connection = value if into.connection is None else into.connection + b"," + value
        elif action == EXPECT:
            into.expect = value
        elif action == UPGRADE:
            into.upgrade_to = value
        elif action in (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST):
            if trusted:
                if into.forwarded is None:
                    into.forwarded = []
                into.forwarded.append((action, value))
        elif action == FORWARDED:
            if trusted:
                kept += (name, b": ", value, b"\r\n")
        elif action == USER_AGENT:
            into.user_agent = value
            kept += (name, b": ", value, b"\r\n")
        elif action == OVERRIDE:
            if trusted:
                kept += (name, b": ", value, b"\r\n")
        elif action == REQUEST_ID:
            if not into.request_id:
                into.request_id = value
        elif action == TRACEPARENT:
            # two are invalid (W3C trace context)
            into.traceparent = TWO_TRACEPARENTS if into.traceparent else value
        elif action == TRACESTATE:
            into.tracestate = value if into.tracestate is None else into.tracestate + b"," + value
    if into.connection is not None:
        _drop_listed(into)


# Connection tokens that name no header of the request (RFC 9110 7.6.1).
_CONNECTION_OPTIONS = frozenset([b"keep-alive", b"close", b"upgrade"])


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    if value is None:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def _drop_listed(into: RequestHeaders) -> None:
    """Names a `Connection` header declares hop-by-hop go too, wherever they stood."""
    listed = connection_tokens(into.connection) - _CONNECTION_OPTIONS
    if not listed:
        return
    kept = into.kept
    into.kept = [
        piece
        for i in range(0, len(kept), 4)
        if kept[i].lower() not in listed
        for piece in kept[i : i + 4]
    ]


def forwarded_lines(
    into: RequestHeaders, client_ip: bytes, proto: bytes
) -> tuple[bytes, bytes, bytes]:
    """X-Forwarded-For / -Proto / -Host values: from the connection, appended to (For) or
    taken from (Proto, Host: the first header) a trusted proxy's."""
    forwarded_for = client_ip
    scheme = proto
    host = into.host
    if into.forwarded:
        chain: list[bytes] = []
        seen_proto = seen_host = False
        for action, value in into.forwarded:
            if action == X_FORWARDED_FOR:
                chain.append(value)
            elif action == X_FORWARDED_PROTO and not seen_proto:
                scheme, seen_proto = value, True
            elif action == X_FORWARDED_HOST and not seen_host:
                host, seen_host = value, True
        if chain:
            forwarded_for = b", ".join([*chain, client_ip])
    return forwarded_for, scheme, host


def requested_host(forwarded: list[tuple[int, bytes]], host: bytes) -> bytes:
    """The host the client asked for, for the log: a trusted proxy's first X-Forwarded-Host
    (as the redirect URLs read it), else the Host received."""
    for action, value in forwarded:
        if action == X_FORWARDED_HOST:
            return value
    return host


def client_address(
    forwarded: list[tuple[int, bytes]], peer: str, trusted: Callable[[str], bool]
) -> str:
    """The client's address: walking a trusted proxy's X-Forwarded-For from our side, the
    first hop that is not itself a trusted proxy. Never the leftmost hop blindly: a client
    writes that one itself, and proxies append to it."""
    values = [value for action, value in forwarded if action == X_FORWARDED_FOR]
    if not values:
        return peer
    farthest = peer
    for hop in reversed(b",".join(values).split(b",")):
        address = hop.strip().decode("latin-1")
        if not address:
            continue
        if not trusted(address):
            return address
        farthest = address
    return farthest  # every hop a trusted proxy: the one farthest away


def upstream_head(
    into: RequestHeaders,
    target: bytes,
    client_ip: bytes,
    proto: bytes,
    host: bytes | None = None,
    identity: bytes = b"",
    framing: bytes = b"",
) -> bytes:
    """The request head sent upstream: the request line, the client's headers as kept by
    `scan` (byte for byte), then ours: Host (the client's unless `host` names the
    upstream), X-Forwarded-*, the request id and trace context (`correlation.py`), the
    identity block and the body framing. One join."""
    if into.forwarded is None:
        forwarded_for, scheme, forwarded_host = client_ip, proto, into.host
    else:
        forwarded_for, scheme, forwarded_host = forwarded_lines(into, client_ip, proto)
    tracestate = into.tracestate
    return b"".join(
        (
            into.method,
            b" ",
            target,
            b" HTTP/1.1\r\n",
            *into.kept,
            b"Host: ",
            host or into.host,
            b"\r\nX-Forwarded-For: ",
            forwarded_for,
            b"\r\nX-Forwarded-Proto: ",
            scheme,
            b"\r\nX-Forwarded-Host: ",
            forwarded_host,
            b"\r\nX-Request-Id: ",
            into.request_id,
            b"\r\ntraceparent: ",
            into.traceparent or traced(into),  # one forwarded without a trace begins one
            b"\r\n" if tracestate is None else b"\r\ntracestate: %s\r\n" % tracestate,
            identity,
            framing,
            b"\r\n",
        )
    )


def replace_cookie(into: RequestHeaders, value: bytes) -> None:
    """The Cookie header(s) the upstream gets replaced by one with `value` (none if empty):
    the handshake's own cookies are the gateway's business, never the upstream's."""
    kept = into.kept
    pieces = [
        piece
        for i in range(0, len(kept), 4)
        if kept[i].lower() != b"cookie"
        for piece in kept[i : i + 4]
    ]
    if value:
        pieces += (b"Cookie", b": ", value, b"\r\n")
    into.kept = pieces


def safe_value(value: str) -> bool:
    """Printable ASCII only: a CR or LF would split the header, other bytes confuse parsers."""
    return value.isascii() and value.isprintable()
