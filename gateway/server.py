"""Running the gateway: listeners, signals (SIGHUP reload, SIGTERM drain), workers, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from multiprocessing.sharedctypes import Synchronized

from aiohttp import web

from gateway import build
from gateway.app import Gateway
from gateway.assertion import GENERATED_KEY_ENV, write_generated_key
from gateway.health import admin_app
from gateway.http1 import ClientConnection, ConnectionTracker
from gateway.logs import configure
from gateway.runtime import Runtime
from gateway.settings import Address, Settings
from gateway.shutdown import Shutdown

log = logging.getLogger("clerk_gateway")
GC_THRESHOLD = 10_000  # allocations between young-generation collections (default 700)


@dataclass
class Listeners:
    gateway: Gateway
    public: asyncio.Server
    tracker: ConnectionTracker
    admin: web.BaseRunner
    public_address: Address
    admin_address: Address
    drain_timeout_s: float = 30.0

    async def close(self) -> int:
        """Stop accepting on the public port, drain in-flight requests (bounded), then the
        admin port (which answered /readyz 503 all along). How many connections were cut."""
        self.public.close()
        cut = await self.tracker.drain(self.drain_timeout_s)
        await self.public.wait_closed()
        await self.admin.cleanup()
        await self.gateway.close()
        return cut


async def start(
    gateway: Gateway,
    listen: Address,
    admin_listen: Address,
    *,
    drain_timeout_s: float = 30.0,
    reuse_port: bool = False,
    mode: str | None = None,
    shutdown: Shutdown | None = None,
) -> Listeners:
    """Load the policy, start both listeners. `mode` ("proxy", "forward-auth") overrides
    the policy's `mode:`; once `shutdown` has a signal, /readyz says so."""
    if mode is not None:
        gateway.mode_override = mode
    await gateway.start()
    loop = asyncio.get_running_loop()
    tracker = ConnectionTracker(on_refused=gateway.refused, max_connections=raise_fd_limit())

    def follow(runtime: Runtime) -> None:
        tracker.follow(runtime.policy.limits, runtime.rules, runtime.trust)

    follow(gateway.runtime)
    gateway.on_reload.append(follow)
    public = await loop.create_server(
        lambda: ClientConnection(gateway, tracker),
        listen.host,
        listen.port,
        reuse_port=reuse_port or None,
        backlog=1024,
    )
    ready = gateway.ready if shutdown is None else shutdown.readiness(gateway.ready)
    admin = web.AppRunner(
        admin_app(ready, gateway.metrics, gateway.assertion_jwks),
        access_log=None,
        shutdown_timeout=1.0,
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


async def run_until_stopped(
    settings: Settings,
    *,
    reuse_port: bool = False,
    siblings: Callable[[], bool] | None = None,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> int:
    """Serve until SIGTERM, then stop without refusing anyone (shutdown.py). `siblings`:
    with --workers N, whether all N are running (a worker answers /readyz 503 while the
    supervisor restarts a dead sibling)."""
    gateway = Gateway(settings.config, mode=settings.mode)
    if siblings is not None:
        gateway.readiness_checks.append(
            lambda: (True, "ready") if siblings() else (False, "workers-missing")
        )
    shutdown = Shutdown()
    try:
        listeners = await start(
            gateway,
            settings.listen,
            settings.admin_listen,
            drain_timeout_s=settings.drain_timeout_s,
            reuse_port=reuse_port,
            shutdown=shutdown,
        )
    except ValueError as exc:
        # JSON like every other line: a log pipeline that parses lines must see this one
        log.error(
            "refusing to start: the policy is invalid",
            extra={"config": settings.config, "problems": str(exc).splitlines()},
        )
        await gateway.close()
        return 1
    except OSError as exc:
        log.error(
            "refusing to start: cannot listen",
            extra={
                "listen": str(settings.listen),
                "admin_listen": str(settings.admin_listen),
                "error": str(exc),
            },
        )
        await gateway.close()
        return 1
    gateway.watch(settings.watch_interval_s)
    # Everything allocated so far lives as long as the process: move it out of the
    # cyclic collector's sight, so collections on the request path stay short (p99).
    gc.collect()
    gc.freeze()
    # A verification fills the caches with objects that live minutes (claims, principals,
    # identity blocks): at the default threshold (700 allocations) a fresh token every
    # request runs a collection every few requests, 7% of a cache miss's instructions
    # (measured with callgrind). Almost nothing here forms cycles; what does (a failed
    # task's traceback) waits for one of ten thousand allocations instead.
    gc.set_threshold(GC_THRESHOLD, 10, 10)
    loop = asyncio.get_running_loop()
    for signum in stop_signals:
        loop.add_signal_handler(signum, shutdown.signal)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gateway.reload()))
    log.info(
        "listening",
        extra={
            "public": str(listeners.public_address),
            "admin": str(listeners.admin_address),
            "policy": gateway.runtime.policy.digest,
            "pid": os.getpid(),
            "build": build(),
            "loop": type(loop).__module__.split(".")[0],
        },
    )
    await shutdown.until(1)
    await stop(listeners, shutdown, settings)
    return 0


