"""Request ids, trace context and the client address a log line names: pure rules, as tables."""

from __future__ import annotations

import ipaddress
import os
import threading

import pytest

from gateway.correlation import (
    new_request_id,
    new_traceparent,
    sane_request_id,
    trace_id,
    valid_traceparent,
)
from gateway.headers import X_FORWARDED_FOR, X_FORWARDED_PROTO, client_address

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

TRACEPARENTS = [
    ("the specification's example", TRACEPARENT, True),
    ("not sampled", TRACEPARENT[:-2] + b"00", True),
    ("a later version, as long", b"cc" + TRACEPARENT[2:], True),
    ("a later version with more fields", b"cc" + TRACEPARENT[2:] + b"-more", True),
    ("a later version, more without a dash", b"cc" + TRACEPARENT[2:] + b"more", False),
    ("version 00 with more fields", TRACEPARENT + b"-more", False),
    ("version ff", b"ff" + TRACEPARENT[2:], False),
    ("upper-case hex", TRACEPARENT.upper(), False),
    ("a trace id of zeros", b"00-" + b"0" * 32 + TRACEPARENT[35:], False),
    ("a parent id of zeros", TRACEPARENT[:36] + b"0" * 16 + b"-01", False),
    ("one digit short", TRACEPARENT[:-1], False),
    ("a space inside", TRACEPARENT[:20] + b" " + TRACEPARENT[21:], False),
    ("underscores for dashes", TRACEPARENT.replace(b"-", b"_"), False),
    ("empty (none sent)", b"", False),
]


@pytest.mark.parametrize(
    ("description", "value", "valid"), TRACEPARENTS, ids=[r[0] for r in TRACEPARENTS]
)
def test_traceparents(description: str, value: bytes, valid: bool) -> None:
    assert valid_traceparent(value) is valid, description


REQUEST_IDS = [
    ("a UUID", b"2b1c9a1e-4c1f-4e0a-9f53-6a0b1d2c3e4f", True),
    ("nginx's $request_id", b"7b1c0f8e6d2a4b3c9e5f1a2b3c4d5e6f", True),
    ("punctuation an id may hold", b"req/1:ab.c_d+e=f@g", True),
    ("128 characters", b"x" * 128, True),
    ("129 characters", b"x" * 129, False),
    ("empty", b"", False),
    ("a space", b"a b", False),
    ("a tab", b"a\tb", False),
    ("a quote (the log line is JSON)", b'a"b', False),
    ("a backslash", b"a\\b", False),
    ("a byte over 0x7e", b"caf\xe9", False),
    ("DEL", b"a\x7f", False),
]


@pytest.mark.parametrize(
    ("description", "value", "sane"), REQUEST_IDS, ids=[r[0] for r in REQUEST_IDS]
)
def test_request_ids_worth_keeping(description: str, value: bytes, sane: bool) -> None:
    assert sane_request_id(value) is sane, description


def test_made_ids_are_valid_distinct_and_say_their_trace() -> None:
    parents = {new_traceparent() for _ in range(1000)}
    assert len(parents) == 1000
    assert all(valid_traceparent(p) and p.endswith(b"-01") for p in parents)
    assert len({trace_id(p) for p in parents}) == 1000
    assert trace_id(TRACEPARENT) == "4bf92f3577b34da6a3ce929d0e0e4736"
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(sane_request_id(i) and len(i) == 20 for i in ids)
    assert len({i[:12] for i in ids}) == 1  # one process, one prefix: a counter after it


def test_a_forked_child_makes_ids_of_its_own() -> None:
    """Workers are spawned, but a fork must not repeat its parent's ids either."""
    if threading.active_count() > 1:
        pytest.skip("forking a process with threads is unsafe (and warned about)")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave at once
        os.write(write, new_request_id() + b" " + new_traceparent())
        os._exit(0)
    os.close(write)
    child_id, child_parent = os.read(read, 200).split(b" ")
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id[:12] != new_request_id()[:12]
    assert trace_id(child_parent) != trace_id(new_traceparent())


TRUSTED = [ipaddress.ip_network("10.0.0.0/8")]


def trusted(address: str) -> bool:
    try:
        return any(ipaddress.ip_address(address) in net for net in TRUSTED)
    except ValueError:
        return False


PEER = "10.1.2.3"  # the ingress in front of the gateway

CLIENTS = [
    ("no X-Forwarded-For: the peer", [], PEER),
    ("one hop: the address the proxy saw", [b"203.0.113.9"], "203.0.113.9"),
    (
        "a client's own X-Forwarded-For is not believed",
        [b"198.51.100.1, 203.0.113.9"],
        "203.0.113.9",
    ),
    ("proxies in a row: the first that is not one", [b"203.0.113.9, 10.0.0.7"], "203.0.113.9"),
    ("two header lines, read as one list", [b"198.51.100.1", b"203.0.113.9"], "203.0.113.9"),
    ("empty items skipped", [b"203.0.113.9, , "], "203.0.113.9"),
    ("every hop a trusted proxy: the farthest", [b"10.0.0.5, 10.0.0.7"], "10.0.0.5"),
    ("what a proxy wrote, as written", [b"unknown"], "unknown"),
    ("IPv6", [b"2001:db8::1"], "2001:db8::1"),
]


@pytest.mark.parametrize(("description", "values", "client"), CLIENTS, ids=[r[0] for r in CLIENTS])
def test_the_client_address_a_log_line_names(
    description: str, values: list[bytes], client: str
) -> None:
    forwarded = [(X_FORWARDED_PROTO, b"https")] + [(X_FORWARDED_FOR, v) for v in values]
    assert client_address(forwarded, PEER, trusted) == client, description
