"""The real command lines: `clerk-gateway run` (signals, drain) and `clerk-gateway demo`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.demo import free_port
from gateway.devclerk import DevClerk
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
        *(sys.executable, "-m", "gateway", "run", "--config", str(policy), *extra),
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
    proc = await run_gateway(tmp_path, devclerk, server, port, admin, "--drain-timeout", "10")
    try:
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        async with aiohttp.ClientSession() as http:
            in_flight = asyncio.create_task(http.get(f"http://{LOOPBACK}:{port}/public/held"))
            async with asyncio.timeout(10):
                while not state.requests:
                    await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(f"http://{LOOPBACK}:{port}/public/new"):
                    pass  # the listener is closed: no new requests during the drain
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


async def refused_start(tmp_path: Path, policy: str, env: dict[str, str] | None = None) -> str:
    """Start `clerk-gateway run` on a policy it must refuse; its stderr."""
    path = tmp_path / "routes.yaml"
    path.write_text(policy)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "run", "--config", str(path)),
        *("--listen", f"{LOOPBACK}:0", "--admin-listen", f"{LOOPBACK}:0"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    return err.decode()


async def test_run_refuses_an_invalid_policy(tmp_path: Path) -> None:
    policy = "upstream: http://127.0.0.1:1\nroutes:\n  - {path: /x, access: maybe}\n"
    assert "routes[0].access: unknown access 'maybe'" in await refused_start(tmp_path, policy)


async def test_run_names_an_unset_variable(tmp_path: Path) -> None:
    policy = "clerk:\n  secret_key: ${NOT_SET_ANYWHERE}\nupstream: http://127.0.0.1:1\n"
    env = {k: v for k, v in os.environ.items() if k != "NOT_SET_ANYWHERE"}
    assert "${NOT_SET_ANYWHERE} is not set" in await refused_start(tmp_path, policy, env)


async def test_demo_walkthrough_passes() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
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
    proc = await run_gateway(tmp_path, devclerk, server, port, admin, "--workers", "2")
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
    proc = await run_gateway(tmp_path, devclerk, server, port, admin, "--workers", "2")
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
    proc = await run_gateway(tmp_path, devclerk, server, port, admin)
    assert proc.stdout is not None
    try:
        await wait_http(f"http://{LOOPBACK}:{admin}/readyz")
        reload = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "reload", "--pid", str(proc.pid)),
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
