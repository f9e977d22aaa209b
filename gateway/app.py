"""The gateway: one request from its parsed head to a response or a forward, and reloads.

One request: locate (normalise the target once, match the route; cached per target),
extract the credentials, ask the verified-token cache (verify on a miss; await only for a
key fetch), decide (decide.py, the one decision), then answer from responses.py or hand
the request to the upstream pool with the identity block built once per token. Where
nothing must be awaited this all runs inside the parser's callback: no task. Every
request ends in one metrics increment and one access-log line, labelled with the same
reason code the client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from gateway.accesslog import AccessLog
from gateway.clerk.jwks import KeyCache, KeyCacheStats
from gateway.clerk.tokens import Extracted, extract, token_from_authorization
from gateway.clerk.verifier import SessionVerifier, Verified
from gateway.config import load_policy
from gateway.decide import Located, decide, locate
from gateway.decision import Access, Decision, Reason
from gateway.forwardauth import Original, allowed, for_nginx, original_request
from gateway.headers import HeaderRules, forwarded_lines, upstream_head
from gateway.http1 import Continuation, Exchange
from gateway.identity import header_block, identity_values
from gateway.metrics import Metrics
from gateway.model import FORWARD_AUTH, ClerkSettings, Policy, Upstream
from gateway.responses import Denial, denial, is_navigation, render, status_of
from gateway.routes import Route, host_without_port
from gateway.upstream import Pool, UpstreamFailure, authority
from gateway.webhooks import DeliveryRecord, event_type, read_headers, secret_bytes
from gateway.webhooks import verify as verify_webhook

log = logging.getLogger("clerk_gateway")

_CACHED = 4096  # targets and cookie headers remembered per policy
Decided = Callable[["Exchange", "Runtime", Located, "Verified | Reason | None", bool], None]
_DEFAULT_LABEL = ("default", '"default"')


class Forwarding:
    """What a located target means for the proxy, derived once per target and policy:
    the log label, the upstream, and the request target and Host it receives."""

    __slots__ = ("host", "label", "path", "target", "upstream")

    def __init__(
        self, located: Located, policy: Policy, url: bytes, label: tuple[str, str]
    ) -> None:
        route = located.route
        upstream = policy.upstreams[route.upstream if route is not None else "default"]
        self.upstream = upstream
        self.label = label
        self.path = located.target.path
        # the normalised path after the upstream's base, and the query exactly as received
        _, mark, query = url.partition(b"?")
        self.target = (
            upstream.base_path.encode("ascii")
            + located.target.path.encode("ascii")
            + (mark + query if mark else b"")
        )
        self.host = None if upstream.preserve_host else authority(upstream).encode("ascii")


class Runtime:
    """Everything derived from one policy; swapped atomically on reload."""

    def __init__(self, policy: Policy, keys: KeyCache, deliveries: DeliveryRecord) -> None:
        self.policy = policy
        self.verifier = SessionVerifier(policy.clerk, keys, policy.role_claim)
        self.rules = HeaderRules(policy.identity_headers.names(), policy.strip_headers)
        self.webhook_secrets = tuple(secret_bytes(s) for s in policy.webhooks.secrets)
        self.deliveries = deliveries
        self.labels: dict[int, tuple[str, str]] = {
            r.index: (r.label, json.dumps(r.label)) for r in policy.routes
        }
        self.default_label = ("default", '"default"')
        networks = policy.trusted_proxies

        def trust(client_ip: str) -> bool:
            if not networks or not client_ip:
                return False
            try:
                ip = ipaddress.ip_address(client_ip)
            except ValueError:
                return False
            return any(ip in net for net in networks)

        self.trust = trust  # a new function per policy: connections re-check on reload
        self._located: dict[tuple[bytes, bytes, bytes], Located | Reason] = {}
        self._cookies: dict[bytes, Extracted] = {}

    def locate(self, method: bytes, host: bytes, url: bytes) -> Located | Reason:
        """`decide.locate`, remembered per (method, host, target)."""
        key = (method, host, url)
        found = self._located.get(key)
        if found is None:
            host_name = host_without_port(host.decode("latin-1"))
            target = url.decode("utf-8", "surrogateescape")
            found = locate(self.policy, method.decode("latin-1"), host_name, target)
            if isinstance(found, Located):
                route = found.route
                label = self.labels[route.index] if route is not None else _DEFAULT_LABEL
                found.engine = Forwarding(found, self.policy, url, label)
            if len(self._located) < _CACHED:
                self._located[key] = found
        return found

    def from_cookie(self, cookie: bytes) -> Extracted:
        """This instance's session cookie (Clerk's rules), remembered per Cookie header."""
        found = self._cookies.get(cookie)
        if found is None:
            found = extract(
                None,
                parse_cookies(cookie.decode("latin-1")),
                self.policy.clerk.publishable_key,
                time.time(),
                self.verifier.peek,
            )
            if len(self._cookies) < _CACHED:
                self._cookies[cookie] = found
        return found

    def label(self, route: Route | None) -> tuple[str, str]:
        return self.labels[route.index] if route is not None else self.default_label


def _key_source(settings: ClerkSettings) -> tuple[object, ...]:
    return (
        settings.jwt_key,
        settings.jwks_url,
        settings.secret_key,
        settings.api_url,
        settings.jwks,
    )


class Gateway:
    """The application behind the listener (http1.Handler)."""

    def __init__(
        self,
        config_path: str,
        *,
        env: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        mode: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.env = env
        self.mode_override = mode  # the command line's --mode, over the file's `mode:`
        self.metrics = metrics or Metrics()
        self.access_log = AccessLog()
        self._pool: Pool | None = None
        self.keys: KeyCache | None = None
        self._runtime: Runtime | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._file_state: tuple[float, int] | None = None
        self._reload_lock = asyncio.Lock()
        self.readiness_checks: list[Callable[[], tuple[bool, str]]] = []
        self.on_reload: list[Callable[[Runtime], None]] = []

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(self._upstream_failed, self.metrics.upstream_latency)
        return self._pool

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the policy (raising ValueError with every problem when invalid) and keys."""
        result = load_policy(self.config_path, for_run=True, env=self.env, mode=self.mode_override)
        if result.policy is None:
            raise ValueError("\n".join(str(p) for p in result.errors))
        if result.policy.mode == FORWARD_AUTH:
            self.handle = self.handle_forward_auth  # type: ignore[method-assign]
        for warning in result.warnings:
            log.warning("policy warning", extra={"problem": str(warning)})
        self._file_state = self._stat()
        self.keys = self._new_keys(result.policy.clerk)
        self._install(
            Runtime(result.policy, self.keys, DeliveryRecord(result.policy.webhooks.remember_s))
        )
        self.metrics.watch_keys(self._key_stats)
        await self.keys.start()

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.keys is not None:
            await self.keys.close()
        if self._pool is not None:
            self._pool.close()
        self.access_log.flush()

    def _key_stats(self) -> KeyCacheStats:
        assert self.keys is not None
        return self.keys.stats()

    def _new_keys(self, settings: ClerkSettings) -> KeyCache:
        keys = KeyCache(settings)
        keys.on_fetch = self.metrics.count_jwks_fetch
        return keys

    def _install(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.metrics.policy_digest = runtime.policy.digest
        for hook in self.on_reload:
            hook(runtime)

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "Gateway.start() first"
        return self._runtime

    def ready(self) -> tuple[bool, str]:
        if self._runtime is None:
            return False, "policy-not-loaded"
        if self.keys is None or not self.keys.usable():
            return False, Reason.JWK_REMOTE_FAILED_TO_LOAD.value
        for check in self.readiness_checks:
            ok, why = check()
            if not ok:
                return False, why
        return True, "ready"

    # ---- reloads ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Validate the file and swap atomically; an invalid file keeps the running policy."""
        async with self._reload_lock:
            result = load_policy(
                self.config_path, for_run=True, env=self.env, mode=self.mode_override
            )
            self._file_state = self._stat()
            if result.policy is not None and result.policy.mode != self.runtime.policy.mode:
                self.metrics.count_reload(False)
                log.error(
                    "policy reload rejected: `mode` changes what the listener answers; "
                    "restart the gateway to change it",
                    extra={"running": self.runtime.policy.mode, "new": result.policy.mode},
                )
                return False
            if result.policy is None:
                self.metrics.count_reload(False)
                log.error(
                    "policy reload rejected; keeping the running policy",
                    extra={"problems": [str(p) for p in result.errors]},
                )
                return False
            old = self.runtime
            keys = self.keys
            assert keys is not None
            if _key_source(result.policy.clerk) != _key_source(old.policy.clerk):
                # a new key source is used only once its keys are held: a reload must
                # never lock every signed-in user out (fleet-wide, with a shared ConfigMap)
                keys = self._new_keys(result.policy.clerk)
                await keys.start()
                if not await keys.wait_first_fetch():
                    await keys.close()
                    self.metrics.count_reload(False)
                    log.error(
                        "policy reload rejected: the new key source gave no usable keys; "
                        "keeping the running policy",
                        extra={"jwks_url": result.policy.clerk.jwks_url},
                    )
                    return False
            same_window = result.policy.webhooks.remember_s == old.policy.webhooks.remember_s
            deliveries = (
                old.deliveries if same_window else DeliveryRecord(result.policy.webhooks.remember_s)
            )
            self._install(Runtime(result.policy, keys, deliveries))
            if keys is not self.keys:
                previous, self.keys = self.keys, keys
                if previous is not None:
                    await previous.close()
            self.pool.retire(list(result.policy.upstreams.values()))
            self.metrics.count_reload(True)
            log.info(
                "policy reloaded",
                extra={"policy": result.policy.digest, "routes": len(result.policy.routes)},
            )
            return True

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def watch(self, interval_s: float) -> None:
        """Reload when the file changes (a Kubernetes ConfigMap update swaps a symlink)."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                state = self._stat()
                if state is not None and state != self._file_state:
                    await self.reload()

        self._watch_task = asyncio.create_task(loop(), name="policy-watch")

    # ---- one request (http1.Handler) --------------------------------------------------------

    def handle(self, ex: Exchange) -> Continuation | None:
        """Decide synchronously where no I/O is needed (every denial, cached or held-key
        verifications) and forward on a pooled connection; else return what to run in a
        task (a key fetch, a webhook body)."""
        rt = self._runtime
        assert rt is not None
        return self._authorize(ex, rt, rt.locate(ex.method, ex.host, ex.url), self._decided)

    def handle_forward_auth(self, ex: Exchange) -> Continuation | None:
        """Forward-auth mode: decide the request a trusted proxy describes, and answer."""
        rt = self._runtime
        assert rt is not None
        if not ex.conn.trusted:
            self._deny(ex, rt, Reason.PROXY_UNTRUSTED)
            return None
        original = original_request(ex.headers)
        if not isinstance(original, Original):
            self._deny(ex, rt, original)
            return None
        ex.original = original
        located = rt.locate(original.method, original.host, original.target)
        return self._authorize(ex, rt, located, self._answered)

    def _authorize(
        self, ex: Exchange, rt: Runtime, located: Located | Reason, then: Decided
    ) -> Continuation | None:
        """The one sequence both modes run: locate, the credentials, verification (cached,
        else with held keys, else in a task for a key fetch), then `then` decides."""
        if not isinstance(located, Located):
            self._deny(ex, rt, located)
            return None
        forwarding = located.engine
        ex.path = forwarding.path
        ex.route = forwarding.label
        ex.access = located.access  # a StrEnum: the member is its string
        if located.access is Access.DENY:
            self._deny(ex, rt, Reason.ROUTE_DENIED)
            return None
        if located.access is Access.WEBHOOK:
            if ex.original is not None:  # forward-auth: `check` refuses such a policy
                self._deny(ex, rt, Reason.ROUTE_DENIED)
                return None
            return partial(self._webhook, ex, rt, located)
        auth = ex.authorization
        if auth is None:
            token = None
        elif auth[:7] == b"Bearer ":
            token = auth[7:].strip().decode("latin-1") or None
        else:
            token = token_from_authorization(auth.decode("latin-1"))
        if token is None and ex.cookie is not None:
            token = rt.from_cookie(ex.cookie).token
        if token is None:
            then(ex, rt, located, None, False)
            return None
        verifier = rt.verifier
        outcome = verifier.cached(token)
        if outcome is None:
            outcome = verifier.verify_now(token)
            if outcome is None:
                return partial(self._verify_then, ex, rt, located, token, then)
        then(ex, rt, located, outcome, True)
        return None

    async def _verify_then(
        self, ex: Exchange, rt: Runtime, located: Located, token: str, then: Decided
    ) -> None:
        then(ex, rt, located, await rt.verifier.verify(token), True)

    def _decision(self, located: Located, outcome: Verified | Reason | None) -> Decision:
        if outcome.__class__ is Verified:
            assert isinstance(outcome, Verified)
            # a session asks for the same target again and again: its decision is remembered
            last = outcome.last
            decision: Decision
            if last is not None and last[0] is located:
                decision = last[1]
            else:
                decision = decide(located, outcome.principal)
                outcome.last = (located, decision)
            return decision
        return decide(located, outcome)  # type: ignore[arg-type]

    def _identity(
        self, rt: Runtime, outcome: Verified | Reason | None, decision: Decision
    ) -> bytes:
        """The identity header block for an allowed decision, built once per token."""
        principal = decision.principal
        if principal is None:
            return b""
        assert isinstance(outcome, Verified)
        identity: bytes | None = outcome.identity
        if identity is None or outcome.identity_for is not rt:
            identity = header_block(identity_values(principal, rt.policy.identity_headers))
            outcome.identity, outcome.identity_for = identity, rt
        return identity

    def _decided(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        outcome: Verified | Reason | None,
        token_given: bool,
    ) -> None:
        """Proxy mode: forward an allowed request, answer a denied one."""
        decision = self._decision(located, outcome)
        if decision.principal is not None:
            ex.user_id = decision.principal.user_id
        if not decision.allowed:
            self._deny_decision(ex, rt, decision, token_given)
            return
        self._forward(ex, located, self._identity(rt, outcome, decision))

    def _answered(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        outcome: Verified | Reason | None,
        token_given: bool,
    ) -> None:
        """Forward-auth mode: 200 with the identity headers, or the denial."""
        decision = self._decision(located, outcome)
        if decision.principal is not None:
            ex.user_id = decision.principal.user_id
        if not decision.allowed:
            self._deny_decision(ex, rt, decision, token_given)
            return
        ex.decision = "allow"
        ex.reply(allowed(self._identity(rt, outcome, decision), ex.keep_alive), 200)

    def _forward(
        self, ex: Exchange, located: Located, identity: bytes, body: bytes | None = None
    ) -> None:
        forwarding: Forwarding = located.engine
        conn = ex.conn
        head = upstream_head(
            ex,
            forwarding.target,
            conn.client_ip_bytes,
            conn.proto,
            forwarding.host,
            identity,
            _framing(ex, body) if ex.has_body or ex.upgrade or body is not None else b"",
        )
        ex.decision = "allow"
        self.metrics.in_flight += 1
        (self._pool or self.pool).forward(ex, forwarding.upstream, head, body)

    # ---- answers of our own -----------------------------------------------------------------

    def _deny_decision(
        self, ex: Exchange, rt: Runtime, decision: Decision, token_given: bool
    ) -> None:
        assert decision.reason is not None
        self._deny(ex, rt, decision.reason, token_given=token_given)

    def _deny(
        self, ex: Exchange, rt: Runtime, reason: Reason, *, token_given: bool = False
    ) -> None:
        policy = rt.policy
        navigation = False
        original = ""
        forward_auth: Original | None = ex.original
        if status_of(reason) in (401, 403):
            method = forward_auth.method if forward_auth is not None else ex.method
            navigation = is_navigation(
                method.decode("latin-1"),
                _text(ex.header(b"sec-fetch-dest")),
                _text(ex.header(b"accept")),
            )
            if navigation and ex.path is not None:
                original = forward_auth.url if forward_auth is not None else self._original_url(ex)
        plan = denial(
            reason,
            navigation=navigation,
            sign_in_url=policy.sign_in_url,
            unauthorized_url=policy.unauthorized_url,
            original_url=original,
        )
        extra: tuple[bytes, ...] = ()
        if forward_auth is not None and forward_auth.nginx:
            plan, extra = for_nginx(plan)
        self._answer(ex, plan, token_given=token_given, extra=extra)

    def _answer(
        self,
        ex: Exchange,
        plan: Denial,
        *,
        token_given: bool = False,
        extra: tuple[bytes, ...] = (),
    ) -> None:
        ex.reason, ex.decision = plan.reason, plan.kind
        if extra:
            ex.decision = "redirect"  # the nginx form of a redirect
        if not ex.body_complete:
            ex.keep_alive = False  # an unread body cannot be skipped safely: close after
        response = render(plan, keep_alive=ex.keep_alive, token_given=token_given, extra=extra)
        ex.reply(response, plan.status)

    def _original_url(self, ex: Exchange) -> str:
        """The URL the client asked for, for `redirect_url`: from the connection, or from
        X-Forwarded-Proto/-Host only when a trusted proxy sent them."""
        _, proto, host = forwarded_lines(ex, b"", b"https" if ex.conn.secure else b"http")
        scheme = proto.split(b",")[0].strip().lower().decode("latin-1")
        if scheme not in ("http", "https"):
            scheme = "http"
        query = ex.url.partition(b"?")
        tail = b"?" + query[2] if query[1] else b""
        return f"{scheme}://{host.split(b',')[0].strip().decode('latin-1')}{ex.path}{tail.decode('latin-1')}"

    def _upstream_failed(self, ex: Exchange, upstream: Upstream, failure: UpstreamFailure) -> None:
        self.metrics.count_upstream_error(upstream.name, failure.kind)
        ex.reason = failure.reason
        if ex.response_started:
            return  # the pool cuts the connection: a truncated body must never look whole
        self._answer(ex, Denial(status_of(failure.reason), failure.reason))
        ex.decision = "allow"  # the policy allowed it; the upstream failed

    # ---- the end of every request -----------------------------------------------------------

    def complete(self, ex: Exchange) -> None:
        elapsed = time.perf_counter() - ex.started
        status = ex.status if ex.response_started else 499
        label, label_json = ex.route if ex.route is not None else _DEFAULT_LABEL
        reason = ex.reason
        self.metrics.record(label, ex.access, ex.decision, reason or "", status, elapsed)
        if ex.forwarding:
            self.metrics.in_flight -= 1
        note = ex.note
        self.access_log.request(
            ex.method.decode("latin-1"),
            ex.path,
            label_json,
            ex.access,
            ex.decision,
            status,
            reason,
            ex.user_id,
            elapsed,
            ex.upstream_status,
            ex.upstream_s,
            "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in note.items()) if note else "",
        )

    def refused(self, reason: Reason) -> None:
        """A request the HTTP parser refused (414, 431, 408, malformed): counted, logged."""
        status = status_of(reason)
        self.metrics.record("default", "-", "deny", reason.value, status, 0.0)
        self.access_log.record({"decision": "deny", "reason": reason.value, "status": status})

    def crashed(self, ex: Exchange) -> None:
        """A bug: logged with its traceback, counted, answered 500 (never a hang, never a
        'malformed request'), and the connection closed after the answer."""
        log.exception(
            "request handling failed",
            extra={"method": ex.method.decode("latin-1"), "path": ex.path},
        )
        ex.keep_alive = False
        ex.reason = Reason.INTERNAL_ERROR
        if ex.response_started:
            return  # the listener cuts the connection
        self._answer(ex, Denial(status_of(Reason.INTERNAL_ERROR), Reason.INTERNAL_ERROR))

    # ---- webhooks ---------------------------------------------------------------------------

    async def _webhook(self, ex: Exchange, rt: Runtime, located: Located) -> None:
        settings = rt.policy.webhooks
        index: dict[str, str] = {}
        for name, value in ex.headers:
            index.setdefault(name.lower().decode("latin-1"), value.decode("latin-1"))
        headers = read_headers(index)
        if isinstance(headers, Reason):
            return self._webhook_done(ex, rt, headers, None)
        note: dict[str, Any] = {"webhook_id": headers.id[:64] if headers.id.isprintable() else None}
        ex.note = note
        if ex.length > settings.max_body_bytes:
            return self._webhook_done(ex, rt, Reason.WEBHOOK_BODY_TOO_LARGE, None)
        body = await ex.read_body(settings.max_body_bytes)
        if body is None:
            return self._webhook_done(ex, rt, Reason.WEBHOOK_BODY_TOO_LARGE, None)
        failure = verify_webhook(
            headers, body, rt.webhook_secrets, time.time(), settings.tolerance_s
        )
        if failure is not None:
            return self._webhook_done(ex, rt, failure, None)
        kind = event_type(body)
        note["webhook_event"] = kind
        deliveries = rt.deliveries
        if deliveries.delivered(headers.id):
            self.metrics.count_webhook(Reason.WEBHOOK_ALREADY_DELIVERED.value, kind)
            return self._deny(ex, rt, Reason.WEBHOOK_ALREADY_DELIVERED)
        if not deliveries.begin(headers.id):
            return self._webhook_done(ex, rt, Reason.WEBHOOK_IN_PROGRESS, kind)
        accepted = False
        try:
            identity = b"X-Clerk-Webhook-Verified: true\r\n"
            if kind.isascii() and kind.isprintable():
                identity += b"X-Clerk-Webhook-Event: %s\r\n" % kind.encode("ascii")
            ex.ended = asyncio.get_running_loop().create_future()
            self._forward(ex, located, identity, body)
            await ex.ended
            accepted = 200 <= (ex.upstream_status or 0) < 300 and ex.reason is None
            self.metrics.count_webhook("delivered" if accepted else "upstream-rejected", kind)
        finally:
            deliveries.finish(headers.id, accepted)

    def _webhook_done(self, ex: Exchange, rt: Runtime, reason: Reason, kind: str | None) -> None:
        self.metrics.count_webhook(reason.value, kind or "unknown")
        self._deny(ex, rt, reason)


def _framing(ex: Exchange, body: bytes | None) -> bytes:
    """The body framing of the forwarded request (a body read whole gets a length)."""
    if body is not None:
        framing = b"Content-Length: %d\r\n" % len(body)
    elif ex.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif ex.length:
        framing = b"Content-Length: %d\r\n" % ex.length
    else:
        framing = b""
    if ex.upgrade and ex.upgrade_to is not None and ex.upgrade_to.lower() == b"websocket":
        framing += b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    return framing


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def parse_cookies(header: str | None) -> dict[str, str]:
    """RFC 6265 5.4 cookie-string: `name=value` pairs separated by `;`; first one wins."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if sep and name and name not in cookies:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies[name] = value
    return cookies
