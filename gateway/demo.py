"""`clerk-gateway demo`: the whole thing on a laptop, with no Clerk account.

Starts, on loopback only: the Clerk stand-in (keys, JWKS, token minting, signed
webhooks), the sample posts app from `examples/`, and the gateway on
`config/routes.yaml`. It then walks through the hardening checks itself and prints
copy-paste `curl` lines for an anonymous user, two members and an admin.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.app import Gateway
from gateway.devclerk import DevClerk
from gateway.devclerk import serve as serve_clerk
from gateway.logs import configure
from gateway.server import Listeners, start
from gateway.settings import Address

HOST = "127.0.0.1"


def checkout() -> Path:
    """The source checkout the demo takes its sample app and policy from: the one this
    package is installed from in editable mode (`make demo`), else the working directory
    (an installed wheel, run inside a checkout)."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "examples" / "posts_app.py").exists():
            return root
    raise SystemExit(
        "the demo needs a source checkout: run it from one (examples/posts_app.py not found)"
    )


@dataclass(frozen=True, slots=True)
class Ports:
    gateway: int
    admin: int
    clerk: int
    upstream: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _load_posts_app() -> ModuleType:
    path = checkout() / "examples" / "posts_app.py"
    spec = importlib.util.spec_from_file_location("clerk_gateway_demo_posts", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Demo:
    clerk: DevClerk
    listeners: Listeners
    runners: list[web.BaseRunner]
    ports: Ports
    webhook_secret: str

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.ports.gateway}"

    async def close(self) -> None:
        await self.listeners.close()
        for runner in self.runners:
            await runner.cleanup()


async def launch(ports: Ports, *, data_dir: str, config: str | None = None) -> Demo:
    origin = f"http://{HOST}:{ports.gateway}"
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    clerk = DevClerk(origin=origin)
    clerk.webhook_secret = webhook_secret
    clerk.webhook_url = f"{origin}/api/webhooks/clerk"
    clerk_runner = await serve_clerk(clerk, HOST, ports.clerk)
    frontend = clerk.frontend_url  # http://localhost:<port>: its own cookie jar in a browser
    assert frontend is not None
    posts = _load_posts_app()
    upstream = web.AppRunner(posts.make_app(str(Path(data_dir) / "posts.sqlite3")), access_log=None)
    await upstream.setup()
    await web.TCPSite(upstream, HOST, ports.upstream).start()
    env = {
        **os.environ,
        "CLERK_PUBLISHABLE_KEY": clerk.publishable_key,
        "CLERK_SECRET_KEY": clerk.secret_key,
        "CLERK_JWT_KEY": "",
        "CLERK_API_URL": f"http://{HOST}:{ports.clerk}",
        "CLERK_WEBHOOK_SECRET": webhook_secret,
        "UPSTREAM_URL": f"http://{HOST}:{ports.upstream}",
        "APP_ORIGIN": origin,
        # browsers reach the stand-in's frontend API (sign-in, handshake) on loopback
        "CLERK_PROXY_URL": frontend,
        "SIGN_IN_URL": f"{frontend}/sign-in",
    }
    gateway = Gateway(config or str(checkout() / "config" / "routes.yaml"), env=env)
    gateway.access_log.enabled = False  # keep the walkthrough and the curl lines readable
    listeners = await start(gateway, Address(HOST, ports.gateway), Address(HOST, ports.admin))
    assert gateway.keys is not None
    await gateway.keys.wait_ready(10)
    return Demo(clerk, listeners, [upstream, clerk_runner], ports, webhook_secret)


@dataclass(frozen=True, slots=True)
class Check:
    title: str
    passed: bool
    detail: str


