"""A real `/metrics` scrape: the gateway, the Clerk stand-in and an upstream on loopback, the
traffic an operator's dashboard and alerts are about (allowed, denied, redirected, a
handshake, webhooks delivered and refused, an upstream failure, reloads that succeed and
fail), then one GET of the admin port. What the chart's dashboard and alert rules name is
checked against this, never against a list written by hand."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import secrets
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.devclerk import DevClerk, SigningKey, new_rsa_key
from gateway.server import start
from gateway.settings import Address
from tests.integration.conftest import LOOPBACK, Upstream, policy_text

WITHIN_S = 60.0  # the whole run, start to scrape, is bounded


@dataclass(frozen=True)
class Scrape:
    text: str  # as served
    series: dict[str, frozenset[str]]  # sample name (histograms: the family's) -> its labels
    histograms: frozenset[str]  # histogram family names
    samples: tuple[tuple[str, dict[str, str], float], ...]

    def family(self, name: str) -> str | None:
        """The series or histogram family a PromQL metric name refers to, if exported."""
        if name in self.series:
            return name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if base != name and base in self.histograms:
                return base
        return None


def parse(text: str) -> Scrape:
    series: dict[str, set[str]] = {}
    histograms: set[str] = set()
    samples: list[tuple[str, dict[str, str], float]] = []
    for fam in text_string_to_metric_families(text):
        if fam.type == "histogram":
            histograms.add(fam.name)
        for sample in fam.samples:
            samples.append((sample.name, dict(sample.labels), sample.value))
            name = fam.name if fam.type == "histogram" else sample.name
            series.setdefault(name, set()).update(sample.labels)
    return Scrape(
        text,
        {k: frozenset(v) for k, v in series.items()},
        frozenset(histograms),
        tuple(samples),
    )


def scrape_after_traffic(tmp: Path) -> Scrape:
    """In a thread of its own (its own event loop, whatever the caller runs), bounded."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        text = pool.submit(asyncio.run, _traffic_then_scrape(tmp)).result(WITHIN_S + 10)
    return parse(text)


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    return runner, f"http://{LOOPBACK}:{port}"


async def _traffic_then_scrape(tmp: Path) -> str:
    async with asyncio.timeout(WITHIN_S):
        clerk = DevClerk(keys=[SigningKey("ins_scrape", new_rsa_key())])
        clerk.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        upstream = Upstream()
        clerk_runner, clerk_url = await _site(clerk.app())
        upstream_runner, upstream_url = await _site(upstream.app())

        class ClerkServer:  # what policy_text reads of a test server
            @staticmethod
            def make_url(path: str) -> str:
                return clerk_url + path

        text = policy_text(clerk, ClerkServer(), upstream_url)  # type: ignore[arg-type]
        off = "  handshake: false  # on in test_handshake.py; here a cookie is a plain token\n"
        assert off in text
        text = text.replace(off, "")  # Clerk's handshake on: its counter has series too
        policy = tmp / "routes.yaml"
        policy.write_text(text)
        gateway = Gateway(str(policy), env={})
        gateway.access_log.stream = io.StringIO()  # the scrape is the point, not the lines
        listeners = await start(gateway, Address(LOOPBACK, 0), Address(LOOPBACK, 0))
        try:
            assert gateway.keys is not None
            assert await gateway.keys.wait_ready(10)
            base = f"http://{LOOPBACK}:{listeners.public_address.port}"
            admin = f"http://{LOOPBACK}:{listeners.admin_address.port}"
            async with aiohttp.ClientSession() as http:
                await _traffic(http, base, clerk, upstream)
                policy.write_text(text + "  - {path: /x, access: maybe}\n")
                assert not await gateway.reload()  # rejected: the running policy stays
                policy.write_text(text)
                assert await gateway.reload()
                async with http.get(admin + "/metrics") as r:
                    assert r.status == 200
                    return await r.text()
        finally:
            upstream.release.set()
            await listeners.close()
            await upstream_runner.cleanup()
            await clerk_runner.cleanup()


async def _traffic(
    http: aiohttp.ClientSession, base: str, clerk: DevClerk, upstream: Upstream
) -> None:
    member = {"Authorization": f"Bearer {clerk.mint('user_scrape', role='member')}"}
    navigation = {"Accept": "text/html", "Sec-Fetch-Dest": "document"}
    event = clerk.user_event("user.created", first_name="Scrape")
    signed, body = clerk.signed_webhook(event)
    forged = {**signed, "svix-id": "msg_forged", "svix-signature": "v1,AAAA"}
    expected = [
        ("GET", "/public/x", {}, None, 200),  # allowed, anonymous
        ("GET", "/api/x", member, None, 200),  # allowed, signed in
        ("GET", "/api/x", {}, None, 401),  # denied
        ("GET", "/internal/x", {}, None, 403),  # denied by the policy
        ("GET", "/admin/x", {**member, **navigation}, None, 307),  # to unauthorized_url
        ("GET", "/api/x", navigation, None, 307),  # Clerk's handshake
        ("GET", "/dead/x", {}, None, 502),  # the upstream refused
        ("POST", "/api/webhooks/clerk", signed, body, 200),  # delivered
        ("POST", "/api/webhooks/clerk", forged, body, 400),  # refused
    ]
    for method, path, headers, data, status in expected:
        async with http.request(
            method, base + path, headers=headers, data=data, allow_redirects=False
        ) as r:
            await r.read()
            assert r.status == status, (method, path, r.status)
