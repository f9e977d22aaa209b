"""The admin listener: /healthz, /readyz, /metrics. A separate port, so the public one
never shadows an upstream path."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.metrics import Metrics

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


def admin_app(ready: Callable[[], tuple[bool, str]], metrics: Metrics) -> web.Application:
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

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
