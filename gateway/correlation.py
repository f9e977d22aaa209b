"""Request ids and W3C trace context: what ties a request's access line to the upstream's
logs, to its trace, and to what the client was told.

Every request gets a request id: a trusted proxy's `X-Request-Id` when it is a sane token,
else one made here. The upstream receives it as `X-Request-Id` (a client's own never reaches
it: an upstream that logs it must be able to believe it), the client gets it back on every
response, and the access line carries it. Made ids are a random per-process prefix and a
counter: unique without a syscall or fresh entropy per request.

A forwarded request also belongs to a trace (https://www.w3.org/TR/trace-context/): a
valid incoming `traceparent` is forwarded unchanged (with its `tracestate`); an absent or
invalid one is replaced by a new one, the gateway being the trace's root. A made
traceparent is flagged sampled: the gateway records no spans itself, and an upstream that
follows its parent's sampling decision would otherwise trace nothing that came through the
gateway. Trace ids are random (samplers read their bits), from a per-process generator
seeded by the OS: cheap, and nothing here needs to be unguessable. A request the gateway
answers itself begins no trace (no one else would ever see it): its log line names the
incoming trace, if any.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from binascii import hexlify
from typing import Protocol

MAX_REQUEST_ID = 128
# Printable ASCII but space, quote and backslash: safe in a header, in a log line unescaped
# (JSON), in any upstream's log format.
_TOKEN = bytes(c for c in range(0x21, 0x7F) if c not in b'"\\')
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACEPARENT_LEN = 55
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16


class Correlated(Protocol):
    """What `correlate` reads and sets (the engine's exchange); b"": none sent."""

    request_id: bytes
    traceparent: bytes
    tracestate: bytes | None


class _Ids:
    """The per-process generator state: a prefix and a counter for request ids, a random
    generator for trace ids; both made anew in a forked child, which must not repeat its
    parent's ids."""

    __slots__ = ("count", "prefix", "random_bits")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(6).hex().encode("ascii")
        self.count = itertools.count(1)
        # ids, not secrets: Mersenne Twister is fast, and seeded from the OS
        self.random_bits = random.Random(os.urandom(32)).getrandbits  # noqa: S311


_IDS = _Ids()
os.register_at_fork(after_in_child=_IDS.reseed)


def new_request_id() -> bytes:
    """`<12 hex: this process><8+ hex: a counter>`."""
    return b"%s%08x" % (_IDS.prefix, next(_IDS.count))


def new_traceparent() -> bytes:
    """A version-00 traceparent with random trace and parent ids, sampled. (An id of
    zeros, which would be invalid, has a chance of 2**-64 at most: not worth a branch.)"""
    digits = hexlify(_IDS.random_bits(192).to_bytes(24, "little"))  # int formatting is slower
    return b"".join((b"00-", digits[:32], b"-", digits[32:], b"-01"))


def sane_request_id(value: bytes) -> bool:
    """A token worth keeping: 1 to MAX_REQUEST_ID printable characters, no space, no quote
    or backslash."""
    return 0 < len(value) <= MAX_REQUEST_ID and not value.translate(None, _TOKEN)


def valid_traceparent(value: bytes) -> bool:
    """W3C trace context, level 1: `version-traceid-parentid-flags` in lower-case hex;
    version ff is invalid, a trace or parent id of zeros too. A later version may append
    fields after a dash, which version 00 may not."""
    if _TRACEPARENT.match(value) is None or value[:2] == b"ff":
        return False
    if len(value) != _TRACEPARENT_LEN and (value[:2] == b"00" or value[55:56] != b"-"):
        return False
    return value[3:35] != _ZERO_TRACE and value[36:52] != _ZERO_PARENT


def correlate(request: Correlated, trusted: bool) -> None:
    """Settle the request's id and what it says of its trace: what `headers.scan` read,
    kept when believable. The id is made here when not; a trace, only when the request is
    forwarded (`traced`)."""
    if not trusted or not sane_request_id(request.request_id):
        request.request_id = new_request_id()
    traceparent = request.traceparent
    if not traceparent or not valid_traceparent(traceparent):
        request.traceparent = b""
        request.tracestate = None  # it described a trace not continued


def traced(request: Correlated) -> bytes:
    """The traceparent a forwarded request carries: its own, or a new trace's."""
    traceparent = request.traceparent
    if not traceparent:
        traceparent = request.traceparent = new_traceparent()
    return traceparent


def trace_id(traceparent: bytes) -> str:
    return traceparent[3:35].decode("ascii")
