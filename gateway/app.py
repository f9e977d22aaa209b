"""aiohttp wiring: the public listener's catch-all handler, the admin listener, reloads.

One request: normalise the target once, match, verify (only if the route needs it or a
token is offered), decide, then either answer from responses.py or strip-then-inject the
headers and forward. Every path through `handle` ends in one metrics call and one JSON
log line labelled with the same reason code the client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from gateway.clerk.jwks import KeyCache, KeyCacheStats
from gateway.clerk.tokens import extract
from gateway.clerk.verifier import SessionVerifier
from gateway.config import ClerkSettings, Policy, load_policy
from gateway.decision import Access, Decision, Principal, Reason
from gateway.headers import identity_values, reserved_names, safe_value, upstream_headers
from gateway.metrics import Metrics
from gateway.paths import Target, normalise_target
from gateway.policy import decide
from gateway.proxy import Forwarder, UpstreamError, authority
from gateway.responses import body_of, denial, is_navigation
from gateway.routes import Route, host_without_port
from gateway.webhooks import DeliveryRecord, event_type, read_headers, secret_bytes
from gateway.webhooks import verify as verify_webhook

log = logging.getLogger("clerk_gateway")
access_log = logging.getLogger("clerk_gateway.access")

RETRY_AFTER_S = "5"


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything derived from one policy; swapped atomically on reload."""

    policy: Policy
    verifier: SessionVerifier
    reserved: frozenset[str]
    webhook_secrets: tuple[bytes, ...]
    deliveries: DeliveryRecord
    digest: str


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
        self.forwarder = Forwarder()
        self.keys: KeyCache | None = None
        self._runtime: Runtime | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._file_state: tuple[float, int] | None = None
        self._reload_lock = asyncio.Lock()

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
        await self.forwarder.close()

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
        text = Path(self.config_path).read_bytes() if Path(self.config_path).exists() else b""
        return Runtime(
            policy=policy,
            verifier=SessionVerifier(policy.clerk, keys, policy.role_claim),
            reserved=reserved_names(policy.identity_headers),
            webhook_secrets=secrets,
            deliveries=DeliveryRecord(policy.webhooks.remember_s),
            digest=hashlib.sha256(text).hexdigest()[:12],
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
                keys = self._new_keys(result.policy.clerk)
                await keys.start()
                await keys.wait_ready(result.policy.clerk.jwks.fetch_timeout_s * 2)
            new = self._build(result.policy, keys)
            if new.policy.webhooks.remember_s == old.policy.webhooks.remember_s:
                new = replace(new, deliveries=old.deliveries)
            self._runtime = new
            if keys is not self.keys:
                previous, self.keys = self.keys, keys
                if previous is not None:
                    await previous.close()
            await self.forwarder.retire(list(new.policy.upstreams.values()))
            self.metrics.policy_reloads.labels("success").inc()
            log.info(
                "policy reloaded", extra={"policy": new.digest, "routes": len(new.policy.routes)}
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

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        rt = self.runtime
        out = _Outcome()
        self.metrics.in_flight.inc()
        try:
            return await self._handle(request, rt, out)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route_label = out.route.label if out.route is not None else "default"
            reason = out.reason.value if out.reason is not None else "none"
            self.metrics.record(route_label, out.access, out.decision, reason, out.status, elapsed)
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": out.path,
                    "route": route_label,
                    "access": out.access,
                    "decision": out.decision,
                    "status": out.status,
                    "reason": out.reason.value if out.reason else None,
                    "user_id": out.user_id,
                    "duration_ms": round(elapsed * 1000, 3),
                    "upstream_status": out.upstream_status,
                    "upstream_ms": out.upstream_ms,
                    **(
                        {"webhook_id": out.webhook_id, "webhook_event": out.webhook_event}
                        if out.webhook_id
                        else {}
                    ),
                },
            )

    async def _handle(
        self, request: web.BaseRequest, rt: Runtime, out: _Outcome
    ) -> web.StreamResponse:
        policy = rt.policy
        limit = self._limit_reason(request, policy)
        if limit is not None:
            return self._deny(request, rt, out, limit, navigation=False, original_url="")
        target = normalise_target(request.raw_path)
        if target is None:
            return self._deny(
                request, rt, out, Reason.PATH_AMBIGUOUS, navigation=False, original_url=""
            )
        out.path = target.path
        host = request.headers.get("Host", "")
        route = policy.table.match(request.method, host_without_port(host), target.path)
        access = route.access if route is not None else policy.default
        out.route, out.access = route, access.value
        trusted = self._trusted(request, policy)
        if access is Access.DENY:
            return self._deny(
                request, rt, out, Reason.ROUTE_DENIED, navigation=False, original_url=""
            )
        if access is Access.WEBHOOK:
            return await self._webhook(request, rt, out, target, route, trusted)
        outcome: Principal | Reason | None = None
        extracted = extract(
            request.headers.get("Authorization"),
            request.cookies,
            policy.clerk.publishable_key,
            time.time(),
        )
        if extracted.token is not None:
            outcome = await rt.verifier.verify(extracted.token)
        decision = decide(route, policy.default, outcome)
        if decision.principal is not None:
            out.user_id = decision.principal.user_id
        if not decision.allowed:
            assert decision.reason is not None
            return self._deny(
                request,
                rt,
                out,
                decision.reason,
                navigation=is_navigation(request.method, request.headers),
                original_url=self._original_url(request, target, trusted),
                token_given=extracted.token is not None,
            )
        return await self._forward(request, rt, out, target, route, decision, trusted)

    def _limit_reason(self, request: web.BaseRequest, policy: Policy) -> Reason | None:
        limits = policy.limits
        line = len(request.method) + len(request.raw_path) + 10  # "M T HTTP/1.1"
        if line > limits.max_request_line_bytes:
            return Reason.REQUEST_LINE_TOO_LONG
        max_header = limits.max_header_bytes
        for name, value in request.raw_headers:
            if len(name) + len(value) + 2 > max_header:
                return Reason.REQUEST_HEADER_TOO_LARGE
        return None

    def _trusted(self, request: web.BaseRequest, policy: Policy) -> bool:
        if not policy.trusted_proxies or request.remote is None:
            return False
        try:
            ip = ipaddress.ip_address(request.remote)
        except ValueError:
            return False
        return any(ip in net for net in policy.trusted_proxies)

    def _scheme_host(self, request: web.BaseRequest, trusted: bool) -> tuple[str, str]:
        scheme = "https" if request.secure else "http"
        host = request.headers.get("Host", "")
        if trusted:
            proto = request.headers.get("X-Forwarded-Proto")
            fwd_host = request.headers.get("X-Forwarded-Host")
            if proto:
                scheme = proto.split(",")[0].strip().lower()
            if fwd_host:
                host = fwd_host.split(",")[0].strip()
        return scheme, host

    def _original_url(self, request: web.BaseRequest, target: Target, trusted: bool) -> str:
        scheme, host = self._scheme_host(request, trusted)
        if scheme not in ("http", "https"):
            scheme = "http"
        return f"{scheme}://{host}{target.path_qs}"

    def _deny(
        self,
        request: web.BaseRequest,
        rt: Runtime,
        out: _Outcome,
        reason: Reason,
        *,
        navigation: bool,
        original_url: str,
        token_given: bool = False,
    ) -> web.Response:
        policy = rt.policy
        plan = denial(
            reason,
            navigation=navigation,
            sign_in_url=policy.sign_in_url,
            unauthorized_url=policy.unauthorized_url,
            original_url=original_url,
        )
        out.reason, out.status, out.decision = reason, plan.status, plan.kind
        headers = {"Cache-Control": "no-store"}
        if plan.location is not None:
            headers["Location"] = plan.location
        if plan.www_authenticate:
            headers["WWW-Authenticate"] = (
                'Bearer error="invalid_token"' if token_given else "Bearer"
            )
        if plan.status == 503:
            headers["Retry-After"] = RETRY_AFTER_S
        return web.Response(
            status=plan.status,
            body=body_of(reason),
            content_type="application/json",
            headers=headers,
        )

    async def _forward(
        self,
        request: web.BaseRequest,
        rt: Runtime,
        out: _Outcome,
        target: Target,
        route: Route | None,
        decision: Decision,
        trusted: bool,
        *,
        extra: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> web.StreamResponse:
        policy = rt.policy
        upstream = policy.upstream_for(route)
        scheme, _ = self._scheme_host(request, False)
        identity = (
            identity_values(decision.principal, policy.identity_headers)
            if decision.principal is not None
            else []
        )
        host = request.headers.get("Host", "")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        headers = upstream_headers(
            request.headers.items(),
            reserved=rt.reserved,
            trusted_proxy=trusted,
            client_ip=request.remote or "",
            scheme=scheme,
            host=host,
            identity=[*identity, *(extra or [])],
            host_override=None if upstream.preserve_host else authority(upstream),
            websocket=websocket,
        )
        out.decision = "allow"
        started = time.perf_counter()
        try:
            if websocket and request.method == "GET":
                ws = await self.forwarder.websocket(request, upstream, target.path_qs, headers)
                out.status = out.upstream_status = 101
                return ws
            response, status = await self.forwarder.forward(
                request, upstream, target.path_qs, headers, body=body
            )
            out.status = out.upstream_status = status
            return response
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels(upstream.name, exc.kind).inc()
            if request.transport is None or request.transport.is_closing():
                out.reason, out.status, out.decision = exc.reason, 499, "allow"
                raise
            response = self._deny(request, rt, out, exc.reason, navigation=False, original_url="")
            out.decision = "allow"  # the policy allowed it; the upstream failed
            return response
        finally:
            out.upstream_ms = round((time.perf_counter() - started) * 1000, 3)

    async def _webhook(
        self,
        request: web.BaseRequest,
        rt: Runtime,
        out: _Outcome,
        target: Target,
        route: Route | None,
        trusted: bool,
    ) -> web.StreamResponse:
        settings = rt.policy.webhooks
        headers = read_headers(request.headers)
        if isinstance(headers, Reason):
            return self._webhook_done(request, rt, out, headers)
        out.webhook_id = headers.id[:64] if headers.id.isprintable() else None
        declared = request.content_length
        if declared is not None and declared > settings.max_body_bytes:
            return self._webhook_done(request, rt, out, Reason.WEBHOOK_BODY_TOO_LARGE)
        body = await _read_limited(request, settings.max_body_bytes)
        if body is None:
            return self._webhook_done(request, rt, out, Reason.WEBHOOK_BODY_TOO_LARGE)
        failure = verify_webhook(
            headers, body, rt.webhook_secrets, time.time(), settings.tolerance_s
        )
        if failure is not None:
            return self._webhook_done(request, rt, out, failure)
        kind = event_type(body)
        out.webhook_event = kind
        deliveries = rt.deliveries
        if deliveries.delivered(headers.id):
            self.metrics.webhooks.labels(Reason.WEBHOOK_ALREADY_DELIVERED.value, kind).inc()
            return self._deny(
                request,
                rt,
                out,
                Reason.WEBHOOK_ALREADY_DELIVERED,
                navigation=False,
                original_url="",
            )
        if not deliveries.begin(headers.id):
            return self._webhook_done(request, rt, out, Reason.WEBHOOK_IN_PROGRESS)
        accepted = False
        try:
            extra = [("X-Clerk-Webhook-Verified", "true")]
            if safe_value(kind):
                extra.append(("X-Clerk-Webhook-Event", kind))
            response = await self._forward(
                request,
                rt,
                out,
                target,
                route,
                Decision.allow(None),
                trusted,
                extra=extra,
                body=body,
            )
            accepted = 200 <= (out.upstream_status or 0) < 300
            self.metrics.webhooks.labels(
                "delivered" if accepted else "upstream-rejected", kind
            ).inc()
            return response
        finally:
            deliveries.finish(headers.id, accepted)

    def _webhook_done(
        self, request: web.BaseRequest, rt: Runtime, out: _Outcome, reason: Reason
    ) -> web.Response:
        self.metrics.webhooks.labels(reason.value, out.webhook_event or "unknown").inc()
        response = self._deny(request, rt, out, reason, navigation=False, original_url="")
        if reason is Reason.WEBHOOK_BODY_TOO_LARGE:
            response.force_close()  # do not read (or linger on) the rest of the body
        return response


async def _read_limited(request: web.BaseRequest, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds `limit` (the rest is never hashed)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
