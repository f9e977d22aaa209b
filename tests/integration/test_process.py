"""The real command lines: `clerk-gateway run` (signals, drain) and `clerk-gateway demo`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.demo import free_port
from gateway.devclerk import DevClerk
from tests.helpers import GATEWAY_CLI
from tests.integration.conftest import LOOPBACK, Upstream

ROOT = Path(__file__).resolve().parents[2]


async def wait_http(url: str, within: float = 20.0) -> None:
    async with asyncio.timeout(within), aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def wait_refused(port: int, within: float = 10.0) -> None:
    """Until a new connection to `port` is refused (the listener has closed), bounded."""
    async with asyncio.timeout(within):
        while True:
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, port)
            except ConnectionRefusedError:
                return
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await asyncio.sleep(0.05)


async def readyz(http: aiohttp.ClientSession, admin: int) -> tuple[int, Any]:
    async with http.get(f"http://{LOOPBACK}:{admin}/readyz", headers={"Connection": "close"}) as r:
        return r.status, await r.json()


@pytest.fixture
async def held_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> tuple[Upstream, TestServer]:
    state = Upstream()
    return state, await aiohttp_server(state.app())


async def run_gateway(
    tmp_path: Path, clerk: DevClerk, upstream: TestServer, port: int, admin: int, *extra: str
) -> asyncio.subprocess.Process:
    """`clerk-gateway run` as a real process: networkless keys, /public/** to `upstream`."""
    policy = tmp_path / "routes.yaml"
    policy.write_text(
        "clerk:\n  jwt_key: ${CLERK_JWT_KEY}\n"
        f"upstream: {str(upstream.make_url('')).rstrip('/')}\n"
        "routes:\n  - {path: /public/**, access: public}\n"
    )
    return await asyncio.create_subprocess_exec(
        *GATEWAY_CLI,
        "run",
        "--config",
        str(policy),
        *extra,
        *("--listen", f"{LOOPBACK}:{port}", "--admin-listen", f"{LOOPBACK}:{admin}"),
        cwd=ROOT,
        env={**os.environ, "CLERK_JWT_KEY": clerk.signer.public_pem()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_sigterm_drains_an_in_flight_request(
    tmp_path: Path, devclerk: DevClerk, held_upstream: tuple[Upstream, TestServer]
) -> None:
    state, server = held_upstream
    port, admin = free_port(), free_port()
    proc = await run_gateway(
        tmp_path, devclerk, server, port, admin, "--drain-timeout", "10", "--shutdown-delay", "0"
    )
    try:
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        async with aiohttp.ClientSession() as http:
            in_flight = asyncio.create_task(http.get(f"http://{LOOPBACK}:{port}/public/held"))
            async with asyncio.timeout(10):
                while not state.requests:
                    await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            # no delay asked for: the listener closes at once, the request in flight drains
            await wait_refused(port)
            state.release.set()
            response = await asyncio.wait_for(in_flight, 10)
            assert response.status == 200
            assert await response.text() == "released"
            response.release()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        output = (await proc.stdout.read()).decode() if proc.stdout else ""
        assert '"msg":"draining"' in output
        assert devclerk.signer.public_pem().splitlines()[1] not in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def refused_start(
    tmp_path: Path, policy: str, env: dict[str, str] | None = None, *listen: str
) -> dict[str, Any]:
    """Start `clerk-gateway run` where it must refuse to start: exit 1, nothing on stderr,
    every line on stdout JSON; the error line, parsed."""
    path = tmp_path / "routes.yaml"
    path.write_text(policy)
    listen = listen or ("--listen", f"{LOOPBACK}:0", "--admin-listen", f"{LOOPBACK}:0")
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY_CLI,
        "run",
        "--config",
        str(path),
        *listen,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert err == b""
    lines = [json.loads(line) for line in out.decode().splitlines()]
    (error,) = [line for line in lines if line["level"] == "error"]
    assert error["logger"] == "clerk_gateway"
    assert error["msg"].startswith("refusing to start")
    return error


async def test_run_refuses_an_invalid_policy(tmp_path: Path) -> None:
    policy = "upstream: http://127.0.0.1:1\nroutes:\n  - {path: /x, access: maybe}\n"
    error = await refused_start(tmp_path, policy)
    assert error["msg"] == "refusing to start: the policy is invalid"
    assert error["config"] == str(tmp_path / "routes.yaml")
    assert any("routes[0].access: unknown access 'maybe'" in p for p in error["problems"])


async def test_run_names_an_unset_variable(tmp_path: Path) -> None:
    policy = "clerk:\n  secret_key: ${NOT_SET_ANYWHERE}\nupstream: http://127.0.0.1:1\n"
    env = {k: v for k, v in os.environ.items() if k != "NOT_SET_ANYWHERE"}
    error = await refused_start(tmp_path, policy, env)
    assert any("${NOT_SET_ANYWHERE} is not set" in p for p in error["problems"])


async def test_run_says_which_port_is_taken(tmp_path: Path, devclerk: DevClerk) -> None:
    taken = await asyncio.start_server(lambda r, w: None, LOOPBACK, 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        error = await refused_start(
            tmp_path,
            "clerk:\n  jwt_key: ${CLERK_JWT_KEY}\nupstream: http://127.0.0.1:1\n",
            {**os.environ, "CLERK_JWT_KEY": devclerk.signer.public_pem()},
            *("--listen", f"{LOOPBACK}:{port}", "--admin-listen", f"{LOOPBACK}:0"),
        )
    finally:
        taken.close()
        await taken.wait_closed()
    assert error["msg"] == "refusing to start: cannot listen"
    assert error["listen"] == f"{LOOPBACK}:{port}"
    assert "address already in use" in error["error"].lower()
    assert "BEGIN PUBLIC KEY" not in json.dumps(error)


async def test_demo_walkthrough_passes() -> None:
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY_CLI,
        "demo",
        "--port",
        "0",
        "--check",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.count("[ok]") == 10, text
    assert "FAILED" not in text


async def test_workers_share_the_port_and_stop_together(
    tmp_path: Path, devclerk: DevClerk, held_upstream: tuple[Upstream, TestServer]
) -> None:
    state, server = held_upstream
    port, admin = free_port(), free_port()
    proc = await run_gateway(
        tmp_path, devclerk, server, port, admin, "--workers", "2", "--shutdown-delay", "0"
    )
    try:
        assert proc.stdout is not None
        pids: set[int] = set()
        async with asyncio.timeout(30):
            while len(pids) < 2:  # both workers have bound the shared ports
                line = (await proc.stdout.readline()).decode()
                assert line, "the gateway exited early"
                if '"msg":"listening"' in line:
                    pids.add(json.loads(line)["pid"])
        async with aiohttp.ClientSession() as http:
            for i in range(20):
                # a new connection each time, so the kernel can pick either worker
                async with http.get(
                    f"http://{LOOPBACK}:{port}/public/{i}", headers={"Connection": "close"}
                ) as r:
                    assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        output = (await proc.stdout.read()).decode()
        assert output.count('"msg":"draining"') == 2  # both stopped gracefully
        assert len(state.requests) == 20
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_killed_worker_is_restarted_and_readyz_says_so_meanwhile(
    tmp_path: Path, devclerk: DevClerk, held_upstream: tuple[Upstream, TestServer]
) -> None:
    _, server = held_upstream
    port, admin = free_port(), free_port()
    proc = await run_gateway(
        tmp_path, devclerk, server, port, admin, "--workers", "2", "--shutdown-delay", "0"
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    async def next_listening() -> int:
        while True:
            line = (await stdout.readline()).decode()
            assert line, "the gateway exited early"
            if '"msg":"listening"' in line:
                pid: int = json.loads(line)["pid"]
                return pid

    try:
        async with asyncio.timeout(30):
            pids = {await next_listening(), await next_listening()}
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        statuses: list[int] = []
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            restarted = asyncio.create_task(next_listening())
            while not restarted.done():
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(
                        f"http://{LOOPBACK}:{admin}/readyz", headers={"Connection": "close"}
                    ) as r:
                        statuses.append(r.status)
                await asyncio.sleep(0.05)
            new_pid = await restarted
        assert new_pid not in pids
        assert 503 in statuses  # the surviving worker said a sibling was missing
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        output = (await stdout.read()).decode()
        assert output.count('"msg":"draining"') == 2  # the survivor and the new worker
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_reload_command_reloads_a_running_gateway(
    tmp_path: Path, devclerk: DevClerk, held_upstream: tuple[Upstream, TestServer]
) -> None:
    _, server = held_upstream
    port, admin = free_port(), free_port()
    proc = await run_gateway(tmp_path, devclerk, server, port, admin, "--shutdown-delay", "0")
    assert proc.stdout is not None
    try:
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        reload = await asyncio.create_subprocess_exec(
            *GATEWAY_CLI,
            "reload",
            "--pid",
            str(proc.pid),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(reload.communicate(), 30)
        assert reload.returncode == 0, out
        async with asyncio.timeout(10):
            while '"msg":"policy reloaded"' not in (await proc.stdout.readline()).decode():
                pass
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await proc.stdout.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_rejected_reload_is_a_json_line_and_the_gateway_keeps_serving(
    tmp_path: Path, devclerk: DevClerk, held_upstream: tuple[Upstream, TestServer]
) -> None:
    state, server = held_upstream
    state.release.set()
    port, admin = free_port(), free_port()
    proc = await run_gateway(tmp_path, devclerk, server, port, admin, "--shutdown-delay", "0")
    assert proc.stdout is not None
    try:
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        policy = tmp_path / "routes.yaml"
        policy.write_text(policy.read_text() + "  - {path: /x, access: maybe}\n")
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "the gateway exited"
                entry = json.loads(line)  # every line, JSON
                if entry["msg"].startswith("policy reload rejected"):
                    break
        assert entry["level"] == "error"
        assert any("unknown access 'maybe'" in p for p in entry["problems"])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{LOOPBACK}:{port}/public/x") as r:
                assert r.status == 200  # the running policy stayed
            async with http.get(f"http://{LOOPBACK}:{admin}/metrics") as r:
                # (the file watcher may have seen the edit too: one or two rejections)
                assert re.search(
                    r'^clerk_gateway_policy_reloads_total\{result="failure"\} [12]\.0$',
                    await r.text(),
                    re.MULTILINE,
                )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await proc.stdout.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ---- zero-downtime shutdown ------------------------------------------------------------------

DELAY_S = 3.0
DRAIN_S = 5.0
MARGIN_S = 0.8  # load stops this long before the delay ends: requests in the air then are fine


@dataclass
class Load:
    """What the clients saw: every outcome, and whether keep-alive clients were told to close."""

    sent: int = 0
    failures: list[str] = field(default_factory=list)
    told_to_close: set[int] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, base: str, n: int, *, keep_alive: bool, after: asyncio.Event) -> None:
        """Requests back to back until `stop`: over one pooled connection at a time
        (keep_alive), or each on a new connection."""
        connector = aiohttp.TCPConnector(limit=1, force_close=not keep_alive)
        async with aiohttp.ClientSession(connector=connector) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    async with http.get(f"{base}/public/c{n}-{i}") as r:
                        await r.read()
                        if r.status != 200:
                            self.failures.append(f"client {n} request {i}: {r.status}")
                        if keep_alive and after.is_set() and r.headers["Connection"] == "close":
                            self.told_to_close.add(n)
                except (aiohttp.ClientError, OSError) as exc:
                    self.failures.append(f"client {n} request {i}: {exc!r}")
                self.sent += 1


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_steady_stream_of_requests_through_sigterm_loses_none(
    tmp_path: Path,
    devclerk: DevClerk,
    held_upstream: tuple[Upstream, TestServer],
    workers: int,
) -> None:
    """What a rolling update does to a pod: SIGTERM while traffic flows. /readyz turns 503 at
    once; for the delay every request is still served (keep-alive clients are told to close
    and reconnect, new connections are accepted); then the listener closes, the request in
    flight finishes, and the process exits within delay + drain."""
    state, server = held_upstream
    port, admin = free_port(), free_port()
    proc = await run_gateway(
        tmp_path,
        devclerk,
        server,
        port,
        admin,
        *("--workers", str(workers)),
        *("--shutdown-delay", str(DELAY_S), "--drain-timeout", str(DRAIN_S)),
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[dict[str, Any]] = []

    async def read() -> None:
        # as it comes: a full pipe would block the gateway's writes (an access line each)
        while line := await stdout.readline():
            lines.append(json.loads(line))

    output = asyncio.create_task(read())
    base = f"http://{LOOPBACK}:{port}"
    loop = asyncio.get_running_loop()
    load = Load()
    signalled = asyncio.Event()
    clients: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.timeout(30):  # every worker is up
            while sum(1 for e in lines if e["msg"] == "listening") < workers:
                await asyncio.sleep(0.02)
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        clients = [
            asyncio.create_task(load.client(base, n, keep_alive=n < 4, after=signalled))
            for n in range(6)  # four keep-alive clients, two opening a connection per request
        ]
        async with asyncio.timeout(10):
            while load.sent < 50:  # the load is flowing before the signal
                await asyncio.sleep(0.02)
        assert load.failures == []
        before = load.sent

        proc.send_signal(signal.SIGTERM)
        signalled_at = loop.time()
        signalled.set()
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(1.0):  # "at once": well within the delay
                while (await readyz(http, admin))[0] != 503:
                    await asyncio.sleep(0.01)
            for _ in range(2 * workers):  # every worker says so (the port is shared)
                assert await readyz(http, admin) == (
                    503,
                    {"status": "not-ready", "reason": "shutting-down"},
                )
            # a slow request, accepted during the delay: the drain lets it finish
            held = asyncio.create_task(http.get(f"{base}/public/held"))
            clients.append(held)
            async with asyncio.timeout(5):
                while not any(r["raw_path"] == "/public/held" for r in state.requests):
                    await asyncio.sleep(0.02)
            await asyncio.sleep(max(0.0, signalled_at + DELAY_S - MARGIN_S - loop.time()))
            load.stop.set()
            async with asyncio.timeout(10):
                await asyncio.gather(*clients[:-1])
            assert load.failures == []  # none refused, none reset, every one a 200
            assert load.sent - before > 20  # and the stream did flow through the delay
            assert load.told_to_close == {0, 1, 2, 3}  # each keep-alive client was moved on

            await wait_refused(port, within=DELAY_S + 2)  # the delay is over: no new connections
            assert loop.time() - signalled_at >= DELAY_S - 0.5
            assert not held.done()  # still in flight, and not cut
            state.release.set()
            async with asyncio.timeout(DRAIN_S):
                response = await held
                assert (response.status, await response.text()) == (200, "released")
                response.release()
        assert await asyncio.wait_for(proc.wait(), DELAY_S + DRAIN_S + 5) == 0
        assert loop.time() - signalled_at < DELAY_S + DRAIN_S + 5
        await asyncio.wait_for(output, 5)
        for msg in ("shutting down", "draining", "stopped"):
            assert sum(1 for e in lines if e["msg"] == msg) == workers, msg
        assert all(e["connections_cut"] == 0 for e in lines if e["msg"] == "stopped")
        if workers == 1:  # (workers share stdout, and access lines name no pid)
            stamps = [e["ts"] for e in lines]
            assert stamps == sorted(stamps)  # access lines and the others, in time order
    finally:
        load.stop.set()
        state.release.set()
        for task in clients:
            task.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        output.cancel()


async def test_a_second_sigterm_cuts_the_delay_short(
    tmp_path: Path, devclerk: DevClerk, held_upstream: tuple[Upstream, TestServer]
) -> None:
    _, server = held_upstream
    port, admin = free_port(), free_port()
    proc = await run_gateway(tmp_path, devclerk, server, port, admin, "--shutdown-delay", "600")
    try:
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        proc.send_signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as http, asyncio.timeout(10):
            while (await readyz(http, admin))[0] != 503:
                await asyncio.sleep(0.02)
            async with http.get(f"http://{LOOPBACK}:{port}/public/still") as r:
                assert r.status == 200  # serving during the delay
                assert r.headers["Connection"] == "close"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert proc.stdout is not None
        output = (await proc.stdout.read()).decode()
        assert '"msg":"shutdown delay cut short by a second signal"' in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
