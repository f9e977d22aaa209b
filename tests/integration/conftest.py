"""Real loopback servers: an upstream that reports what it received, the Clerk stand-in,
and the gateway itself, each on an ephemeral port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.devclerk import DevClerk
from gateway.server import Listeners, start
from gateway.settings import Address

LOOPBACK = "127.0.0.1"


@dataclass
class Upstream:
    """What the upstream saw, for assertions."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    webhook_status: int = 200
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2**31)
        app.router.add_route("GET", "/ws/{tail:.*}", self.websocket)
        app.router.add_route("GET", "/slow/{tail:.*}", self.slow)
        app.router.add_route("GET", "/download/{size:[0-9]+}", self.download)
        app.router.add_route("POST", "/upload", self.upload)
        app.router.add_route("POST", "/api/webhooks/clerk", self.webhook)
        app.router.add_route("GET", "/public/held", self.held)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    def record(self, request: web.Request, **extra: Any) -> dict[str, Any]:
        entry = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": list(request.headers.items()),
            **extra,
        }
        self.requests.append(entry)
        return entry

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        entry = self.record(request, body=body.decode("latin-1"))
        return web.json_response(
            {k: v for k, v in entry.items()},
            headers={
                "Set-Cookie": "a=1",
                "X-Upstream": "yes",
                "Connection": "X-Secret-Hop",
                "X-Secret-Hop": "x",
            },
        )

    async def slow(self, request: web.Request) -> web.Response:
        self.record(request)
        await asyncio.sleep(float(request.query.get("s", "2")))
        return web.Response(text="slow")

    async def held(self, request: web.Request) -> web.Response:
        self.record(request)
        await self.release.wait()
        return web.Response(text="released")

    async def download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        block = pattern_block()
        sent = 0
        while sent < size:
            chunk = block[: min(len(block), size - sent)]
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
        return response

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        self.record(request, size=size)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.record(request, body=body.decode("utf-8", "replace"))
        return web.json_response({"ok": self.webhook_status < 300}, status=self.webhook_status)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        self.record(request)
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws


def pattern_block() -> bytes:
    return bytes(range(256)) * 4096  # 1 MiB, not all zeros


@pytest.fixture
async def upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> tuple[Upstream, TestServer]:
    state = Upstream()
    server = await aiohttp_server(state.app())
    return state, server


@pytest.fixture
async def clerk_server(
    devclerk: DevClerk, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> TestServer:
    devclerk.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    return await aiohttp_server(devclerk.app())


def policy_text(
    clerk: DevClerk, clerk_server: TestServer, upstream_url: str, extra: str = ""
) -> str:
    api = str(clerk_server.make_url("")).rstrip("/")
    return (
        textwrap.dedent(
            f"""\
        clerk:
          publishable_key: {clerk.publishable_key}
          secret_key: {clerk.secret_key}
          api_url: {api}
          authorized_parties: [{clerk.origin}]
          jwks_refresh_interval_s: 3600
          handshake: false  # on in test_handshake.py; here a cookie is a plain token
        webhooks:
          secrets: {clerk.webhook_secret}
          max_body_bytes: 65536
        upstream: {upstream_url}
        upstreams:
          dead:
            url: http://127.0.0.1:9
            connect_timeout_s: 1
          slow:
            url: {upstream_url}
            read_timeout_s: 0.5
          rewritten:
            url: {upstream_url}
            preserve_host: false
        role_claim: metadata.role
        trusted_proxies: [10.99.0.0/16]
        limits:
          max_header_bytes: 4096
          max_request_line_bytes: 2048
        routes:
          - {{path: [/, /public/**, /sign-in], access: public}}
          - {{path: /api/webhooks/clerk, methods: [POST], access: webhook}}
          - {{path: [/admin/**], access: admin}}
          - {{path: /dead/**, access: public, upstream: dead}}
          - {{path: /slow/**, access: public, upstream: slow}}
          - {{path: /rewritten/**, access: public, upstream: rewritten}}
          - {{path: /internal/**, access: deny}}
          - {{path: /pending-ok/**, access: protected, accept_pending: true}}
          - name: reports
            path: /reports/**
            access: protected
            require: {{org_permissions: [org:reports:read]}}
        """
        )
        + extra
    )


@dataclass
class Running:
    gateway: Gateway
    listeners: Listeners
    clerk: DevClerk
    upstream: Upstream
    policy_path: Path
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.listeners.public_address.port}"

    @property
    def admin(self) -> str:
        return f"http://{LOOPBACK}:{self.listeners.admin_address.port}"

    @property
    def port(self) -> int:
        return self.listeners.public_address.port

    async def get(self, path: str, token: str | None = None, **kw: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, token, **kw)

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> aiohttp.ClientResponse:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        resp = await self.http.request(
            method, self.base + path, headers=sent, allow_redirects=False, **kw
        )
        await resp.read()
        return resp


@pytest.fixture
def policy_edit() -> Callable[[str], str]:
    """How a test module changes the shared test policy: override this fixture."""
    return lambda text: text


@pytest.fixture
async def gw(
    devclerk: DevClerk,
    clerk_server: TestServer,
    upstream: tuple[Upstream, TestServer],
    tmp_path: Path,
    policy_edit: Callable[[str], str],
) -> AsyncIterator[Running]:
    state, server = upstream
    path = tmp_path / "routes.yaml"
    text = policy_text(devclerk, clerk_server, str(server.make_url("")).rstrip("/"))
    path.write_text(policy_edit(text))
    gateway = Gateway(str(path), env={})
    listeners = await start(gateway, Address(LOOPBACK, 0), Address(LOOPBACK, 0), drain_timeout_s=5)
    assert gateway.keys is not None
    assert await gateway.keys.wait_ready(5)
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        yield Running(gateway, listeners, devclerk, state, path, http)
    state.release.set()
    await listeners.close()


@contextlib.asynccontextmanager
async def raw_connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to the gateway, for bytes no HTTP client would send."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def raw_request(
    port: int, data: bytes, *, within: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """Send exact bytes (no client-side normalisation) and read one response."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(data)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            return status, headers, body
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_upstream(
    gw: Running,
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[None]:
    """A hand-written upstream behind the policy's `dead` upstream (routes /dead/**)."""
    server = await asyncio.start_server(serve, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    text = gw.policy_path.read_text().replace(
        "url: http://127.0.0.1:9\n", f"url: http://127.0.0.1:{port}\n"
    )
    gw.policy_path.write_text(text)
    assert await gw.gateway.reload()
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


def echoed(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    return data
