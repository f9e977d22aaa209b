"""Upstream connections and forwarding: pooled keep-alive HTTP/1.1 on asyncio protocols.

`Pool.forward(ex, upstream, head, body)` sends a request the gateway decided to forward
and relays the response to the client as a chain of callbacks: on a pooled connection no
task and no future is created. The response is parsed with httptools (llhttp, strict: no
obs-fold, no CL+TE, no duplicate Content-Length) only to know where it ends; its head is
relayed byte for byte unless a hop-by-hop header or the client's HTTP version requires a
rewrite, and its body is relayed as llhttp delimits it (never a byte past the message end).

Flow control both ways: a client that reads slowly pauses the upstream socket, an upstream
that reads slowly pauses the client. A connection goes back to the pool only after a
complete response that allows reuse, to a request whose body was fully sent, that did not
ask for an upgrade. A pooled connection the upstream had just closed is retried once on a
fresh one when the request can be sent again (no streamed body).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import cast

import httptools

from gateway.decision import Reason
from gateway.http1 import Exchange, with_request_id
from gateway.metrics import Histogram
from gateway.model import Upstream

MAX_RESPONSE_HEAD = 65_536
# Response headers that decide whether the head can be relayed as it is.
# (X-Request-Id too: the client gets the gateway's, once.)
_FRAMING = re.compile(
    rb"\r\n(connection|keep-alive|proxy-connection|te|trailer|upgrade|proxy-authenticate|"
    rb"transfer-encoding|content-length|x-request-id):[ \t]*([^\r\n]*)",
    re.IGNORECASE,
)
_REQUEST_ID = b"\r\nx-request-id:"

IDLE_PER_UPSTREAM = 256
SWEEP_INTERVAL_S = 0.1

_HOP_NAMES = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"transfer-encoding",
    ]
)


_VERDICTS: OrderedDict[bytes, tuple[bool, bool, bool]] = OrderedDict()
_VERDICTS_KEPT = 512
_REMEMBERED_HEAD = 4096  # a connection keeps its last head only up to this size


def _verdict(head: bytes) -> tuple[bool, bool, bool]:
    """(chunked, has a Content-Length, must be rewritten) for a response head."""
    chunked = has_length = rewrite = False
    for name, value in _FRAMING.findall(head):
        name = name.lower()
        if name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            chunked = True
        elif name != b"connection" or value.strip().lower() != b"keep-alive":
            # hop-by-hop, a Connection that says more than keep-alive, or a request id of
            # the upstream's own
            rewrite = True
    return chunked, has_length, rewrite


def _without_request_id(head: bytes) -> bytes:
    """The head without its X-Request-Id lines (an upstream echoing the one it received)."""
    lowered = head.lower()
    at = lowered.find(_REQUEST_ID)
    while at >= 0:
        end = lowered.find(b"\r\n", at + 2)
        head, lowered = head[:at] + head[end:], lowered[:at] + lowered[end:]
        at = lowered.find(_REQUEST_ID, at)
    return head


class UpstreamFailure(Exception):
    """Before any response byte reached the client: becomes 502 or 504."""

    def __init__(self, reason: Reason, kind: str, *, retryable: bool = False) -> None:
        super().__init__(kind)
        self.reason = reason
        self.kind = kind
        self.retryable = retryable


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream; carries one exchange at a time."""

    def __init__(self, pool: Pool, upstream: Upstream) -> None:
        self.pool = pool
        self.upstream = upstream
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self.latency = pool.latency(upstream)
        self.ex: Exchange | None = None
        self.deadline = 0.0  # loop time after which a waiting exchange times out; 0: none
        self.reused = False
        # the exchange in flight
        self._request: tuple[bytes, bytes | None] | None = None  # kept for one retry
        self._body_pending = False
        self._head_only = False
        self._upgrade = False
        self._in_head = False
        self._head = b""  # the response head received so far
        self._status = 0
        self._informational = False
        self._chunk_out = False  # re-frame the body as chunks for the client
        self._close_delimited = False
        self._complete = False
        self._keep = False  # llhttp's keep-alive verdict, read while the message is current
        self._out: list[bytes] = []
        self._sent_at = 0.0
        self._last_head = b""  # the last response head relayed, and the verdict on it
        self._last_verdict = (False, False, False)

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline = 0.0
        self.pool.forget(self)
        ex = self.ex
        if ex is None:
            return
        if ex.response_started and not self._complete:
            if self._close_delimited:
                self._complete = True  # a body without length ends with the connection
                if self._chunk_out:
                    self._out.append(b"0\r\n\r\n")
                if self._out:
                    self._flush(ex)
                self._done(ex, keep=False)
            else:
                self.ex = None
                self.pool.failed(ex, self, UpstreamFailure(Reason.UPSTREAM_RESET, "reset"))
            return
        if not ex.response_started:
            retryable = self.reused and self._request is not None
            self.ex = None
            self.pool.failed(
                ex, self, UpstreamFailure(Reason.UPSTREAM_RESET, "reset", retryable=retryable)
            )

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.conn.pause_reading()
            if self._body_pending:
                self._arm()  # an upstream that stops reading the body is a timeout too

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.conn.resume_reading()
            if self._body_pending:
                self.deadline = 0.0

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:
            # bytes nobody asked for on an idle connection: it cannot be reused safely
            self.close()
            return
        if self._in_head:
            self._head = self._head + data if self._head else data
        self.deadline = self.loop.time() + self.upstream.read_timeout_s
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(ex, data[upgrade.args[0] :])
            return
        except httptools.HttpParserError:
            self._invalid(ex)
            return
        if self._in_head and len(self._head) > MAX_RESPONSE_HEAD:
            # llhttp holds an unfinished header itself; what we hold bounds it
            self._invalid(ex)
            return
        if self._out:
            self._flush(ex)
        if self._complete:
            self._done(ex, keep=True)

    # ---- httptools callbacks ----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        status = self.parser.get_status_code()
        if status == 101:
            return  # the upgrade path takes over (HttpParserUpgrade)
        if 100 <= status < 200:
            self._informational = True  # dropped; the final response follows
            return
        self._in_head = False
        head = self._head
        end = head.find(b"\r\n\r\n") + 4
        self._head = b""
        self._status = status
        ex.status = status
        ex.response_started = True
        no_body = self._head_only or status in (204, 304)
        self._out += self._client_head(ex, head[:end], status, no_body)
        if self._head_only:
            self._keep = self.parser.should_keep_alive()
            self._complete = True  # a response to HEAD has no body whatever it says

    def on_body(self, body: bytes) -> None:
        if self._chunk_out:
            self._out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            # drop the 1xx head from what was buffered; the final head comes after it
            self._informational = False
            self._head = self._head[self._head.find(b"\r\n\r\n") + 4 :]
            return
        if self._status == 0 or self._complete:
            return  # a 101, or a HEAD response already taken as complete
        if self._chunk_out:
            self._out.append(b"0\r\n\r\n")
        self._keep = self.parser.should_keep_alive()  # llhttp forgets it after this callback
        self._complete = True

    # ---- the client's view of the response head ---------------------------------------------

    def _client_head(
        self, ex: Exchange, head: bytes, status: int, no_body: bool
    ) -> tuple[bytes, ...]:
        """The upstream's head as it is when nothing in it is hop-by-hop for the client,
        else rebuilt without the hop-by-hop headers, framed for the client's connection.
        One regex pass finds what matters (llhttp admits no space before a colon). The
        gateway's X-Request-Id is added. In pieces: the body's flush joins them anyway."""
        request_id = ex.request_id
        if head.find(request_id) >= 0:  # (`in` on bytes costs a raised TypeError first)
            # echoed (Rails, many middlewares do): dropped here, so heads keep their shape
            head = _without_request_id(head)
        # An upstream's heads differ mostly by their Date: the same head as this
        # connection's last is compared (no hashing, no copy); else the verdict on the
        # head's shape (without its Date value) is looked up, and the regex runs on new ones.
        if head == self._last_head:
            verdict = self._last_verdict
        else:
            at = head.find(b"\r\nDate: ")
            shape = head if at < 0 else head[:at] + head[head.find(b"\r\n", at + 8) :]
            found = _VERDICTS.get(shape)
            if found is None:
                found = _verdict(head)
                if len(_VERDICTS) >= _VERDICTS_KEPT:
                    _VERDICTS.popitem(last=False)
                _VERDICTS[shape] = found
            verdict = self._last_verdict = found
            self._last_head = head if len(head) <= _REMEMBERED_HEAD else b""
        chunked, has_length, rewrite = verdict
        self._close_delimited = not (no_body or chunked or has_length)
        self._chunk_out = chunked and not no_body
        if rewrite or self._close_delimited or not ex.version11 or not ex.keep_alive:
            return (self._rebuilt(ex, head, no_body, chunked, has_length),)
        # the common case: relayed byte for byte, and the request id
        return (head[:-2], *ex.response_headers, b"X-Request-Id: ", request_id, b"\r\n\r\n")

    def _rebuilt(
        self, ex: Exchange, head: bytes, no_body: bool, chunked: bool, has_length: bool
    ) -> bytes:
        lines = head[:-4].split(b"\r\n")
        fields = [tuple(line.split(b":", 1)) for line in lines[1:]]
        listed = {
            token.strip().lower()
            for name, value in fields
            if name.strip().lower() == b"connection"
            for token in value.split(b",")
        }
        out = [lines[0], b"\r\n"]
        for name, value in fields:
            lower = name.strip().lower()
            if lower in _HOP_NAMES or lower in listed or lower == b"x-request-id":
                continue
            if lower == b"content-length" and chunked:
                continue  # a Content-Length beside chunked framing is not to be believed
            out += (name, b":", value, b"\r\n")
        if not no_body and not has_length:
            if ex.version11:
                out.append(b"Transfer-Encoding: chunked\r\n")
                self._chunk_out = True
            else:
                ex.keep_alive = False  # HTTP/1.0: the body ends when we close
                self._chunk_out = False
        else:
            self._chunk_out = False
        if chunked and not no_body and ex.version11:
            self._chunk_out = True
        out.extend(ex.response_headers)
        out += (b"X-Request-Id: ", ex.request_id, b"\r\n")
        out.append(
            b"Connection: keep-alive\r\n\r\n" if ex.keep_alive else b"Connection: close\r\n\r\n"
        )
        return b"".join(out)

    # ---- one exchange -----------------------------------------------------------------------

    def send(self, ex: Exchange, head: bytes, body: bytes | None) -> None:
        """Send a request and relay its response to `ex`. The read timeout runs from the
        end of the request body: an upload that keeps flowing is the client's business
        (its body idle timeout), not the upstream's."""
        assert self.transport is not None
        self.ex = ex
        ex.upstream = self
        self._head_only = ex.method == b"HEAD"
        self._upgrade = ex.upgrade
        self._in_head = True
        self._head = b""
        self._status = 0
        self._informational = False
        self._complete = False
        self._keep = False
        self._close_delimited = False
        self._chunk_out = False
        streamed = body is None and ex.has_body
        self._request = None if streamed else (head, body)
        self._body_pending = streamed
        self._sent_at = time.perf_counter()
        if body:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
        if streamed:
            ex.pipe_body(self._write_body, ex.chunked, self._body_sent)
        if not self._body_pending:
            self._arm()

    def _write_body(self, chunk: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(chunk)

    def _body_sent(self) -> None:
        self._body_pending = False
        if not self._complete and self.ex is not None:
            self._arm()

    def _flush(self, ex: Exchange) -> None:
        out = self._out
        data = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        ex.response_started = True
        conn = ex.conn
        if not conn.closing:
            conn.transport.write(data)  # type: ignore[union-attr]

    def _done(self, ex: Exchange, *, keep: bool) -> None:
        self.ex = None
        self.deadline = 0.0
        self._request = None
        # A response that arrives before the whole request body was sent (an early 413,
        # say) leaves the connection mid-request: it must never carry another exchange.
        # Nor an upgrade the upstream declined: it may still expect the new protocol.
        keep = keep and self._keep and not self._body_pending and not self._upgrade
        if self._head_only:
            # llhttp cannot be told a response had no body: a fresh parser for the next
            self.parser = httptools.HttpResponseParser(self)
        ex.upstream_status = self._status
        ex.upstream_s = elapsed = time.perf_counter() - self._sent_at
        self.latency.observe(elapsed)
        if keep and not self.closed:
            self.pool.release(self)
        else:
            self.close()
        ex.finish()

    def _upgraded(self, ex: Exchange, tail: bytes) -> None:
        self.ex = None
        self.deadline = 0.0
        assert self.transport is not None
        head = self._head
        end = head.find(b"\r\n\r\n") + 4
        ex.status = 101
        ex.upstream_status = 101
        self.pool.forget(self)  # the connection now belongs to the tunnel
        ex.send(with_request_id(head[:end], ex.request_id))
        ex.switch_protocols(self.transport, tail)

    def _invalid(self, ex: Exchange) -> None:
        self.ex = None
        self.close()
        self.pool.failed(
            ex, self, UpstreamFailure(Reason.UPSTREAM_INVALID_RESPONSE, "invalid-response")
        )

    def timed_out(self) -> None:
        ex = self.ex
        self.deadline = 0.0
        self.ex = None
        self.close()
        if ex is not None:
            self.pool.failed(ex, self, UpstreamFailure(Reason.UPSTREAM_TIMEOUT, "timeout"))

    def _arm(self) -> None:
        # Read timeouts are deadlines checked by the pool's sweeper: a float store per read
        # instead of a timer handle created and cancelled per read.
        self.deadline = self.loop.time() + self.upstream.read_timeout_s

    def close(self) -> None:
        self.deadline = 0.0
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self.pool.forget(self)

    def abort(self) -> None:
        """The client is gone: this response has nowhere to go, the connection no future."""
        self.deadline = 0.0
        self.ex = None
        if self.transport is not None:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)


