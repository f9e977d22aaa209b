"""Running the gateway: listeners, signals (SIGHUP reload, SIGTERM drain), workers, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass

from aiohttp import web

from gateway.app import Gateway
from gateway.health import admin_app
from gateway.logs import configure
from gateway.settings import Address, Settings

log = logging.getLogger("clerk_gateway")

# aiohttp's own parser limits are a hard cap above the policy's limits, which the handler
# enforces with 414/431 (and which a reload can change).
PARSER_CAP = 65_536


@dataclass
class Listeners:
    gateway: Gateway
    public: web.BaseRunner
    admin: web.BaseRunner
    public_address: Address
    admin_address: Address

    async def close(self) -> None:
        # stop accepting on both ports, drain in-flight requests (up to shutdown_timeout)
        await self.public.cleanup()
        await self.admin.cleanup()
        await self.gateway.close()


async def start(
    gateway: Gateway,
    listen: Address,
    admin_listen: Address,
    *,
    drain_timeout_s: float = 30.0,
    reuse_port: bool = False,
) -> Listeners:
    await gateway.start()
    limits = gateway.runtime.policy.limits
    server = web.Server(
        gateway.handle,
        handler_cancellation=True,  # a client that goes away cancels the upstream request
        max_line_size=max(PARSER_CAP, limits.max_request_line_bytes),
        max_field_size=max(PARSER_CAP, limits.max_header_bytes),
        auto_decompress=False,  # bodies pass byte for byte
        access_log=None,
    )
    public = web.ServerRunner(server, shutdown_timeout=drain_timeout_s)
    await public.setup()
    site = web.TCPSite(public, listen.host, listen.port, reuse_port=reuse_port or None)
    await site.start()
    admin = web.AppRunner(
        admin_app(gateway.ready, gateway.metrics), access_log=None, shutdown_timeout=1.0
    )
    await admin.setup()
    admin_site = web.TCPSite(
        admin, admin_listen.host, admin_listen.port, reuse_port=reuse_port or None
    )
    await admin_site.start()
    return Listeners(gateway, public, admin, _bound(public, listen), _bound(admin, admin_listen))


def _bound(runner: web.BaseRunner, wanted: Address) -> Address:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return Address(wanted.host, int(address[1]))
    return wanted


async def run_until_stopped(settings: Settings, *, reuse_port: bool = False) -> int:
    gateway = Gateway(settings.config)
    try:
        listeners = await start(
            gateway,
            settings.listen,
            settings.admin_listen,
            drain_timeout_s=settings.drain_timeout_s,
            reuse_port=reuse_port,
        )
    except ValueError as exc:
        print(f"clerk-gateway: refusing to start, the policy is invalid:\n{exc}", file=sys.stderr)
        await gateway.close()
        return 1
    except OSError as exc:
        print(f"clerk-gateway: cannot listen: {exc}", file=sys.stderr)
        await gateway.close()
        return 1
    gateway.watch(settings.watch_interval_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gateway.reload()))
    log.info(
        "listening",
        extra={
            "public": str(listeners.public_address),
            "admin": str(listeners.admin_address),
            "policy": gateway.runtime.digest,
            "pid": os.getpid(),
        },
    )
    await stop.wait()
    log.info("draining", extra={"timeout_s": settings.drain_timeout_s})
    await listeners.close()
    return 0


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _worker(settings: Settings) -> None:
    configure()
    _use_uvloop()
    sys.exit(asyncio.run(run_until_stopped(settings, reuse_port=True)))


def serve(settings: Settings) -> int:
    configure()
    if settings.workers == 1:
        _use_uvloop()
        return asyncio.run(run_until_stopped(settings))
    # N processes share the ports with SO_REUSEPORT; the kernel spreads connections.
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=_worker, args=(settings,), daemon=False) for _ in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    codes = []
    for worker in workers:
        worker.join()
        codes.append(worker.exitcode or 0)
    return max(codes)
