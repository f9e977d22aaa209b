"""Upstream connections: pooled keep-alive HTTP/1.1 on asyncio protocols with llhttp.

One `UpstreamConnection` carries one exchange at a time. The response is parsed with
httptools (llhttp, strict: no obs-fold, no CL+TE, no duplicate Content-Length) and
streamed to the client as it arrives, with flow control both ways: a client that reads
slowly pauses the upstream socket, an upstream that reads slowly pauses the client.
A connection goes back to the pool only after a complete response that allows reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

from gateway.decision import Reason
from gateway.headers import HOP_BY_HOP as HOP_BY_HOP_NAMES
from gateway.model import Upstream

HOP_BY_HOP = frozenset(name.encode() for name in HOP_BY_HOP_NAMES)
MAX_RESPONSE_HEAD = 65_536
IDLE_PER_UPSTREAM = 256
SWEEP_INTERVAL_S = 0.1


class UpstreamFailure(Exception):
    """Before any response byte reached the client: becomes 502 or 504."""

    def __init__(self, reason: Reason, kind: str, *, retryable: bool = False) -> None:
        super().__init__(kind)
        self.reason = reason
        self.kind = kind
        self.retryable = retryable


class ResponseSink(Protocol):
    """The client side of an exchange, as the upstream connection sees it."""

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: str
    ) -> None: ...
    def response_body(self, chunk: bytes) -> None: ...
    def response_end(self) -> None: ...
    def switch_protocols(self, upstream: asyncio.Transport, tail: bytes) -> None: ...
    def pause_client_reading(self) -> None: ...
    def resume_client_reading(self) -> None: ...


@dataclass(slots=True)
class ExchangeResult:
    status: int  # 101: the connection now tunnels bytes both ways


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: Pool, upstream: Upstream) -> None:
        self.pool = pool
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._sink: ResponseSink | None = None
        self._done: asyncio.Future[ExchangeResult] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._started = False  # a response byte reached the client
        self._complete = False
        self.deadline = 0.0  # loop time after which a waiting exchange times out; 0: idle
        self._reused = False
        self._close_delimited = False
        self._body_pending = False
        self._upgrade = False  # this exchange asked for an upgrade
        self._in_head = False  # a response head is being received
        self._line = 0  # bytes of its unfinished line, which llhttp buffers
        self._reason = b""

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self.pool.forget(self)
        if self._done is not None and not self._done.done():
            if self._started and not self._complete and self._close_delimited:
                self._message_complete()  # a body without length ends with the connection
            else:
                self._fail(
                    UpstreamFailure(
                        Reason.UPSTREAM_RESET, "reset", retryable=self._reused and not self._started
                    )
                )

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.pause_client_reading()
        if self._body_pending:
            self._arm_timer()  # an upstream that stops reading the body is a timeout too

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.resume_client_reading()
        if self._body_pending:
            self._cancel_timer()

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            # bytes nobody asked for on an idle connection: it cannot be reused safely
            self.close()
            return
        self._arm_timer()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            self._upgraded(data[offset:])
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        if self._in_head:
            # llhttp holds an unfinished header line itself: bound it as it grows
            end = data.rfind(b"\n")
            self._line = self._line + len(data) if end == -1 else len(data) - end - 1
            if self._line + self._head_bytes > MAX_RESPONSE_HEAD:
                self._invalid()

    def _invalid(self) -> None:
        self._fail(UpstreamFailure(Reason.UPSTREAM_INVALID_RESPONSE, "invalid-response"))
        self.close()

    # ---- httptools callbacks ----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_RESPONSE_HEAD:
            raise httptools.HttpParserCallbackError("response head too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        assert self._sink is not None
        self._status = self._parser.get_status_code()
        if self._status == 101:
            return  # the upgrade path takes over (HttpParserUpgrade)
        if 100 <= self._status < 200:
            self._headers = []  # informational: dropped; the final response follows
            return
        self._in_head = False
        no_body = self._head_only or self._status in (204, 304)
        length = None
        chunked = False
        listed: set[bytes] = set()
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                length = value
            elif lower == b"transfer-encoding":
                chunked = True
            elif lower == b"connection":
                listed.update(v.strip().lower() for v in value.split(b","))
        headers = [
            (n, v)
            for n, v in self._headers
            if n.lower() not in HOP_BY_HOP
            and n.lower() not in listed
            and n.lower() != b"content-length"
        ]
        if no_body:
            if length is not None:
                headers.append((b"Content-Length", length))
            framing = "none"
        elif length is not None and not chunked:
            headers.append((b"Content-Length", length))
            framing = "length"
        else:
            framing = "stream"  # chunked or close-delimited upstream: re-framed for the client
            self._close_delimited = not chunked
        self._started = True
        self._sink.response_head(self._status, self._reason, headers, framing)
        if self._head_only:
            # a response to HEAD has no body whatever its headers say
            self._message_complete()

    def on_body(self, body: bytes) -> None:
        assert self._sink is not None
        self._sink.response_body(body)

    def on_message_complete(self) -> None:
        if self._status == 101 or (100 <= self._status < 200):
            if self._status != 101:
                self._status = 0
                self._headers = []
                self._head_bytes = 0
                self._line = 0
            return
        if not self._complete:
            self._message_complete()

    # ---- one exchange -----------------------------------------------------------------------

    def begin(
        self,
        sink: ResponseSink,
        head: bytes,
        *,
        head_only: bool,
        body_pending: bool = False,
        upgrade: bool = False,
    ) -> asyncio.Future[ExchangeResult]:
        """Send a request head; `body_pending`: body bytes follow until `body_sent()`.

        The read timeout runs from the end of the request body: an upload that keeps
        flowing is the client's business (its body idle timeout), not the upstream's."""
        assert self.transport is not None
        self._sink = sink
        self._body_pending = body_pending
        self._upgrade = upgrade
        self._in_head = True
        self._line = 0
        self._done = self.loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._status = 0
        self._reason = b""
        self._headers = []
        self._head_bytes = 0
        self._started = False
        self._complete = False
        self._close_delimited = False
        self.transport.write(head)
        if not body_pending:
            self._arm_timer()
        return self._done

    def write_body(self, chunk: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(chunk)

    def body_sent(self) -> None:
        self._body_pending = False
        if not self._complete and self._done is not None:
            self._arm_timer()

    def _message_complete(self) -> None:
        self._complete = True
        self._cancel_timer()
        sink, done = self._sink, self._done
        # A response that arrives before the whole request body was sent (an early 413,
        # say) leaves the connection mid-request: it must never carry another exchange.
        # Nor an upgrade the upstream declined: it may still expect the new protocol.
        keep = (
            self._parser is not None
            and self._parser.should_keep_alive()
            and not self._body_pending
            and not self._upgrade
        )
        self._sink = None
        self._parser = None
        if sink is not None:
            sink.response_end()
        if done is not None and not done.done():
            done.set_result(ExchangeResult(self._status))
        if keep and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    def _upgraded(self, tail: bytes) -> None:
        self._cancel_timer()
        sink, done = self._sink, self._done
        self._sink = None
        self._parser = None
        self._started = True
        assert self.transport is not None
        if sink is not None:
            listed = {b"connection", b"upgrade"}
            headers = [
                (n, v)
                for n, v in self._headers
                if n.lower() not in HOP_BY_HOP or n.lower() in listed
            ]
            sink.response_head(101, self._reason, headers, "upgrade")
            sink.switch_protocols(self.transport, tail)
        if done is not None and not done.done():
            done.set_result(ExchangeResult(101))

    def _fail(self, error: UpstreamFailure) -> None:
        self._cancel_timer()
        if self._done is not None and not self._done.done():
            self._done.set_exception(error)
        self._sink = None

    # Read timeouts are deadlines checked by the pool's sweeper a few times a second: a
    # float assignment per read instead of a timer handle created and cancelled per read.
    def _arm_timer(self) -> None:
        self.deadline = self.loop.time() + self.upstream.read_timeout_s

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def timed_out(self) -> None:
        self.deadline = 0.0
        self._fail(UpstreamFailure(Reason.UPSTREAM_TIMEOUT, "timeout"))
        self.close()

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self.pool.forget(self)

    def abort(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)


class Pool:
    """Idle keep-alive connections per upstream, most recently used first."""

    def __init__(self) -> None:
        self._idle: dict[Upstream, deque[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = asyncio.get_running_loop().time()
            for conn in [c for c in self._all if 0.0 < c.deadline <= now]:
                conn.timed_out()

    async def acquire(self, upstream: Upstream) -> UpstreamConnection:
        idle = self._idle.get(upstream)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn._reused = True
                return conn
        return await self.connect(upstream)

    async def connect(self, upstream: Upstream) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        ssl = upstream.scheme == "https" or None
        try:
            async with asyncio.timeout(upstream.connect_timeout_s):
                _, conn = await loop.create_connection(
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
            self._sweeper = asyncio.create_task(self._sweep(), name="upstream-timeouts")
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.upstream, deque())
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


def authority(upstream: Upstream) -> str:
    """`host[:port]` as a Host header names the upstream (the port only when not default)."""
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    default = 443 if upstream.scheme == "https" else 80
    return host if upstream.port == default else f"{host}:{upstream.port}"
