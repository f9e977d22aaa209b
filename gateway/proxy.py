"""Forwarding to upstreams: streamed bodies both ways, WebSockets, pooled connections.

This is the narrow interface the rest of the gateway uses (`forward`, `websocket`,
`close`); the engine behind it is aiohttp's client, one pooled session per upstream.
Failures before the response starts become an UpstreamError carrying the Reason (502 or
504); after it starts, the client connection is aborted so that a truncated body can
never look complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Upstream
from gateway.decision import Reason
from gateway.headers import response_headers

log = logging.getLogger("clerk_gateway.proxy")

CHUNK = 64 * 1024
_NO_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type")


class UpstreamError(Exception):
    def __init__(self, reason: Reason, kind: str) -> None:
        super().__init__(kind)
        self.reason = reason
        self.kind = kind


def _classify(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError(Reason.UPSTREAM_TIMEOUT, "timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(Reason.UPSTREAM_UNREACHABLE, "connect")
    return UpstreamError(Reason.UPSTREAM_RESET, "reset")


class Forwarder:
    def __init__(self) -> None:
        self._sessions: dict[Upstream, aiohttp.ClientSession] = {}

    def _session(self, upstream: Upstream) -> aiohttp.ClientSession:
        session = self._sessions.get(upstream)
        if session is None or session.closed:
            session = self._sessions[upstream] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, ttl_dns_cache=60, enable_cleanup_closed=True
                ),
                auto_decompress=False,
                skip_auto_headers=_NO_AUTO_HEADERS,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._sessions[upstream]

    async def retire(self, keep: Sequence[Upstream]) -> None:
        """Close sessions of upstreams a reloaded policy no longer uses."""
        for upstream in [u for u in self._sessions if u not in keep]:
            await self._sessions.pop(upstream).close()

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    @staticmethod
    def url(upstream: Upstream, path_qs: str, *, websocket: bool = False) -> URL:
        scheme = upstream.scheme
        if websocket:
            scheme = "wss" if scheme == "https" else "ws"
        # encoded=True: the path goes out exactly as normalised, never re-quoted
        return URL(f"{scheme}://{authority(upstream)}{upstream.base_path}{path_qs}", encoded=True)

    async def forward(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        path_qs: str,
        headers: list[tuple[str, str]],
        *,
        body: bytes | None = None,
    ) -> tuple[web.StreamResponse, int]:
        """Send the request upstream and stream the answer back; returns (response, status)."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=upstream.connect_timeout_s, sock_read=upstream.read_timeout_s
        )
        data: object = body
        if body is None and request.body_exists:
            data = request.content
        try:
            upstream_resp = await self._session(upstream).request(
                request.method,
                self.url(upstream, path_qs),
                headers=CIMultiDict(headers),
                data=data,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
                chunked=None,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _classify(exc) from exc
        async with upstream_resp:
            response = web.StreamResponse(status=upstream_resp.status, reason=upstream_resp.reason)
            for name, value in response_headers(upstream_resp.headers.items()):
                response.headers.add(name, value)
            await response.prepare(request)
            try:
                async for chunk in upstream_resp.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = _classify(exc)
                log.warning(
                    "upstream failed mid-response",
                    extra={"upstream": upstream.name, "kind": error.kind},
                )
                if request.transport is not None:
                    request.transport.abort()  # a truncated body must not look complete
                raise error from exc
            await response.write_eof()
            return response, upstream_resp.status

    async def websocket(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        path_qs: str,
        headers: list[tuple[str, str]],
    ) -> web.WebSocketResponse:
        """Connect upstream first (a failure is a clean 502/504), then upgrade the client."""
        protocols = [
            p.strip()
            for v in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in v.split(",")
            if p.strip()
        ]
        headers = [(k, v) for k, v in headers if k.lower() != "sec-websocket-protocol"]
        try:
            upstream_ws = await self._session(upstream).ws_connect(
                self.url(upstream, path_qs, websocket=True),
                headers=CIMultiDict(headers),
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                autoping=True,
                compress=0,
                max_msg_size=0,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _classify(exc) from exc
        client_ws = web.WebSocketResponse(
            protocols=[upstream_ws.protocol] if upstream_ws.protocol else (),
            autoping=True,
            max_msg_size=0,
            compress=False,
        )
        try:
            await client_ws.prepare(request)
            await _pump(client_ws, upstream_ws)
        finally:
            await upstream_ws.close()
        return client_ws


async def _pump(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    async def relay(
        source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    ) -> None:
        async for msg in source:
            if msg.type is WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            else:
                break
        code = source.close_code or 1000
        with contextlib.suppress(Exception):
            await sink.close(code=code if 1000 <= code < 5000 else 1011)

    tasks = [
        asyncio.create_task(relay(client, upstream)),
        asyncio.create_task(relay(upstream, client)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def authority(upstream: Upstream) -> str:
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    default = 443 if upstream.scheme == "https" else 80
    return host if upstream.port == default else f"{host}:{upstream.port}"