async def walkthrough(demo: Demo) -> list[Check]:
    """The hardening guide's checks, run against the live demo."""
    base = demo.base
    checks: list[Check] = []
    alice = demo.clerk.mint("user_2alice", role="member")
    bob = demo.clerk.mint("user_2bob", role="member")
    admin = demo.clerk.mint("user_2admin", role="admin")
    browser = {"Accept": "text/html", "Sec-Fetch-Dest": "document"}

    def add(title: str, passed: bool, detail: str) -> None:
        checks.append(Check(title, passed, detail))

    async with aiohttp.ClientSession() as http:

        async def call(
            method: str,
            path: str,
            token: str | None = None,
            *,
            headers: dict[str, str] | None = None,
            data: bytes | None = None,
            json: object = None,
        ) -> aiohttp.ClientResponse:
            sent = dict(headers or {})
            if token:
                sent["Authorization"] = f"Bearer {token}"
            resp = await http.request(
                method, base + path, headers=sent, data=data, json=json, allow_redirects=False
            )
            await resp.read()
            return resp

        for check in await browser_story(demo, browser):
            checks.append(check)
        r = await call("GET", "/api/posts")
        add(
            "2. a protected API without auth returns 401",
            r.status == 401,
            f"{r.status} {await r.text()}",
        )
        r = await call("POST", "/api/webhooks/clerk", data=b'{"type":"user.created"}')
        add(
            "3. a webhook without valid Svix headers returns 400",
            r.status == 400,
            f"{r.status} {await r.text()}",
        )
        r = await call("GET", "/admin", alice, headers=browser)
        add(
            "4. /admin as a non-admin redirects to the unauthorized page",
            r.status == 307 and r.headers.get("Location") == "/unauthorized",
            f"{r.status} Location: {r.headers.get('Location')}",
        )
        r = await call("POST", "/api/posts", alice, json={"body": "hello from alice"})
        post_id = (await r.json())["id"]
        r = await call("DELETE", f"/api/posts/{post_id}", bob)
        add(
            "5. deleting another user's post returns 403 (the app decides)",
            r.status == 403,
            f"{r.status} {await r.text()}",
        )
        r = await call("DELETE", f"/api/posts/{post_id}", admin)
        add("   ...and an admin may delete it", r.status == 200, f"{r.status} {await r.text()}")
        r = await call(
            "GET",
            "/api/protected/me",
            alice,
            headers={"X-Clerk-User-Id": "user_2admin", "X-Clerk-Role": "admin"},
        )
        seen = (await r.json())["identity"]
        add(
            "   spoofed X-Clerk-* headers never reach the app",
            seen.get("X-Clerk-User-Id") == "user_2alice" and seen.get("X-Clerk-Role") == "member",
            f"app saw {seen}",
        )
        status = await demo.clerk.send_user_event(
            "user.created", first_name="Carol", email="carol@example.com"
        )
        r = await call("GET", "/api/admin/users", admin)
        users = await r.json()
        add(
            "6. a new user appears in the app's database (signed webhook)",
            status == 200 and any(u.get("first_name") == "Carol" for u in users),
            f"webhook {status}; users: {users}",
        )
    return checks


@dataclass(frozen=True, slots=True)
class Hop:
    status: int
    url: str


async def follow(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    data: dict[str, str] | None = None,
    limit: int = 10,
) -> tuple[list[Hop], str]:
    """What a browser does: follow redirects (a 303 becomes a GET), keeping cookies per
    host in the session's jar. Returns every hop and the final page's text."""
    hops: list[Hop] = []
    for _ in range(limit):
        async with http.request(
            method, url, headers=headers, data=data, allow_redirects=False
        ) as resp:
            text = await resp.text()
            hops.append(Hop(resp.status, url))
            location = resp.headers.get("Location")
            if resp.status not in (301, 302, 303, 307, 308) or location is None:
                return hops, text
        url = str(resp.url.join(URL(location)))
        if resp.status == 303:
            method, data = "GET", None
    return hops, ""


def _path_of(hop: Hop) -> str:
    parts = URL(hop.url)
    return f"{hop.status} {parts.host}:{parts.port}{parts.path}"


async def browser_story(demo: Demo, browser: dict[str, str]) -> list[Check]:
    """A browser with its own cookies: signed out, the handshake sends it to sign-in; it
    signs in on the stand-in and lands on /dashboard; with its session cookie gone (as when
    the 60 s token expires) the next page is refreshed through the handshake, no sign-in."""
    checks: list[Check] = []
    frontend = demo.clerk.frontend_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        hops, page = await follow(http, "GET", f"{demo.base}/dashboard", browser)
        at_sign_in = hops[-1].status == 200 and "Sign in" in page
        checks.append(
            Check(
                "1. /dashboard without signing in: Clerk's handshake, then the sign-in page",
                at_sign_in and any("/v1/client/handshake" in h.url for h in hops),
                " -> ".join(_path_of(h) for h in hops),
            )
        )
        form = {"user": "alice", "redirect_url": f"{demo.base}/dashboard"}
        hops, page = await follow(http, "POST", f"{frontend}/sign-in", browser, form)
        checks.append(
            Check(
                "   ...signing in on Clerk's page brings the browser back, signed in",
                "Welcome, user_2alice" in page,
                " -> ".join(_path_of(h) for h in hops),
            )
        )
        gateway_host = URL(demo.base).host or ""
        http.cookie_jar.clear(
            lambda c: c.key.startswith("__session") and c["domain"] in ("", gateway_host)
        )
        hops, page = await follow(http, "GET", f"{demo.base}/dashboard", browser)
        checks.append(
            Check(
                "   ...an expired session cookie is refreshed by the handshake, no sign-in",
                "Welcome, user_2alice" in page and not any("/sign-in" in h.url for h in hops),
                " -> ".join(_path_of(h) for h in hops),
            )
        )
    return checks