async def stop(listeners: Listeners, shutdown: Shutdown, settings: Settings) -> None:
    """After the first stop signal: /readyz already answers 503; keep serving for the
    delay (every response now closes its connection), then drain."""
    tracker = listeners.tracker
    log.info(
        "shutting down",
        extra={
            "delay_s": settings.shutdown_delay_s,
            "drain_timeout_s": settings.drain_timeout_s,
            "connections": len(tracker.connections),
        },
    )
    tracker.stop_keep_alive()
    if await shutdown.until(2, settings.shutdown_delay_s):
        log.info("shutdown delay cut short by a second signal")
    log.info(
        "draining",
        extra={"timeout_s": settings.drain_timeout_s, "connections": len(tracker.connections)},
    )
    closing = asyncio.ensure_future(listeners.close())
    third = asyncio.ensure_future(shutdown.until(3))
    await asyncio.wait((closing, third), return_when=asyncio.FIRST_COMPLETED)
    if third.done():
        log.info("drain cut short by a third signal")
        tracker.drain_timeout_now()
    third.cancel()
    cut = await closing
    log.info("stopped", extra={"connections_cut": cut})


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _worker(settings: Settings, running: Synchronized[int]) -> None:
    # Ctrl-C reaches the whole process group: the supervisor forwards it once, as SIGTERM,
    # so each press is one step of the stop sequence for every worker, not two
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure()
    _use_uvloop()
    siblings = partial(_all_running, running, settings.workers)
    sys.exit(
        _run_logged(
            run_until_stopped(
                settings, reuse_port=True, siblings=siblings, stop_signals=(signal.SIGTERM,)
            )
        )
    )


def _run_logged(main: Coroutine[None, None, int]) -> int:
    """asyncio.run, with a crash (a bug) logged as a JSON line with its traceback rather
    than printed as text a log pipeline cannot parse; exit 1, as Python's own."""
    try:
        return asyncio.run(main)
    except Exception:
        log.critical("crashed", exc_info=True)
        return 1


def _all_running(running: Synchronized[int], wanted: int) -> bool:
    return running.value >= wanted


FD_RESERVE = 256  # descriptors kept for the admin port, upstreams and key fetches


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; the number of client connections
    the public port may hold so that the admin port, upstream connections and key fetches
    still get descriptors when a flood of connections arrives."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(64, min(soft, 1 << 20) // 2 - FD_RESERVE)


def serve(settings: Settings) -> int:
    configure()
    if settings.workers == 1:
        _use_uvloop()
        return _run_logged(run_until_stopped(settings))
    return Supervisor(settings).run()


RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Supervisor:
    """N worker processes sharing the ports with SO_REUSEPORT (the kernel spreads
    connections); a worker that dies is restarted, and until it is back every worker's
    /readyz answers 503. A worker that refuses to start (exit 1: bad policy, port in use)
    is not restarted: the whole gateway stops with exit 1."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.running: Synchronized[int] = self.ctx.Value("i", 0)
        self.alive: list[multiprocessing.process.BaseProcess] = []
        self.stopping = False
        self.failed = False
        self._crashes = 0

    def _spawn(self) -> None:
        worker = self.ctx.Process(target=_worker, args=(self.settings, self.running))
        worker.start()
        self.alive.append(worker)
        self.running.value = len(self.alive)

    def _forward(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
            signum = signal.SIGTERM  # workers ignore SIGINT (see _worker)
        for worker in self.alive:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    def run(self) -> int:
        # one generated assertion key for every worker (used only when the policy wants an
        # assertion and has no key file): the JWKS must not depend on which worker answers
        with tempfile.TemporaryDirectory(prefix="clerk-gateway-") as private:
            os.environ[GENERATED_KEY_ENV] = write_generated_key(private)
            return self._run()

    def _run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        for _ in range(self.settings.workers):
            self._spawn()
        while self.alive:
            multiprocessing.connection.wait([w.sentinel for w in self.alive], timeout=1.0)
            for worker in [w for w in self.alive if w.exitcode is not None]:
                self.alive.remove(worker)
                self.running.value = len(self.alive)
                self._reap(worker)
        return 1 if self.failed else 0

    def _reap(self, worker: multiprocessing.process.BaseProcess) -> None:
        code = worker.exitcode or 0
        if self.stopping or self.failed:
            # a worker stopped by the signal itself (before its handlers were installed)
            # is a clean stop too; any other exit is a failure
            self.failed |= code not in (0, -signal.SIGTERM, -signal.SIGINT)
            return
        if code == 1:
            log.error("worker refused to start; stopping", extra={"pid": worker.pid})
            self.failed = True
            self._forward(signal.SIGTERM, None)
            return
        delay = RESTART_BACKOFF_S[min(self._crashes, len(RESTART_BACKOFF_S) - 1)]
        self._crashes += 1
        log.error(
            "worker died; restarting",
            extra={"pid": worker.pid, "exitcode": code, "restart_in_s": delay},
        )
        time.sleep(delay)  # signals still arrive: the handler sets `stopping`
        if not self.stopping:
            self._spawn()
