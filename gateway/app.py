"""The gateway: one request from its parsed head to a response, and policy reloads.

One request: normalise the target once, match, verify (when a token is offered: the
cache answers without an await), decide, then either answer from responses.py or
strip-then-inject the headers and forward. Every path through `handle` ends in one
metrics call and one JSON log line labelled with the same reason code the client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from gateway.accesslog import AccessLog
from gateway.clerk.jwks import KeyCache, KeyCacheStats
from gateway.clerk.tokens import extract
from gateway.clerk.verifier import SessionVerifier
from gateway.config import load_policy
from gateway.decision import Access, Principal, Reason
from gateway.headers import identity_values, reserved_names, safe_value, upstream_headers
from gateway.http1 import Exchange, RequestHead
from gateway.metrics import Metrics
from gateway.model import ClerkSettings, Limits, Policy, Upstream
from gateway.paths import Target, normalise_target
from gateway.policy import decide
from gateway.responses import body_of, denial, is_navigation, status_of
from gateway.routes import AMBIGUOUS, Ambiguous, Route, host_without_port
from gateway.upstream import Pool, UpstreamFailure, authority
from gateway.webhooks import DeliveryRecord, event_type, read_headers, secret_bytes
from gateway.webhooks import verify as verify_webhook

log = logging.getLogger("clerk_gateway")

RETRY_AFTER_S = b"5"
Continuation = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything derived from one policy; swapped atomically on reload."""

    policy: Policy
    verifier: SessionVerifier
    reserved: frozenset[str]
    webhook_secrets: tuple[bytes, ...]
    deliveries: DeliveryRecord


@dataclass(frozen=True, slots=True)
class _Request:
    """One request's facts, carried from the decision to forwarding (across awaits)."""

    ex: Exchange
    rt: Runtime
    out: _Outcome
    target: Target
    route: Route | None
    trusted: bool
    token_given: bool


@dataclass(slots=True)
class _Outcome:
    """What the log line and the metric say about one request."""

    route: Route | None = None
    access: str = "-"
    decision: str = "deny"
    reason: Reason | None = None
    status: int = 0
    user_id: str | None = None
    path: str | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    webhook_id: str | None = None
    webhook_event: str | None = None


def _key_source(settings: ClerkSettings) -> tuple[object, ...]:
    return (
        settings.jwt_key,
        settings.jwks_url,
        settings.secret_key,
        settings.api_url,
        settings.jwks,
    )