def curl_lines(demo: Demo) -> str:
    b, c = demo.base, f"http://{HOST}:{demo.ports.clerk}"

    def as_(who: str, query: str = "") -> str:
        # a fresh 60 s token on every line, so no line fails because an earlier one was slow
        return f"-H \"Authorization: Bearer $(curl -s '{c}/demo/token/{who}{query}')\""

    return f"""
In a browser: open {b}/dashboard, sign in on the stand-in's page as alice, bob or admin,
and come back signed in; the session outlives the 60 s tokens through Clerk's handshake.
{demo.clerk.frontend_url}/sign-out?redirect_url={b}/ signs the browser out.

Or with curl (each line fetches its own fresh token from the Clerk stand-in):

  # anonymous
  curl -i {b}/                                             # 200, public
  curl -i -H 'Accept: text/html' {b}/dashboard             # 307 to Clerk's handshake
  curl -i {b}/api/posts                                    # 401 {{"error":"unauthorized",...}}
  curl -i --path-as-is {b}/admin/../admin%2f               # 400 path-ambiguous
  curl -i {b}/ADMIN/users                                  # 400: a case-insensitive app would serve /admin

  # members alice and bob, and an admin
  curl -s {as_("alice")} {b}/api/protected/me                             # what the app sees
  curl -s {as_("alice")} -H 'X-Clerk-Role: admin' {b}/api/protected/me    # spoofing is stripped
  curl -i {as_("alice")} -H 'Accept: text/html' {b}/admin                 # 307 to /unauthorized
  curl -s {as_("alice")} {b}/api/posts -d '{{"body":"hi"}}'                # creates a post
  curl -i -X DELETE {as_("bob")} {b}/api/posts/2                          # 403 from the app
  curl -i -X DELETE {as_("admin")} {b}/api/posts/2                        # 200

  # organizations and custom claims: the stand-in mints them on request
  curl -s {as_("alice", "?org_id=org_1&org_role=admin&org_permissions=org:billing:manage")} {b}/api/protected/me   # org headers
  curl -s {as_("bob", "?org_id=org_1&org_role=member")} {b}/api/orgs/org_1/billing/x      # 403 org-role-required

  # webhooks: the stand-in signs a user.created event and sends it through the gateway
  curl -i -X POST {b}/api/webhooks/clerk -d '{{}}'            # 400 webhook-headers-missing
  curl -s -X POST {c}/demo/users -d '{{"first_name":"Dana"}}'  # signed user.created -> 200
  curl -s {as_("admin")} {b}/api/admin/users                 # Dana is in the app's database
  # to sign your own deliveries, the demo's webhook secret is: {demo.webhook_secret}

  # the gateway itself
  curl -s http://{HOST}:{demo.ports.admin}/readyz
  curl -s http://{HOST}:{demo.ports.admin}/metrics | grep clerk_gateway_requests
"""


async def main(
    port: int,
    check_only: bool,
    ready: Callable[[Demo], None] | None = None,
    config: str | None = None,
) -> int:
    ephemeral = port == 0
    ports = Ports(
        gateway=free_port() if ephemeral else port,
        admin=free_port() if ephemeral else 9090,
        clerk=free_port() if ephemeral else 8091,
        upstream=free_port() if ephemeral else 3000,
    )
    with tempfile.TemporaryDirectory(prefix="clerk-gateway-demo-") as data_dir:
        try:
            demo = await launch(ports, data_dir=data_dir, config=config)
        except OSError as exc:
            print(
                f"demo: cannot start ({exc}); is a port in use? try `clerk-gateway demo --port 0`",
                file=sys.stderr,
            )
            return 1
        try:
            print(
                f"\nclerk-gateway demo: gateway {demo.base}  admin http://{HOST}:{ports.admin}  "
                f"Clerk stand-in {demo.clerk.frontend_url}  app http://{HOST}:{ports.upstream}\n"
            )
            checks = await walkthrough(demo) if config is None else []
            if config is not None:
                print(f"  (the walkthrough assumes config/routes.yaml; running {config} as is)")
            for check in checks:
                print(f"  [{'ok' if check.passed else 'FAILED'}] {check.title}")
                print(f"         {check.detail}")
            failed = [c for c in checks if not c.passed]
            if check_only:
                return 1 if failed else 0
            print(curl_lines(demo))
            print("Press Ctrl-C to stop.")
            if ready is not None:
                ready(demo)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
            return 0
        finally:
            await demo.close()


def run_demo(port: int, check_only: bool = False, config: str | None = None) -> int:
    configure()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main(port, check_only, config=config))
    return 0
