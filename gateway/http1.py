"""The public listener: HTTP/1.1 on asyncio protocols with llhttp (httptools), bytes in,
exchanges out.

Strict where request smuggling lives: llhttp rejects obs-fold, Content-Length with
Transfer-Encoding, duplicate Content-Length and bad chunk sizes; we also refuse any
transfer-coding but one `chunked`, duplicate Host or Authorization headers, HTTP versions
other than 1.0/1.1, an Upgrade or CONNECT that declares a body (llhttp skips such a body,
so its bytes would reach the upstream as the next request), and any CONNECT.

Limits hold as bytes arrive, never only once a header is complete: llhttp buffers an
unfinished header itself, so the unfinished line is measured after every read. Every
connection is in a phase with its own deadline (a head must arrive whole within
`request_head_timeout_s`, a body may not stall longer than `body_idle_timeout_s`, an idle
keep-alive connection lives `IDLE_TIMEOUT_S`), checked by one sweeper, not a timer each.

A request that needs no I/O but the upstream's runs as a chain of callbacks (no task):
the handler decides synchronously and hands the exchange to the upstream pool, whose
connection writes the response straight to this connection's transport. Only what must
wait (a key fetch, a webhook body, a new upstream connection) runs in a task. A
connection handles one exchange at a time; pipelined requests wait their turn with the
socket paused. Bodies stream both ways with flow control.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Protocol, cast

import httptools

from gateway.correlation import correlate, new_request_id
from gateway.decision import Reason
from gateway.headers import scan
from gateway.model import Limits
from gateway.responses import refusal as refusal_bytes

log = logging.getLogger("clerk_gateway")

MAX_HEADERS = 128
BODY_BUFFER = 256 * 1024  # buffered request body before the client is paused
IDLE_TIMEOUT_S = 75.0
LINGER_S = 2.0  # after a refusal, how long unread client bytes are still read and dropped
LINGER_BYTES = 1 << 20
FRESH_GRACE_S = 1.0  # draining: a connection silent this long since it opened is closed
DRAIN_POLL_S = 0.05
_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}

# What a connection is waiting for, and so which deadline applies.
FRESH = 0  # accepted, nothing received: closed silently after the head timeout
HEAD = 1  # part of a request head received: 408 after the head timeout
BODY = 2  # a request body is being received: 408 when it stalls
BUSY = 3  # the request is complete; its response is on its way (upstream deadlines apply)
IDLE = 4  # keep-alive between requests: closed silently after the idle timeout
TUNNEL = 5  # upgraded, or lingering: no deadline of the sweeper's

Continuation = Callable[[], Coroutine[Any, Any, None]]


def status_line(status: int, reason: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or _PHRASES.get(status, b"Unknown"))


def with_request_id(response: bytes, request_id: bytes) -> bytes:
    """`response` with an `X-Request-Id` header after its status line."""
    status, _, rest = response.partition(b"\r\n")
    return b"".join((status, b"\r\nX-Request-Id: ", request_id, b"\r\n", rest))


class Handler(Protocol):
    """What the listener asks of the application (app.Gateway)."""

    def handle(self, ex: Exchange) -> Continuation | None:
        """Answer or start forwarding; a continuation when something must be awaited."""

    def complete(self, ex: Exchange) -> None:
        """The exchange ended (answered, forwarded, failed or abandoned): record it."""

    def refused(self, reason: Reason, client: str, request_id: bytes) -> None:
        """A request the parser refused before it became an exchange."""

    def crashed(self, ex: Exchange) -> None:
        """The handler raised: log, count, answer 500."""


class Exchange:
    """One request on a client connection and the state of its answer.

    A plain class with class-level defaults: only what every request has is set in
    __init__ (a request costs one small object, not fifty attribute stores)."""

    # header facts, filled by headers.scan
    host = b""
    authorization: bytes | None = None
    cookie: bytes | None = None
    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    connection: bytes | None = None
    expect: bytes | None = None
    upgrade_to: bytes | None = None
    forwarded: list[tuple[int, bytes]] | None = None
    request_id = b""  # as sent, then settled by correlation.correlate
    traceparent = b""  # likewise
    tracestate: bytes | None = None
    user_agent: bytes | None = None
    response_headers: tuple[bytes, ...] = ()  # lines the gateway adds to the response
    # framing
    length = 0  # declared Content-Length (0: none)
    chunked = False
    has_body = False
    upgrade = False
    # the answer
    status = 0
    response_started = False
    response_done = False
    keep_alive = True
    upstream: Any = None  # the upstream connection carrying it, for flow control
    forwarding = False  # handed to the upstream pool, which will end it
    ended: asyncio.Future[None] | None = None  # for a task that awaits the forward
    upgrade_tail = b""
    # the body, while nobody takes it
    _chunks: list[bytes] | None = None
    _buffered = 0
    _sink: Callable[[bytes], None] | None = None
    _sink_end: Callable[[], None] | None = None
    _waiter: asyncio.Future[None] | None = None
    # what the log line and the metric say (app.py fills these)
    path: str | None = None
    route: Any = None
    access = "-"
    decision = "deny"
    reason: Reason | None = None
    user_id: str | None = None
    upstream_status: int | None = None
    upstream_s: float | None = None
    note: Any = None  # anything else a handler wants to log (webhook id and type, ...)
    original: Any = None  # forward-auth: the request the proxy asks about
    browser: Any = None  # a browser session's cookies, by Clerk's rules (clerk.handshake)

    def __init__(
        self,
        conn: ClientConnection,
        method: bytes,
        url: bytes,
        version11: bool,
        headers: list[tuple[bytes, bytes]],
        started: float,
    ) -> None:
        self.conn = conn
        self.method = method
        self.url = url
        self.version11 = version11
        self.headers = headers
        self.kept: list[bytes] = []
        self.started = started
        self.body_complete = True

    # ---- request facts ----------------------------------------------------------------------

    @property
    def client_ip(self) -> str:
        return self.conn.client_ip

    def header(self, lower_name: bytes) -> bytes | None:
        """The first value of a header read only on some paths (a scan, not an index)."""
        for name, value in self.headers:
            if len(name) == len(lower_name) and name.lower() == lower_name:
                return value
        return None

    # ---- request body -----------------------------------------------------------------------

    def feed_body(self, chunk: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(chunk)
            return
        if self._chunks is None:
            self._chunks = []
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)  # read_body() re-checks its limit on every chunk
        elif self._buffered > BODY_BUFFER:
            self.conn.pause_reading()

    def end_body(self) -> None:
        self.body_complete = True
        if self._sink_end is not None:
            self._sink_end()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def send_continue(self) -> None:
        """Answer `Expect: 100-continue` once the request is allowed: the client then
        sends its body (without it, curl waits a second before every upload)."""
        if (
            not self.body_complete
            and not self.response_started
            and self.expect is not None
            and self.expect.lower() == b"100-continue"
        ):
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def read_body(self, limit: int) -> bytes | None:
        """The whole body, or None as soon as it is larger than `limit`."""
        self.send_continue()
        while not self.body_complete:
            if self._buffered > limit:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            self.conn.resume_reading()
            await self._waiter
        self._waiter = None
        if self._buffered > limit:
            return None
        body = b"".join(self._chunks or ())
        self._chunks = None
        return body

    def pipe_body(
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

        for chunk in self._chunks or ():
            sink(chunk)
        self._chunks = None
        self._buffered = 0
        self.conn.resume_reading()
        if self.body_complete:
            end()
        else:
            self._sink, self._sink_end = sink, end

    # ---- the answer -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Response bytes, as they are (the upstream connection frames them)."""
        self.response_started = True
        self.conn.write(data)

    def reply(self, response: bytes, status: int) -> None:
        """A complete response of the gateway's own (responses.py builds the bytes, the
        same for every request: the request id goes in here)."""
        self.status = status
        self.response_started = True
        if self.method == b"HEAD":
            response = response[: response.index(b"\r\n\r\n") + 4]
        self.conn.write(with_request_id(response, self.request_id))
        self.response_done = True

    def finish(self) -> None:
        """The upstream's response is complete: the connection moves on."""
        self.response_done = True
        self.upstream = None
        if self.ended is None and self.conn._task is None:
            self.conn.exchange_done(self)  # the common case, without a hop through end()
        else:
            self.end()

    def abandon(self) -> None:
        """The response cannot be completed (upstream gone mid-body): a truncated body
        must never look complete, so the connection is cut."""
        self.upstream = None
        self.keep_alive = False
        self.conn.abort()
        self.end()

    def switch_protocols(self, upstream: asyncio.Transport, tail: bytes) -> None:
        self.response_done = True
        self.upstream = None
        self.conn.tunnel(upstream, tail, self.upgrade_tail)
        self.end()

    def end(self) -> None:
        """Forwarding is over (answered, failed or abandoned): wake a task waiting for it,
        or, with none, let the connection move on."""
        ended = self.ended
        if ended is not None and not ended.done():
            ended.set_result(None)
        if self.conn.task_for is not self:
            self.conn.exchange_done(self)