FailureHandler = Callable[[Exchange, Upstream, UpstreamFailure], None]


class _Unobserved:
    def observe(self, seconds: float) -> None:
        pass


class Pool:
    """Idle keep-alive connections per upstream (most recently used first), and the
    forwarding of exchanges over them."""

    def __init__(
        self,
        on_failure: FailureHandler | None = None,
        latency: Callable[[str], Histogram] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._idle: dict[Upstream, deque[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.on_failure = on_failure
        self._latency = latency
        self._current: set[Upstream] | None = None  # the running policy's, after a reload

    # ---- forwarding -------------------------------------------------------------------------

    def forward(
        self, ex: Exchange, upstream: Upstream, head: bytes, body: bytes | None = None
    ) -> None:
        """Send `head` (and `body`, when it was read whole) to `upstream` and relay the
        answer to `ex`; a pooled connection makes this a chain of callbacks."""
        ex.forwarding = True
        idle = self._idle.get(upstream)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                conn.send(ex, head, body)
                return
        self.loop.create_task(self._connect_and_send(ex, upstream, head, body, retry=False))

    async def forward_and_wait(
        self, ex: Exchange, upstream: Upstream, head: bytes, body: bytes | None = None
    ) -> None:
        """`forward`, for a task that must know when the exchange is over."""
        ex.ended = self.loop.create_future()
        self.forward(ex, upstream, head, body)
        await ex.ended

    async def _connect_and_send(
        self, ex: Exchange, upstream: Upstream, head: bytes, body: bytes | None, *, retry: bool
    ) -> None:
        try:
            conn = await self.connect(upstream)
        except UpstreamFailure as failure:
            self._fail(ex, upstream, failure)
            return
        if ex.conn.transport is None or ex.conn.transport.is_closing():
            self.release(conn)  # the client left while we connected
            return
        conn.send(ex, head, body)

    def failed(self, ex: Exchange, conn: UpstreamConnection, failure: UpstreamFailure) -> None:
        """An exchange's connection failed: once more on a fresh connection when that is
        safe (a pooled connection the upstream had just closed), else 502/504."""
        request = conn._request
        if failure.retryable and request is not None and not ex.response_started:
            head, body = request
            self.loop.create_task(self._connect_and_send(ex, conn.upstream, head, body, retry=True))
            return
        self._fail(ex, conn.upstream, failure)

    def _fail(self, ex: Exchange, upstream: Upstream, failure: UpstreamFailure) -> None:
        ex.upstream = None
        if self.on_failure is not None:
            self.on_failure(ex, upstream, failure)
        if ex.response_started and not ex.response_done:
            ex.abandon()
        else:
            ex.end()

    def latency(self, upstream: Upstream) -> Histogram | _Unobserved:
        """Where a connection to `upstream` records how long its exchanges take."""
        return self._latency(upstream.name) if self._latency is not None else _Unobserved()

    # ---- connections ------------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = self.loop.time()
            for conn in [c for c in self._all if 0.0 < c.deadline <= now]:
                conn.timed_out()

    async def connect(self, upstream: Upstream) -> UpstreamConnection:
        ssl = upstream.scheme == "https" or None
        try:
            async with asyncio.timeout(upstream.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self, upstream),
                    upstream.host,
                    upstream.port,
                    ssl=ssl,
                    server_hostname=upstream.host if ssl else None,
                )
        except TimeoutError:
            raise UpstreamFailure(Reason.UPSTREAM_TIMEOUT, "connect-timeout") from None
        except OSError:
            raise UpstreamFailure(Reason.UPSTREAM_UNREACHABLE, "connect") from None
        self._all.add(conn)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = self.loop.create_task(self._sweep(), name="upstream-timeouts")
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if self._current is not None and conn.upstream not in self._current:
            conn.close()  # an upstream of a policy since replaced: its address may be stale
            return
        idle = self._idle.get(conn.upstream)
        if idle is None:
            idle = self._idle[conn.upstream] = deque()
        if len(idle) >= IDLE_PER_UPSTREAM:
            conn.close()
            return
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.upstream)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)

    def retire(self, keep: list[Upstream]) -> None:
        self._current = set(keep)
        for upstream in [u for u in self._idle if u not in keep]:
            for conn in list(self._idle.pop(upstream)):
                conn.close()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.close()
        self._idle.clear()

    @property
    def open_connections(self) -> int:
        return len(self._all)


def authority(upstream: Upstream) -> str:
    """`host[:port]` as a Host header names the upstream (the port only when not default)."""
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    default = 443 if upstream.scheme == "https" else 80
    return host if upstream.port == default else f"{host}:{upstream.port}"
