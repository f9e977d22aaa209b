"""The admin listener: /healthz, /readyz, /metrics, and the assertion keys at
/.well-known/jwks.json. A separate port, so the public one never shadows an upstream
path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.metrics import Metrics

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


def admin_app(
    ready: Callable[[], tuple[bool, str]],
    metrics: Metrics,
    jwks: Callable[[], Mapping[str, Any] | None] = lambda: None,
) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok, why = ready()
        return web.json_response(
            {"status": "ready" if ok else "not-ready", "reason": None if ok else why},
            status=200 if ok else 503,
        )

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def jwks_handler(request: web.Request) -> web.Response:
        # the assertion's public keys; short caching so a rotation reaches upstreams soon
        keys = jwks()
        if keys is None:
            return web.json_response({"error": "not_found", "reason": "no-assertion"}, status=404)
        return web.json_response(keys, headers={"Cache-Control": "public, max-age=300"})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