class ClientConnection(asyncio.Protocol):
    """One client TCP connection."""

    def __init__(self, handler: Handler, tracker: ConnectionTracker) -> None:
        self.handler = handler
        self.tracker = tracker
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.secure = False
        self.proto = b"http"
        self.trusted_for: Any = None  # the policy `trusted` was computed for
        self.trusted = False
        self._limits = tracker.limits
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._room = 0  # bytes the head may still take (its limit less what has arrived)
        self._line = 0  # bytes of the unfinished line of a head (llhttp buffers it)
        self._limit_hit: Reason | None = None
        self._receiving: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._tunnel: asyncio.Transport | None = None
        self.closing = False
        self._lingering = 0  # > 0: half-closed, dropping at most this many more bytes
        self.phase = FRESH
        self.since = 0.0  # loop time the phase began (for BODY: the last progress seen)
        self.progress = 0  # request-body reads, so the sweeper can tell a stall
        self.seen_progress = 0

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        self.client_ip_bytes = self.client_ip.encode("ascii", "replace")
        self.secure = transport.get_extra_info("sslcontext") is not None
        self.proto = b"https" if self.secure else b"http"
        self.since = self.loop.time()
        self.tracker.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.tracker.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client went away: so does the upstream request
        if self._tunnel is not None:
            self._tunnel.close()
        active = self._active
        if active is not None:
            self._active = None
            upstream = active.upstream
            if upstream is not None:
                active.upstream = None
                upstream.abort()  # its response has nowhere to go
            if self._task is None:
                self.handler.complete(active)  # a task records its own exchange
        receiving = self._receiving
        if (
            receiving is not None
            and not receiving.body_complete
            and receiving._waiter is not None
            and not receiving._waiter.done()
        ):
            receiving._waiter.set_exception(ConnectionResetError())

    def pause_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.pause_reading()
        elif self._active is not None and self._active.upstream is not None:
            self._active.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.resume_reading()
        elif self._active is not None and self._active.upstream is not None:
            self._active.upstream.resume_reading()

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
        # before any header, the unfinished line may be the request line: its URL, already
        # taken from the room, is not counted twice
        room = self._room if self._headers else self._room + len(self._url)
        if self._line > limits.max_header_bytes or self._line > room:
            self._refuse(Reason.REQUEST_HEADER_TOO_LARGE)

    # ---- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        limits = self._limits = self.tracker.limits  # a reload applies from the next request on
        self._room = limits.max_head_bytes
        self._url = b""
        self._headers = []
        self._line = 0
        self._limit_hit = None
        self.phase = HEAD
        self.since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._room -= len(url)
        if len(self._url) + 20 > self._limits.max_request_line_bytes:
            self._limit_hit = Reason.REQUEST_LINE_TOO_LONG
            raise httptools.HttpParserCallbackError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # once per header of every request: the limits as few operations as they can be
        size = len(name) + len(value) + 4
        room = self._room = self._room - size
        headers = self._headers
        if size > self._limits.max_header_bytes or room < 0 or len(headers) >= MAX_HEADERS:
            self._limit_hit = Reason.REQUEST_HEADER_TOO_LARGE
            raise httptools.HttpParserCallbackError("header too large")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise httptools.HttpParserCallbackError("unsupported HTTP version")
        method = parser.get_method()
        ex = Exchange(self, method, self._url, version == "1.1", self._headers, perf_counter())
        tracker = self.tracker
        # shutting down: this response says `Connection: close`, and the connection ends
        ex.keep_alive = parser.should_keep_alive() and tracker.accepting_keep_alive
        if self.trusted_for is not tracker.trust:
            self.trusted_for = tracker.trust  # a new policy: is the client trusted there?
            self.trusted = tracker.trust(self.client_ip)
        try:
            scan(self._headers, tracker.rules, self.trusted, ex)
        except ValueError:
            raise httptools.HttpParserCallbackError("ambiguous head") from None
        correlate(ex, self.trusted)
        if ex.content_length is not None:
            ex.length = int(ex.content_length)  # llhttp has checked it is digits
            ex.has_body = ex.length > 0
        if ex.transfer_encoding is not None:
            ex.chunked = ex.has_body = True
        if parser.should_upgrade():  # an Upgrade request, or any CONNECT
            if method == b"CONNECT" or ex.chunked or ex.length:
                # llhttp skips the body of an upgrade: its bytes would reach the upstream
                # as the next request (smuggling). A tunnel to anywhere is never ours.
                raise httptools.HttpParserCallbackError("upgrade with a body, or CONNECT")
            ex.upgrade = True
            ex.keep_alive = False  # an upgrade not tunnelled leaves the parser spent
        if ex.has_body:
            ex.body_complete = False
            self.phase = BODY
            self.since = self.loop.time()
            self.seen_progress = self.progress
        else:
            self.phase = BUSY
        self._receiving = ex
        if self._active is None:
            self._start(ex)
        else:
            self._queue.append(ex)  # pipelined: wait for the one before it
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._receiving is not None:
            self._receiving.feed_body(body)

    def on_message_complete(self) -> None:
        self.phase = BUSY
        receiving = self._receiving
        if receiving is not None and not receiving.body_complete:
            receiving.end_body()

    # ---- exchanges --------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        self._active = ex
        try:
            then = self.handler.handle(ex)
        except Exception:
            self._crashed(ex)
            return
        if then is not None:
            self._task = self.loop.create_task(self._run(ex, then))
        elif ex.response_done:
            self.exchange_done(ex)  # answered without any I/O
        elif not ex.forwarding:
            self._crashed(ex)  # neither answered nor forwarded: a bug, never a hang
        # else: forwarding; the upstream connection ends the exchange

    async def _run(self, ex: Exchange, then: Continuation) -> None:
        try:
            await then()
        except asyncio.CancelledError:
            if not self.closing:
                self.abort()  # we gave up: a partial response must not look whole
            self.handler.complete(ex)
            raise
        except Exception:
            self._task = None
            self._crashed(ex)
            return
        self._task = None
        if ex.response_done:
            self.exchange_done(ex)
        elif not ex.forwarding and self._active is ex:
            self._crashed(ex)  # a continuation that neither answered nor forwarded
        # else: the forward it started goes on, and ends the exchange

    def _crashed(self, ex: Exchange) -> None:
        """The handler raised: the application answers (500) and records it."""
        try:
            self.handler.crashed(ex)
        except Exception:
            log.exception("request handling failed, and so did answering it")
        if not ex.response_done:
            self.abort()
            self.handler.complete(ex)
            return
        ex.keep_alive = False
        self.exchange_done(ex)

    def exchange_done(self, ex: Exchange) -> None:
        """An exchange is over: record it, then close, or go on with the next one."""
        if self._active is not ex:
            return
        self._active = None
        self._task = None
        self.handler.complete(ex)
        if self._tunnel is not None:
            return
        if not ex.body_complete:
            self._linger()  # the client may still be sending the body we did not read
            return
        if not ex.keep_alive:
            self.close()
            return
        if self._queue:
            self._start(self._queue.popleft())
            if not self._queue:
                self.resume_reading()
            return
        if self.phase == BUSY:
            self.phase = IDLE
            self.since = self.loop.time()
        if self._paused:
            self.resume_reading()

    def _refuse(self, reason: Reason) -> None:
        """A request we cannot even parse, or a client too slow: answer, then close."""
        active = self._active
        if active is not None and active.response_started:
            self.abort()
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if active is not None and active.upstream is not None:
            active.upstream.abort()
            active.upstream = None
        receiving = self._receiving if self.phase == BODY else None
        # the exchange's own id, or, when the head itself is refused, a new one
        request_id = receiving.request_id if receiving is not None else new_request_id()
        self.tracker.refused(reason, self.client_ip, request_id)
        self.write(with_request_id(refusal_bytes(reason), request_id))
        self._linger()

    def _linger(self) -> None:
        """Close after a response while the client may still be sending: half-close, then
        read and drop its bytes for a moment. Closing a socket with unread bytes sends a
        reset, which can destroy the response before the client reads it (RFC 9112 9.6)."""
        transport = self.transport
        if transport is None or self.closing:
            return
        if not transport.can_write_eof():
            self.close()
            return
        self.closing = True
        self._lingering = LINGER_BYTES
        self.phase = TUNNEL  # no deadline of the sweeper's: the timer below ends it
        transport.write_eof()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self.loop.call_later(LINGER_S, transport.close)

    def timed_out(self) -> None:
        """Called by the sweeper when this connection's phase outlived its deadline."""
        if self.phase == HEAD:
            self._refuse(Reason.REQUEST_HEAD_TIMEOUT)
        elif self.phase == BODY:
            self._refuse(Reason.REQUEST_BODY_TIMEOUT)
        else:
            self.close()  # nothing was asked: nothing to answer

    def tunnel(self, upstream: asyncio.Transport, upstream_tail: bytes, client_tail: bytes) -> None:
        """After a 101: bytes flow both ways unparsed until either side closes."""
        self._tunnel = upstream
        self.phase = TUNNEL
        client = self.transport
        assert client is not None
        upstream.set_protocol(_Pipe(client))
        if upstream_tail:
            client.write(upstream_tail)
        if client_tail:
            upstream.write(client_tail)
        self.resume_reading()

    # ---- transport helpers ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closing:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closing:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closing = True
            self.transport.abort()

    def last_response(self) -> None:
        """Shutting down: the response not yet started is this connection's last."""
        active = self._active
        if active is not None and not active.response_started:
            active.keep_alive = False

    def finished_with(self, now: float) -> bool:
        """Draining: nothing here to answer, so closing loses nothing. An idle keep-alive
        connection; a tunnel (the client reconnects elsewhere); a connection that has sent
        nothing for a moment (a browser's preconnect). Not one with a request started."""
        phase = self.phase
        if phase == IDLE:
            return True
        if phase == TUNNEL:
            return self._tunnel is not None
        return phase == FRESH and now - self.since > FRESH_GRACE_S

    @property
    def busy(self) -> bool:
        return self._active is not None

    @property
    def task_for(self) -> Exchange | None:
        """The exchange a running task handles (it ends that exchange itself)."""
        return self._active if self._task is not None else None

    @property
    def reading_paused(self) -> bool:
        return self._paused


