"""The public listener: HTTP/1.1 on asyncio protocols with llhttp (httptools).

aiohttp's server and client cost ~300 µs of CPU per proxied request here; this engine
does the same job in a fraction of it (see bench/). It stays strict where request
smuggling lives: llhttp rejects obs-fold, Content-Length with Transfer-Encoding,
duplicate Content-Length and bad chunk sizes; we also refuse any Transfer-Encoding but
`chunked`, HTTP versions other than 1.0/1.1, and oversized request lines and headers
(414/431 before the head is even complete).

A connection handles one exchange at a time; pipelined requests wait their turn with
the socket paused. Request bodies stream to the upstream as they arrive and responses
stream back, each direction pausing the other when a socket's buffer fills up.

Limits hold as bytes arrive, never only once a header is complete: llhttp buffers an
unfinished header itself, so the unfinished line is measured after every read. Every
connection is in a phase with its own deadline (a head must arrive whole within
`request_head_timeout_s`, a body may not stall longer than `body_idle_timeout_s`, an idle
keep-alive connection lives `IDLE_TIMEOUT_S`), checked by one sweeper, not a timer each.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

from gateway.decision import Reason
from gateway.model import Limits
from gateway.responses import body_of, status_of

log = logging.getLogger("clerk_gateway")

MAX_HEADERS = 128
BODY_BUFFER = 256 * 1024  # buffered request body before the client is paused
IDLE_TIMEOUT_S = 75.0
LINGER_S = 2.0  # after a refusal, how long unread client bytes are still read and dropped
LINGER_BYTES = 1 << 20
_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}


def status_line(status: int, reason: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or _PHRASES.get(status, b"Unknown"))


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str  # the raw request target (latin-1), normalised later by paths.py
    version: str
    headers: list[tuple[str, str]]
    index: dict[str, str]  # lower-case name -> first value
    client_ip: str
    secure: bool
    content_length: int | None
    chunked: bool
    upgrade: bool

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.index.get(name, default)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class Exchange:
    """One request and its response on a client connection."""

    def __init__(self, conn: ClientConnection, head: RequestHead) -> None:
        self.conn = conn
        self.head = head
        self.status = 0
        self.response_started = False
        self.response_done = False
        # an upgrade (or CONNECT) that is not tunnelled leaves the parser spent: close after
        self.keep_alive = conn.parser_keep_alive and not head.upgrade
        self._framing = "length"
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.body_complete = not head.has_body
        self._sink: Callable[[bytes], None] | None = None
        self._sink_end: Callable[[], None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self.upstream_transport: asyncio.Transport | None = None
        self.upgrade_tail = b""

    # ---- request body -----------------------------------------------------------------------

    def feed_body(self, chunk: bytes) -> None:
        if self._sink is not None:
            self._sink(chunk)
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        waiter = self._body_waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)  # read_body() re-checks its limit on every chunk
        elif self._buffered > BODY_BUFFER:
            self.conn.pause_reading()

    def end_body(self) -> None:
        self.body_complete = True
        if self._sink_end is not None:
            self._sink_end()
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)

    def send_continue(self) -> None:
        """Answer `Expect: 100-continue` once the request is allowed: the client then
        sends its body (without it, curl waits a second before every upload)."""
        if (
            not self.body_complete
            and not self.response_started
            and (self.head.get("expect") or "").lower() == "100-continue"
        ):
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def read_body(self, limit: int) -> bytes | None:
        """The whole body, or None as soon as it is larger than `limit`."""
        self.send_continue()
        while not self.body_complete:
            if self._buffered > limit:
                return None
            self._body_waiter = asyncio.get_running_loop().create_future()
            self.conn.resume_reading()
            await self._body_waiter
        self._body_waiter = None
        if self._buffered > limit:
            return None
        body = b"".join(self._chunks)
        self._chunks = []
        return body

    def stream_body(
        self, write: Callable[[bytes], None], chunked: bool, sent: Callable[[], None]
    ) -> None:
        """From now on, body bytes go to `write` (framed as chunks when `chunked`);
        `sent` is called once the whole body has been written."""
        self.send_continue()
        sink: Callable[[bytes], None] = write

        def end() -> None:
            if chunked:
                write(b"0\r\n\r\n")
            sent()

        if chunked:

            def sink(chunk: bytes) -> None:
                if chunk:
                    write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

        for chunk in self._chunks:
            sink(chunk)
        self._chunks = []
        self._buffered = 0
        self.conn.resume_reading()
        if self.body_complete:
            end()
        else:
            self._sink, self._sink_end = sink, end

    # ---- the response (upstream.ResponseSink) -----------------------------------------------

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framing: str
    ) -> None:
        self.status = status
        self.response_started = True
        self._framing = framing
        out = [status_line(status, reason)]
        for name, value in headers:
            out.append(b"%s: %s\r\n" % (name, value))
        if framing == "stream":
            if self.head.version == "1.1":
                out.append(b"Transfer-Encoding: chunked\r\n")
                self._framing = "chunked"
            else:
                self.keep_alive = False  # HTTP/1.0: the body ends when we close
        if framing != "upgrade":
            out.append(
                b"Connection: keep-alive\r\n\r\n"
                if self.keep_alive
                else b"Connection: close\r\n\r\n"
            )
        else:
            out.append(b"\r\n")
        self.conn.write(b"".join(out))

    def response_body(self, chunk: bytes) -> None:
        if self._framing == "chunked":
            if chunk:
                self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(chunk)

    def response_end(self) -> None:
        if self._framing == "chunked":
            self.conn.write(b"0\r\n\r\n")
        self.response_done = True

    def switch_protocols(self, upstream: asyncio.Transport, tail: bytes) -> None:
        self.response_done = True
        self.conn.tunnel(upstream, tail, self.upgrade_tail)

    def pause_client_reading(self) -> None:
        self.conn.pause_reading()

    def resume_client_reading(self) -> None:
        self.conn.resume_reading()

    # ---- a response of our own --------------------------------------------------------------

    def reply(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.body_complete:
            self.keep_alive = False  # an unread body cannot be skipped safely: close after
        self.response_head(
            status, b"", [*headers, (b"Content-Length", b"%d" % len(body))], "length"
        )
        if self.head.method != "HEAD":
            self.conn.write(body)
        self.response_end()


# Handles an exchange: None when it is already answered, else what to run in a task.
Handler = Callable[[Exchange], Callable[[], Coroutine[Any, Any, None]] | None]

# What a connection is waiting for, and so which deadline applies.
FRESH = 0  # accepted, nothing received: closed silently after the head timeout
HEAD = 1  # part of a request head received: 408 after the head timeout
BODY = 2  # a request body is being received: 408 when it stalls
BUSY = 3  # the request is complete; its response is on its way (upstream deadlines apply)
IDLE = 4  # keep-alive between requests: closed silently after the idle timeout
TUNNEL = 5  # an upgraded connection: bytes flow both ways until either side closes


class ClientConnection(asyncio.Protocol):
    """One client TCP connection."""

    def __init__(
        self, handler: Handler, limits: Callable[[], Limits], tracker: ConnectionTracker
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.tracker = tracker
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.secure = False
        self.parser_keep_alive = True
        self._limits = limits()
        self._url: list[bytes] = []
        self._url_len = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_len = 0
        self._line = 0  # bytes of the unfinished line of a head (llhttp buffers it)
        self._limit_hit: Reason | None = None
        self.phase = FRESH
        self.since = 0.0  # loop time the phase began (for BODY: the last progress seen)
        self.progress = 0  # request-body reads, so the sweeper can tell a stall
        self.seen_progress = 0
        self._lingering = 0  # > 0: half-closed, dropping at most this many more bytes
        self._receiving: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._writing_paused = False
        self._tunnel: asyncio.Transport | None = None
        self._closing = False

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        self.secure = transport.get_extra_info("sslcontext") is not None
        self.since = asyncio.get_running_loop().time()
        self.tracker.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.tracker.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client went away: so does the upstream request
        if self._tunnel is not None:
            self._tunnel.close()
        receiving = self._receiving
        if (
            receiving is not None
            and not receiving.body_complete
            and receiving._body_waiter is not None
        ) and not receiving._body_waiter.done():
            receiving._body_waiter.set_exception(ConnectionResetError())

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._tunnel is not None:
            self._tunnel.pause_reading()
        elif self._active is not None and self._active.upstream_transport is not None:
            self._active.upstream_transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._tunnel is not None:
            self._tunnel.resume_reading()
        elif self._active is not None and self._active.upstream_transport is not None:
            self._active.upstream_transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self._lingering:
            self._lingering -= len(data)
            if self._lingering <= 0 and self.transport is not None:
                self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            exchange = self._receiving
            if exchange is not None:
                exchange.upgrade_tail = data[upgrade.args[0] :]
            self.pause_reading()  # bytes after an upgrade belong to the new protocol
            return
        except httptools.HttpParserError:
            self._refuse(self._limit_hit or Reason.REQUEST_MALFORMED)
            return
        if self.phase == HEAD:
            self._check_unfinished_line(data)
        elif self.phase == BODY:
            self.progress += 1

    def _check_unfinished_line(self, data: bytes) -> None:
        """The part of a head llhttp holds unparsed is the line after the last LF: bound it
        now, whatever the client keeps sending (the whole head is bounded in on_header)."""
        end = data.rfind(b"\n")
        self._line = self._line + len(data) if end == -1 else len(data) - end - 1
        limits = self._limits
        if (
            self._line > limits.max_header_bytes
            or self._line + self._head_len > limits.max_head_bytes
        ):
            self._refuse(Reason.REQUEST_HEADER_TOO_LARGE)

    # ---- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._limits = self.limits()  # a reload applies from the next request on
        self._url = []
        self._url_len = 0
        self._headers = []
        self._head_len = 0
        self._line = 0
        self._limit_hit = None
        self._enter(HEAD)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_len += len(url)
        if self._url_len + 20 > self._limits.max_request_line_bytes:
            self._limit_hit = Reason.REQUEST_LINE_TOO_LONG
            raise httptools.HttpParserCallbackError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        self._head_len += size
        if (
            size > self._limits.max_header_bytes
            or self._head_len + self._url_len > self._limits.max_head_bytes
            or len(self._headers) >= MAX_HEADERS
        ):
            self._limit_hit = Reason.REQUEST_HEADER_TOO_LARGE
            raise httptools.HttpParserCallbackError("header too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise httptools.HttpParserCallbackError("unsupported HTTP version")
        upgrade = parser.should_upgrade()  # an Upgrade request, or any CONNECT
        self.parser_keep_alive = parser.should_keep_alive()
        headers: list[tuple[str, str]] = []
        index: dict[str, str] = {}
        content_length: int | None = None
        chunked = False
        for raw_name, raw_value in self._headers:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            lower = name.lower()
            headers.append((name, value))
            index.setdefault(lower, value)
            if lower == "content-length":
                content_length = int(value)
            elif lower == "transfer-encoding":
                if value.strip().lower() != "chunked":
                    # "gzip, chunked" and friends: we would not re-encode them faithfully
                    raise httptools.HttpParserCallbackError("unsupported transfer-encoding")
                chunked = True
        method = parser.get_method()
        if upgrade and (method == b"CONNECT" or chunked or content_length):
            # llhttp skips the body of an upgrade: its bytes would reach the upstream as the
            # next request (request smuggling). A tunnel to anywhere is never ours to open.
            raise httptools.HttpParserCallbackError("upgrade with a body, or CONNECT")
        # raw UTF-8 stays meaningful; invalid bytes become lone surrogates, which paths.py refuses
        url = b"".join(self._url).decode("utf-8", "surrogateescape")
        head = RequestHead(
            method=method.decode("ascii", "replace"),
            target=url,
            version=version,
            headers=headers,
            index=index,
            client_ip=self.client_ip,
            secure=self.secure,
            content_length=content_length,
            chunked=chunked,
            upgrade=upgrade,
        )
        self._enter(BODY if head.has_body else BUSY)
        exchange = Exchange(self, head)
        self._receiving = exchange
        if self._active is None:
            self._start(exchange)
        else:
            self._queue.append(exchange)  # pipelined: wait for the one before it
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._receiving is not None:
            self._receiving.feed_body(body)

    def on_message_complete(self) -> None:
        self.phase = BUSY
        if self._receiving is not None:
            self._receiving.end_body()

    def _enter(self, phase: int) -> None:
        self.phase = phase
        self.since = asyncio.get_running_loop().time()
        self.seen_progress = self.progress

    def timed_out(self) -> None:
        """Called by the sweeper when this connection's phase outlived its deadline."""
        if self.phase == HEAD:
            self._refuse(Reason.REQUEST_HEAD_TIMEOUT)
        elif self.phase == BODY:
            self._refuse(Reason.REQUEST_BODY_TIMEOUT)
        else:
            self.close()  # nothing was asked: nothing to answer

    # ---- exchanges --------------------------------------------------------------------------

    def _start(self, exchange: Exchange) -> None:
        self._active = exchange
        try:
            then = self.handler(exchange)
        except Exception:
            self._crashed(exchange)
            return
        if then is None:
            self._finished(exchange)  # answered without any I/O: no task needed
        else:
            self._task = asyncio.ensure_future(self._run(exchange, then))

    async def _run(self, exchange: Exchange, then: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await then()
        except asyncio.CancelledError:
            if not self._closing:
                self.abort()  # the client is gone or we gave up: a partial response must not look whole
            raise
        except Exception:
            self._crashed(exchange)
            return
        self._finished(exchange)

    def _crashed(self, exchange: Exchange) -> None:
        """The last resort when the handler itself failed (the gateway answers its own
        failures): logged with the traceback, 500 from responses.py, then closed."""
        log.exception("request handling failed in the engine")
        self.tracker.refused(Reason.INTERNAL_ERROR)
        if exchange.response_started:
            self.abort()
            return
        exchange.keep_alive = False
        exchange.reply(
            status_of(Reason.INTERNAL_ERROR),
            body_of(Reason.INTERNAL_ERROR),
            [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")],
        )
        self._linger()

    def _finished(self, exchange: Exchange) -> None:
        if self._tunnel is not None:
            return
        if not exchange.body_complete:
            self._linger()  # the client may still be sending the body we did not read
            return
        if not exchange.keep_alive or not exchange.response_done:
            self.close()
            return
        self._active = None
        self._task = None
        if self._queue:
            self._start(self._queue.popleft())
            if not self._queue:
                self.resume_reading()
        else:
            if self.phase == BUSY:
                self._enter(IDLE)
            self.resume_reading()

    def _refuse(self, reason: Reason) -> None:
        """A request we cannot even parse: answer, then close the connection."""
        if self._active is not None and self._active.response_started:
            self.abort()
            return
        body = body_of(reason)
        response = b"".join(
            [
                status_line(status_of(reason)),
                b"Content-Type: application/json\r\nCache-Control: no-store\r\n",
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body),
                body,
            ]
        )
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.tracker.refused(reason)
        self.write(response)
        self._linger()

    def _linger(self) -> None:
        """Close after a response while the client may still be sending: half-close, then
        read and drop its bytes for a moment. Closing a socket with unread bytes sends a
        reset, which can destroy the response before the client reads it (RFC 9112 9.6)."""
        transport = self.transport
        if transport is None or self._closing:
            return
        if not transport.can_write_eof():
            self.close()
            return
        self._closing = True
        self._lingering = LINGER_BYTES
        self.phase = TUNNEL  # no deadline of the sweeper's: the timer below ends it
        transport.write_eof()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def tunnel(self, upstream: asyncio.Transport, upstream_tail: bytes, client_tail: bytes) -> None:
        """After a 101: bytes flow both ways unparsed until either side closes."""
        self._tunnel = upstream
        self.phase = TUNNEL
        client = self.transport
        assert client is not None
        out: asyncio.Transport = client

        class _Pipe(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                out.write(data)

            def connection_lost(self, exc: Exception | None) -> None:
                out.close()

            def pause_writing(self) -> None:
                out.pause_reading()

            def resume_writing(self) -> None:
                out.resume_reading()

        upstream.set_protocol(_Pipe())
        if upstream_tail:
            client.write(upstream_tail)
        if client_tail:
            upstream.write(client_tail)
        self.resume_reading()

    # ---- transport helpers ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self._closing:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self._closing:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self._closing:
            self._closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self._closing = True
            self.transport.abort()

    @property
    def busy(self) -> bool:
        return self._active is not None

    @property
    def reading_paused(self) -> bool:
        return self._paused


@dataclass
class ConnectionTracker:
    """Open client connections: their deadlines, draining on shutdown, refused requests."""

    limits: Callable[[], Limits] = Limits
    connections: set[ClientConnection] = field(default_factory=set)
    on_refused: Callable[[Reason], None] | None = None
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int = 1 << 20
    over_limit: int = 0  # connections closed at once because max_connections were open
    _sweeper: asyncio.Task[None] | None = None

    def add(self, conn: ClientConnection) -> None:
        if len(self.connections) >= self.max_connections:
            # keep descriptors for the admin port, upstreams and key fetches: a flood of
            # connections must not take the health checks down with it
            self.over_limit += 1
            conn.abort()
            return
        self.connections.add(conn)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Deadlines checked a few times per shortest timeout: a float compare per
        connection instead of a timer created and cancelled on every read."""
        loop = asyncio.get_running_loop()
        while self.connections:
            limits = self.limits()
            head_s, body_s = limits.request_head_timeout_s, limits.body_idle_timeout_s
            await asyncio.sleep(min(1.0, max(0.05, min(head_s, body_s, self.idle_timeout_s) / 4)))
            now = loop.time()
            for conn in list(self.connections):
                phase = conn.phase
                if phase in (HEAD, FRESH):
                    if now - conn.since > head_s:
                        conn.timed_out()
                elif phase == BODY:
                    if conn.reading_paused or conn.progress != conn.seen_progress:
                        # progress, or paused by us (backpressure): not the client's stall
                        conn.since, conn.seen_progress = now, conn.progress
                    elif now - conn.since > body_s:
                        conn.timed_out()
                elif phase == IDLE and now - conn.since > self.idle_timeout_s:
                    conn.close()

    def discard(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    def refused(self, reason: Reason) -> None:
        if self.on_refused is not None:
            self.on_refused(reason)

    async def drain(self, within_s: float) -> None:
        """Close idle connections now; wait (bounded) for busy ones to finish."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while True:
                    for conn in list(self.connections):
                        if not conn.busy:
                            conn.close()
                    if not self.connections:
                        return
                    await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