class Gateway:
    def __init__(
        self,
        config_path: str,
        *,
        env: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config_path = config_path
        self.env = env
        self.metrics = metrics or Metrics()
        self.access_log = AccessLog()
        self.pool = Pool()
        self.keys: KeyCache | None = None
        self._runtime: Runtime | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._file_state: tuple[float, int] | None = None
        self._reload_lock = asyncio.Lock()
        self.readiness_checks: list[Callable[[], tuple[bool, str]]] = []

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the policy (raising ValueError with every problem when invalid) and keys."""
        result = load_policy(self.config_path, for_run=True, env=self.env)
        if result.policy is None:
            raise ValueError("\n".join(str(p) for p in result.errors))
        for warning in result.warnings:
            log.warning("policy warning", extra={"problem": str(warning)})
        self._file_state = self._stat()
        self.keys = self._new_keys(result.policy.clerk)
        self._runtime = self._build(result.policy, self.keys)
        self.metrics.watch_keys(self._key_stats)
        await self.keys.start()

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.keys is not None:
            await self.keys.close()
        self.pool.close()
        self.access_log.flush()

    def _key_stats(self) -> KeyCacheStats:
        assert self.keys is not None
        return self.keys.stats()

    def _new_keys(self, settings: ClerkSettings) -> KeyCache:
        keys = KeyCache(settings)
        keys.on_fetch = lambda ok: self.metrics.jwks_fetches.labels(
            "success" if ok else "failure"
        ).inc()
        return keys

    def _build(self, policy: Policy, keys: KeyCache) -> Runtime:
        secrets = tuple(secret_bytes(s) for s in policy.webhooks.secrets)
        return Runtime(
            policy=policy,
            verifier=SessionVerifier(policy.clerk, keys, policy.role_claim),
            reserved=reserved_names(policy.identity_headers, policy.strip_headers),
            webhook_secrets=secrets,
            deliveries=DeliveryRecord(policy.webhooks.remember_s),
        )

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
            result = load_policy(self.config_path, for_run=True, env=self.env)
            self._file_state = self._stat()
            if result.policy is None:
                self.metrics.policy_reloads.labels("failure").inc()
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
                    self.metrics.policy_reloads.labels("failure").inc()
                    log.error(
                        "policy reload rejected: the new key source gave no usable keys; "
                        "keeping the running policy",
                        extra={"jwks_url": result.policy.clerk.jwks_url},
                    )
                    return False
            new = self._build(result.policy, keys)
            if new.policy.webhooks.remember_s == old.policy.webhooks.remember_s:
                new = replace(new, deliveries=old.deliveries)
            self._runtime = new
            if keys is not self.keys:
                previous, self.keys = self.keys, keys
                if previous is not None:
                    await previous.close()
            self.pool.retire(list(new.policy.upstreams.values()))
            self.metrics.policy_reloads.labels("success").inc()
            log.info(
                "policy reloaded",
                extra={"policy": new.policy.digest, "routes": len(new.policy.routes)},
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

    # ---- one request ------------------------------------------------------------------------

    def limits(self) -> Limits:
        return self.runtime.policy.limits

    def refused(self, reason: Reason) -> None:
        """A request the HTTP parser refused (414, 431, malformed): counted, logged."""
        self.metrics.record("default", "-", "deny", reason.value, status_of(reason), 0.0)
        self.access_log.record(
            {"decision": "deny", "reason": reason.value, "status": status_of(reason)}
        )

    def handle(self, ex: Exchange) -> Continuation | None:
        """Decide synchronously where no I/O is needed (every denial, cached or absent
        tokens); else return what to run next (forwarding, key fetches, webhooks).

        What comes back is a function, not a coroutine: the connection runs it in a task,
        and a task cancelled before it starts then leaves nothing half-created behind."""
        started = time.perf_counter()
        rt = self.runtime
        out = _Outcome()
        try:
            then = self._handle(ex, rt, out)
        except Exception:
            self._crashed(ex, out)
            then = None
        if then is None:
            self._record(ex, out, started)
            return None
        return partial(self._complete, then, ex, out, started)

    async def _complete(
        self, then: Continuation, ex: Exchange, out: _Outcome, started: float
    ) -> None:
        self.metrics.in_flight.inc()
        try:
            await then()
        except Exception:
            self._crashed(ex, out)
        finally:
            self.metrics.in_flight.dec()
            self._record(ex, out, started)

    def _crashed(self, ex: Exchange, out: _Outcome) -> None:
        """A bug: logged with its traceback, counted, answered 500 (never a hang, never
        a 'malformed request'), and the connection closed after the answer."""
        log.exception("request handling failed", extra={"method": ex.head.method, "path": out.path})
        ex.keep_alive = False
        if ex.response_started:
            out.reason, out.status = Reason.INTERNAL_ERROR, ex.status
            ex.conn.abort()  # a partial response must never look complete
            return
        self._deny(ex, out, Reason.INTERNAL_ERROR)

    def _record(self, ex: Exchange, out: _Outcome, started: float) -> None:
        elapsed = time.perf_counter() - started
        route_label = out.route.label if out.route is not None else "default"
        reason = out.reason.value if out.reason is not None else "none"
        status = out.status or (499 if not ex.response_started else ex.status)
        self.metrics.record(route_label, out.access, out.decision, reason, status, elapsed)
        extra: dict[str, object] = {
            "method": ex.head.method,
            "path": out.path,
            "route": route_label,
            "access": out.access,
            "decision": out.decision,
            "status": status,
            "reason": out.reason.value if out.reason else None,
            "user_id": out.user_id,
            "duration_ms": round(elapsed * 1000, 3),
            "upstream_status": out.upstream_status,
            "upstream_ms": out.upstream_ms,
        }
        if out.webhook_id:
            extra["webhook_id"] = out.webhook_id
            extra["webhook_event"] = out.webhook_event
        self.access_log.record(extra)

    def _handle(self, ex: Exchange, rt: Runtime, out: _Outcome) -> Continuation | None:
        policy = rt.policy
        head = ex.head
        target = normalise_target(head.target)
        if target is None:
            self._deny(ex, out, Reason.PATH_AMBIGUOUS)
            return None
        out.path = target.path
        host = head.get("host", "") or ""
        route = policy.table.match(head.method, host_without_port(host), target.path)
        if route is AMBIGUOUS:
            self._deny(ex, out, Reason.PATH_AMBIGUOUS)
            return None
        assert not isinstance(route, Ambiguous)
        access = route.access if route is not None else policy.default
        out.route, out.access = route, access.value
        trusted = self._trusted(head, policy)
        if access is Access.DENY:
            self._deny(ex, out, Reason.ROUTE_DENIED)
            return None
        if access is Access.WEBHOOK:
            return partial(self._webhook, _Request(ex, rt, out, target, route, trusted, False))
        token = extract(
            head.get("authorization"),
            parse_cookies(head.get("cookie")),
            policy.clerk.publishable_key,
            time.time(),
        ).token
        request = _Request(ex, rt, out, target, route, trusted, token is not None)
        if token is None:
            return self._decided(request, None)
        outcome = rt.verifier.cached(token)
        if outcome is None:
            return partial(self._verify_then_decide, request, token)
        return self._decided(request, outcome)

    async def _verify_then_decide(self, request: _Request, token: str) -> None:
        then = self._decided(request, await request.rt.verifier.verify_uncached(token))
        if then is not None:
            await then()

    def _decided(
        self, request: _Request, outcome: Principal | Reason | None
    ) -> Continuation | None:
        ex, rt, out = request.ex, request.rt, request.out
        policy = rt.policy
        decision = decide(request.route, policy.default, outcome)
        if decision.principal is not None:
            out.user_id = decision.principal.user_id
        if not decision.allowed:
            assert decision.reason is not None
            head = ex.head
            navigation = is_navigation(head.method, head.get("sec-fetch-dest"), head.get("accept"))
            original = (
                self._original_url(head, request.target, request.trusted) if navigation else ""
            )
            self._deny(
                ex,
                out,
                decision.reason,
                navigation=navigation,
                original_url=original,
                token_given=request.token_given,
            )
            return None
        identity = (
            identity_values(decision.principal, policy.identity_headers)
            if decision.principal is not None
            else []
        )
        return partial(self._forward, request, identity)

    def _trusted(self, head: RequestHead, policy: Policy) -> bool:
        if not policy.trusted_proxies or not head.client_ip:
            return False
        try:
            ip = ipaddress.ip_address(head.client_ip)
        except ValueError:
            return False
        return any(ip in net for net in policy.trusted_proxies)

    def _scheme_host(self, head: RequestHead, trusted: bool) -> tuple[str, str]:
        scheme = "https" if head.secure else "http"
        host = head.get("host", "") or ""
        if trusted:
            proto = head.get("x-forwarded-proto")
            fwd_host = head.get("x-forwarded-host")
            if proto:
                scheme = proto.split(",")[0].strip().lower()
            if fwd_host:
                host = fwd_host.split(",")[0].strip()
        return scheme, host

    def _original_url(self, head: RequestHead, target: Target, trusted: bool) -> str:
        scheme, host = self._scheme_host(head, trusted)
        if scheme not in ("http", "https"):
            scheme = "http"
        return f"{scheme}://{host}{target.path_qs}"

    def _deny(
        self,
        ex: Exchange,
        out: _Outcome,
        reason: Reason,
        *,
        navigation: bool = False,
        original_url: str = "",
        token_given: bool = False,
    ) -> None:
        policy = self.runtime.policy
        plan = denial(
            reason,
            navigation=navigation,
            sign_in_url=policy.sign_in_url,
            unauthorized_url=policy.unauthorized_url,
            original_url=original_url,
        )
        out.reason, out.status, out.decision = reason, plan.status, plan.kind
        headers = [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")]
        if plan.location is not None:
            headers.append((b"Location", plan.location.encode("latin-1", "replace")))
        if plan.www_authenticate:
            headers.append(
                (b"WWW-Authenticate", b'Bearer error="invalid_token"' if token_given else b"Bearer")
            )
        if plan.status == 503:
            headers.append((b"Retry-After", RETRY_AFTER_S))
        ex.reply(plan.status, body_of(reason), headers)

    async def _forward(
        self, request: _Request, identity: list[tuple[str, str]], *, body: bytes | None = None
    ) -> None:
        ex, rt, out, target = request.ex, request.rt, request.out, request.target
        head = ex.head
        upstream = rt.policy.upstream_for(request.route)
        scheme, _ = self._scheme_host(head, False)
        websocket = head.upgrade and (head.get("upgrade") or "").lower() == "websocket"
        headers = upstream_headers(
            head.headers,
            reserved=rt.reserved,
            trusted_proxy=request.trusted,
            client_ip=head.client_ip,
            scheme=scheme,
            host=head.get("host", "") or "",
            identity=identity,
            host_override=None if upstream.preserve_host else authority(upstream),
        )
        sent = request_head(head, upstream.base_path + target.path_qs, headers, body, websocket)
        out.decision = "allow"
        started = time.perf_counter()
        try:
            for attempt in (1, 2):
                try:
                    conn = await (
                        self.pool.acquire(upstream) if attempt == 1 else self.pool.connect(upstream)
                    )
                except UpstreamFailure as exc:
                    return self._upstream_failed(ex, out, upstream, exc)
                ex.upstream_transport = conn.transport
                streamed = body is None and head.has_body
                done = conn.begin(
                    ex,
                    sent,
                    head_only=head.method == "HEAD",
                    body_pending=streamed,
                    upgrade=head.upgrade,
                )
                if body is not None:
                    conn.write_body(body)
                elif streamed:
                    ex.stream_body(conn.write_body, head.chunked, conn.body_sent)
                try:
                    result = await done
                except UpstreamFailure as exc:
                    # a pooled connection the upstream had just closed: once more, fresh
                    if exc.retryable and attempt == 1 and (body is not None or not head.has_body):
                        continue
                    if ex.response_started:
                        self.metrics.upstream_errors.labels(upstream.name, exc.kind).inc()
                        out.reason, out.status = exc.reason, ex.status
                        ex.conn.abort()  # a truncated body must never look complete
                        return None
                    return self._upstream_failed(ex, out, upstream, exc)
                except asyncio.CancelledError:
                    conn.abort()
                    raise
                out.status = out.upstream_status = result.status
                return None
        finally:
            out.upstream_ms = round((time.perf_counter() - started) * 1000, 3)

    def _upstream_failed(
        self, ex: Exchange, out: _Outcome, upstream: Upstream, exc: UpstreamFailure
    ) -> None:
        self.metrics.upstream_errors.labels(upstream.name, exc.kind).inc()
        self._deny(ex, out, exc.reason)
        out.decision = "allow"  # the policy allowed it; the upstream failed

    async def _webhook(self, request: _Request) -> None:
        ex, rt, out = request.ex, request.rt, request.out
        settings = rt.policy.webhooks
        headers = read_headers(ex.head.index)
        if isinstance(headers, Reason):
            return self._webhook_done(ex, out, headers)
        out.webhook_id = headers.id[:64] if headers.id.isprintable() else None
        declared = ex.head.content_length
        if declared is not None and declared > settings.max_body_bytes:
            return self._webhook_done(ex, out, Reason.WEBHOOK_BODY_TOO_LARGE)
        body = await ex.read_body(settings.max_body_bytes)
        if body is None:
            return self._webhook_done(ex, out, Reason.WEBHOOK_BODY_TOO_LARGE)
        failure = verify_webhook(
            headers, body, rt.webhook_secrets, time.time(), settings.tolerance_s
        )
        if failure is not None:
            return self._webhook_done(ex, out, failure)
        kind = event_type(body)
        out.webhook_event = kind
        deliveries = rt.deliveries
        if deliveries.delivered(headers.id):
            self.metrics.webhooks.labels(Reason.WEBHOOK_ALREADY_DELIVERED.value, kind).inc()
            return self._deny(ex, out, Reason.WEBHOOK_ALREADY_DELIVERED)
        if not deliveries.begin(headers.id):
            return self._webhook_done(ex, out, Reason.WEBHOOK_IN_PROGRESS)
        accepted = False
        try:
            extra = [("X-Clerk-Webhook-Verified", "true")]
            if safe_value(kind):
                extra.append(("X-Clerk-Webhook-Event", kind))
            await self._forward(request, extra, body=body)
            accepted = 200 <= (out.upstream_status or 0) < 300
            self.metrics.webhooks.labels(
                "delivered" if accepted else "upstream-rejected", kind
            ).inc()
        finally:
            deliveries.finish(headers.id, accepted)

    def _webhook_done(self, ex: Exchange, out: _Outcome, reason: Reason) -> None:
        self.metrics.webhooks.labels(reason.value, out.webhook_event or "unknown").inc()
        self._deny(ex, out, reason)


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


def request_head(
    head: RequestHead,
    path_qs: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    websocket: bool,
) -> bytes:
    """The request line and headers sent upstream, with the body framing we will use."""
    lines = [f"{head.method} {path_qs} HTTP/1.1\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif head.chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        lines.append(f"Content-Length: {head.content_length}\r\n")
    if websocket:
        lines.append("Connection: Upgrade\r\nUpgrade: websocket\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1", "replace")