def _trust_nobody(client_ip: str) -> bool:
    return False


@dataclass
class ConnectionTracker:
    """Open client connections: their deadlines, draining on shutdown, refused requests;
    and what every connection reads from the running policy (limits, header rules, trust),
    replaced as a whole on reload (`follow`)."""

    limits: Limits = field(default_factory=Limits)
    rules: Any = None
    connections: set[ClientConnection] = field(default_factory=set)
    on_refused: Callable[[Reason, str, bytes], None] | None = None
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int = 1 << 20
    over_limit: int = 0  # connections closed at once because max_connections were open
    trust: Callable[[str], bool] = _trust_nobody  # replaced (as a new object) on reload
    accepting_keep_alive: bool = True
    _sweeper: asyncio.Task[None] | None = None
    _drain_deadline: float = 0.0

    def follow(self, limits: Limits, rules: Any, trust: Callable[[str], bool]) -> None:
        """The running policy's: every connection reads them from here (a new `trust`
        function per policy, so connections recompute whether their client is trusted)."""
        self.limits, self.rules, self.trust = limits, rules, trust

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
            limits = self.limits
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

    def refused(self, reason: Reason, client: str, request_id: bytes) -> None:
        if self.on_refused is not None:
            self.on_refused(reason, client, request_id)

    def stop_keep_alive(self) -> None:
        """Shutting down: every response from now on is its connection's last, so clients
        reconnect (to another pod once the endpoints are updated) instead of holding on."""
        self.accepting_keep_alive = False
        for conn in self.connections:
            conn.last_response()

    async def drain(self, within_s: float) -> int:
        """Once the listener accepts no more: close connections with nothing to answer,
        let every started request finish (its connection closes after the response), for
        at most `within_s`; then cut what is left. Returns how many were cut."""
        self.stop_keep_alive()
        loop = asyncio.get_running_loop()
        self._drain_deadline = loop.time() + within_s
        while self.connections:
            now = loop.time()
            if now >= self._drain_deadline:
                break
            for conn in list(self.connections):
                if conn.finished_with(now):
                    conn.close()
            await asyncio.sleep(DRAIN_POLL_S)
        cut = list(self.connections)
        for conn in cut:
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        return len(cut)

    def drain_timeout_now(self) -> None:
        """End a drain under way: what is still open is cut."""
        self._drain_deadline = 0.0


class _Pipe(asyncio.Protocol):
    """A tunnel's upstream side: its bytes go to the client unparsed."""

    def __init__(self, out: asyncio.Transport) -> None:
        self.out = out

    def data_received(self, data: bytes) -> None:
        self.out.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.close()

    def pause_writing(self) -> None:
        self.out.pause_reading()

    def resume_writing(self) -> None:
        self.out.resume_reading()
