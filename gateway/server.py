"""Running the gateway: listeners, signals (SIGHUP reload, SIGTERM drain), workers, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass

from aiohttp import web

from gateway.app import Gateway
from gateway.health import admin_app
from gateway.http1 import ClientConnection, ConnectionTracker
from gateway.logs import configure
from gateway.settings import Address, Settings

log = logging.getLogger("clerk_gateway")


@dataclass
class Listeners:
    gateway: Gateway
    public: asyncio.Server
    tracker: ConnectionTracker
    admin: web.BaseRunner
    public_address: Address
    admin_address: Address
    drain_timeout_s: float = 30.0

    async def close(self) -> None:
        # stop accepting on the public port, drain in-flight requests (bounded), then admin
        self.public.close()
        await self.tracker.drain(self.drain_timeout_s)
        await self.public.wait_closed()
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
    loop = asyncio.get_running_loop()
    tracker = ConnectionTracker(limits=gateway.limits, on_refused=gateway.refused)
    public = await loop.create_server(
        lambda: ClientConnection(gateway.handle, gateway.limits, tracker),
        listen.host,
        listen.port,
        reuse_port=reuse_port or None,
        backlog=1024,
    )
    admin = web.AppRunner(
        admin_app(gateway.ready, gateway.metrics), access_log=None, shutdown_timeout=1.0
    )
    await admin.setup()
    admin_site = web.TCPSite(
        admin, admin_listen.host, admin_listen.port, reuse_port=reuse_port or None
    )
    await admin_site.start()
    public_port = int(public.sockets[0].getsockname()[1])
    return Listeners(
        gateway,
        public,
        tracker,
        admin,
        Address(listen.host, public_port),
        _bound(admin, admin_listen),
        drain_timeout_s,
    )


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
    # Everything allocated so far lives as long as the process: move it out of the
    # cyclic collector's sight, so collections on the request path stay short (p99).
    gc.collect()
    gc.freeze()
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
            "policy": gateway.runtime.policy.digest,
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
    failed = False
    for worker in workers:
        worker.join()
        # a worker stopped by the signal itself (before its handlers were installed) is a
        # clean stop too; any other non-zero exit is a failure
        code = worker.exitcode or 0
        failed |= code not in (0, -signal.SIGTERM, -signal.SIGINT)
    return 1 if failed else 0
