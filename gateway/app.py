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
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from gateway.accesslog import AccessLog
from gateway.assertion import KeyFileError, Signer
from gateway.browser import (
    auth_headers,
    fetch_facts,
    method_of,
    navigation,
    original_url,
    own_origin,
    set_cookies,
)
from gateway.clerk.backend import TIMEOUT_S, BackendAPI
from gateway.clerk.handshake import (
    ClerkQuery,
    Cookies,
    Handshake,
    Navigation,
    Resolve,
    SignedOut,
    Verify,
    after_verification,
    before_verification,
    clean_url,
    clearing,
    directives,
    handshake_url,
    redirect_count_cookie,
    settled,
)
from gateway.clerk.jwks import KeyCache, KeyCacheStats
from gateway.clerk.tokens import decode, verify_signed
from gateway.clerk.verifier import Verified
from gateway.config import load_policy
from gateway.decide import STATE_CHANGING, Located, Outcome, cross_site, decide
from gateway.decision import Access, Decision, Principal, Reason
from gateway.forwardauth import Original, allowed, for_nginx, original_request
from gateway.headers import client_address, replace_cookie, requested_host, upstream_head
from gateway.http1 import Continuation, Exchange
from gateway.identity import header_block, identity_values
from gateway.metrics import Metrics
from gateway.model import FORWARD_AUTH, ClerkSettings, Upstream
from gateway.profiles import NOTHING, Profiles
from gateway.responses import Denial, denial, is_navigation, render, status_of
from gateway.routes import host_without_port
from gateway.runtime import DEFAULT_LABEL, Forwarding, Runtime
from gateway.upstream import Pool, UpstreamFailure
from gateway.webhooks import DeliveryRecord, event_type, read_headers
from gateway.webhooks import verify as verify_webhook

log = logging.getLogger("clerk_gateway")

Decided = Callable[..., Continuation | None]  # decide and deliver; a continuation: await it


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
        self._retired: set[BackendAPI] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._azp_warned_until = 0.0
        self._forward_auth = False

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
            self._forward_auth = True  # mypyc: a compiled class's methods are read-only
        for warning in result.warnings:
            log.warning("policy warning", extra={"problem": str(warning)})
        self._file_state = self._stat()
        self.keys = self._new_keys(result.policy.clerk)
        runtime = Runtime(
            result.policy, self.keys, DeliveryRecord(result.policy.webhooks.remember_s)
        )
        self._equip(runtime, None)  # a bad assertion key file stops the start here
        self._install(runtime)
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
        for task in self._background:
            task.cancel()
        if self._runtime is not None and self._runtime.profiles is not None:
            await self._runtime.profiles.close()
        for backend in (*self._retired, *([self._runtime.backend] if self._runtime else [])):
            await backend.close()
        self.access_log.flush()

    def _key_stats(self) -> KeyCacheStats:
        assert self.keys is not None
        return self.keys.stats()

    def _new_keys(self, settings: ClerkSettings) -> KeyCache:
        keys = KeyCache(settings)
        keys.on_fetch = self.metrics.count_jwks_fetch
        return keys

    def _equip(self, runtime: Runtime, old: Runtime | None) -> None:
        """What a runtime keeps across reloads when its settings stay: the profile cache
        and the assertion keys (re-read from the key file on every reload: a rotation is
        an edit and a reload). Raises KeyFileError for an unreadable key file."""
        policy = runtime.policy
        if policy.user_profile is not None:
            previous = old.profiles if old is not None else None
            same = (
                previous is not None
                and previous.settings == policy.user_profile
                and previous.backend is runtime.backend
            )
            runtime.profiles = (
                previous
                if previous is not None and same
                else Profiles(
                    policy.user_profile, runtime.backend, self.metrics.count_profile_lookup
                )
            )
        if policy.assertion is not None:
            settings = policy.assertion
            signer = old.signer if old is not None else None
            from_file = settings.key_file is not None and os.path.exists(settings.key_file)
            runtime.signer = (
                Signer(settings, signer.keys)
                if signer is not None and not from_file
                else Signer.for_settings(settings)
            )

    def assertion_jwks(self) -> Mapping[str, Any] | None:
        """The assertion keys as a JWKS (admin `/.well-known/jwks.json`), when configured."""
        signer = self._runtime.signer if self._runtime is not None else None
        return signer.jwks if signer is not None else None

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
            runtime = Runtime(result.policy, keys, deliveries, old.backend)
            try:
                self._equip(runtime, old)
            except KeyFileError as exc:
                if keys is not self.keys:
                    await keys.close()
                self.metrics.count_reload(False)
                log.error(
                    "policy reload rejected; keeping the running policy",
                    extra={"problems": [f"assertion.key_file: {exc}"]},
                )
                return False
            self._install(runtime)
            if self.runtime.backend is not old.backend:
                self._retire_backend(old.backend)
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

    def _retire_backend(self, backend: BackendAPI) -> None:
        """Close a replaced Backend API client once the requests already resolving a
        handshake with it are done (its calls are bounded by TIMEOUT_S)."""
        self._retired.add(backend)

        async def later() -> None:
            await asyncio.sleep(TIMEOUT_S + 1)
            self._retired.discard(backend)
            await backend.close()

        task = asyncio.create_task(later(), name="backend-retire")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        if self._forward_auth:
            return self.handle_forward_auth(ex)
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
        token = None if auth is None else rt.bearer(auth)
        cross = False
        if token is None:
            if rt.instance is not None:
                return self._browser(ex, rt, located, then)  # Clerk's cookie path
            if ex.cookie is not None:
                token = rt.from_cookie(ex.cookie).token
                method = method_of(ex)
                if token is not None and method in STATE_CHANGING:
                    cross = _cross_site(ex, rt, method, original_url(ex))
        if token is None:
            return then(ex, rt, located, None, False)
        verifier = rt.verifier
        outcome = verifier.cached(token)
        if outcome is None:
            outcome = verifier.verify_now(token)
            if outcome is None:
                return partial(self._verify_then, ex, rt, located, token, cross, then)
        return then(ex, rt, located, outcome, True, cross)

    async def _verify_then(
        self, ex: Exchange, rt: Runtime, located: Located, token: str, cross: bool, then: Decided
    ) -> None:
        await _finish(then(ex, rt, located, await rt.verifier.verify(token), True, cross))

    # ---- browser sessions: Clerk's cookie path and handshake --------------------------------

    def _browser(
        self, ex: Exchange, rt: Runtime, located: Located, then: Decided
    ) -> Continuation | None:
        """A request without an Authorization token, by Clerk's cookie rules."""
        cookies = rt.cookies(ex.cookie)
        ex.browser = cookies
        forwarding: Forwarding = located.engine
        return self._cookie_path(ex, rt, located, cookies, forwarding.query, navigation(ex), then)

    def _cookie_path(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        cookies: Cookies,
        query: ClerkQuery,
        request: Navigation,
        then: Decided,
        extra: tuple[bytes, ...] = (),
    ) -> Continuation | None:
        """Clerk's cookie path: a handshake coming back is resolved, one that is needed is
        started, and a session cookie is verified (cached, else with held keys, else in a
        task). `extra`: headers for whatever the gateway answers itself (cookies to clear)."""
        instance = rt.instance
        assert instance is not None
        step = before_verification(cookies, query, request, instance, rt.verifier.peek)
        if isinstance(step, Resolve):
            return partial(self._resolve, ex, rt, located, step, cookies, query, request, then)
        cross = cookies.token is not None and _cross_site(ex, rt, request.method, request.url)
        if not isinstance(step, Verify):
            return then(ex, rt, located, step, False, cross, request, extra)
        verifier = rt.verifier
        outcome = verifier.cached(step.token)
        if outcome is None:
            outcome = verifier.verify_now(step.token)
            if outcome is None:
                return partial(
                    self._verify_browser,
                    ex,
                    rt,
                    located,
                    step.token,
                    cookies,
                    request,
                    cross,
                    then,
                    extra,
                )
        after = self._after(rt, step.token, outcome, cookies, request)
        return then(ex, rt, located, after, True, cross, request, extra)

    async def _verify_browser(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        token: str,
        cookies: Cookies,
        request: Navigation,
        cross: bool,
        then: Decided,
        extra: tuple[bytes, ...],
    ) -> None:
        outcome = await rt.verifier.verify(token)
        after = self._after(rt, token, outcome, cookies, request)
        await _finish(then(ex, rt, located, after, True, cross, request, extra))

    def _after(
        self,
        rt: Runtime,
        token: str,
        outcome: Verified | Reason,
        cookies: Cookies,
        request: Navigation,
    ) -> Verified | Handshake | SignedOut:
        """The verification outcome in Clerk's terms; a session stays a Verified entry (its
        identity block and decision are remembered on it)."""
        instance = rt.instance
        assert instance is not None
        if outcome is Reason.TOKEN_INVALID_AUTHORIZED_PARTIES:
            self._missing_azp(rt, token)
        principal = outcome.principal if isinstance(outcome, Verified) else outcome
        after = after_verification(principal, cookies, request, instance)
        if isinstance(after, Principal):
            assert isinstance(outcome, Verified)
            return outcome
        return after

    def _missing_azp(self, rt: Runtime, token: str) -> None:
        """A cookie session refused only because its token has no `azp`: say so plainly,
        once a minute. Clerk's frontend API has minted session tokens without `azp` on
        some top-level navigations (the handshake's among them), and with
        `authorized_parties` set every such browser would then be signed out."""
        claims = rt.verifier.peek(token)
        if claims is None or "azp" in claims or rt.policy.clerk.allow_missing_azp:
            return
        now = time.monotonic()
        if now < self._azp_warned_until:
            return
        self._azp_warned_until = now + 60.0
        log.warning(
            "a session cookie's token has no azp claim and was refused by authorized_parties;"
            " if your signed-in browsers are being signed out, set clerk.allow_missing_azp:"
            " true (docs/browser-sessions.md)",
            extra={"reason": Reason.TOKEN_INVALID_AUTHORIZED_PARTIES.value},
        )

    async def _resolve(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        step: Resolve,
        cookies: Cookies,
        query: ClerkQuery,
        request: Navigation,
        then: Decided,
    ) -> None:
        """A handshake came back: fetch (nonce) or verify (token) its payload, set Clerk's
        cookies from it and send the browser on to the same URL without the handshake's
        parameters. A failure is logged and counted, and the request goes on by the
        cookies the browser holds, as Clerk's SDK does: never back to the same URL (a
        nonce cookie we cannot clear would loop), never signing out a valid session."""
        payload: list[Any] | None = None
        if step.nonce is not None:
            peer = ex.conn.client_ip
            client = peer if ex.forwarded is None else client_address(ex.forwarded, peer, rt.trust)
            if rt.trust(client):
                client = ""  # only a proxy's address is known: no per-browser budget
            payload = await rt.backend.handshake_payload(step.nonce, client)
        elif step.token is not None:
            payload = await self._handshake_token(rt, step.token)
        clean = clean_url(request.url)
        cleared = clearing(cookies)
        if payload is None:
            self.metrics.count_handshake("failed")
            log.warning(
                "handshake not resolved; going on with the cookies the browser holds",
                extra={"format": "nonce" if step.nonce else "token", "path": ex.path},
            )
            cookies, query = settled(cookies, query)
            ex.browser = cookies
            request = replace(request, url=clean)
            extra = set_cookies(cleared)
            await _finish(self._cookie_path(ex, rt, located, cookies, query, request, then, extra))
            return
        self.metrics.count_handshake("resolved")
        cookies_out = directives(payload) + cleared
        self._redirect(ex, clean, set_cookies(cookies_out))

    async def _handshake_token(self, rt: Runtime, token: str) -> list[Any] | None:
        """A `__clerk_handshake` JWT: the instance's keys, no time checks (as Clerk)."""
        keys = rt.verifier.keys
        decoded = verify_signed(token, keys.keyset())
        if decoded is Reason.JWK_KID_MISMATCH:
            found = decode(token)
            if not isinstance(found, Reason) and keys.may_fetch(found.kid):
                await keys.resolve(found.kid)
                decoded = verify_signed(token, keys.keyset())
        if isinstance(decoded, Reason):
            return None
        payload = decoded.claims.get("handshake")
        return payload if isinstance(payload, list) else None

    def _redirect(self, ex: Exchange, location: str, extra: tuple[bytes, ...]) -> None:
        """307 to `location` (the clean URL after a resolved handshake), with its cookies:
        no denial, so no reason in logs or metrics."""
        self._answer(ex, Denial(307, Reason.DEV_BROWSER_SYNC, location), extra=extra)
        ex.reason = None
        ex.decision = "handshake"

    def _handshake(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        handshake: Handshake,
        request: Navigation | None,
        extra: tuple[bytes, ...],
    ) -> None:
        """Send the browser through Clerk's frontend API (or to a dev sync's location)."""
        cookies: Cookies = ex.browser
        assert rt.instance is not None
        assert request is not None
        forwarding: Forwarding = located.engine
        location = handshake.location or handshake_url(
            rt.instance, handshake.reason, request, cookies, forwarding.query
        )
        extra = (
            *auth_headers("handshake", handshake.reason),
            b"Set-Cookie: %s\r\n" % redirect_count_cookie(cookies).encode("ascii"),
            *extra,
        )
        self.metrics.count_handshake("started")
        self._answer(ex, Denial(307, handshake.reason, location), extra=extra)
        ex.decision = "handshake"

    def _decision(
        self, located: Located, outcome: Outcome | Verified, cross: bool = False
    ) -> Decision:
        """The decision when the session has none remembered for this target (`_allowed`
        asks its memo first)."""
        if outcome.__class__ is Verified and not cross:
            assert isinstance(outcome, Verified)
            # a session asks for the same target again and again: its decision is remembered
            decision = decide(located, outcome.principal)
            outcome.last = (located, decision)
            return decision
        if isinstance(outcome, Verified):
            return decide(located, outcome.principal, cross_site=cross)
        if isinstance(outcome, SignedOut) and outcome.loop:
            self.metrics.count_handshake("loop-stopped")
            log.warning(
                "handshake loop stopped: the browser came back three times without a usable "
                "session; check that the publishable and secret keys are of one instance and "
                "that this host's clock is right",
                extra={"reason": outcome.auth.value},
            )
        return decide(located, outcome, cross_site=cross)

    def _identity(self, rt: Runtime, outcome: Outcome | Verified, decision: Decision) -> bytes:
        """The identity header block for an allowed decision when the token has none for
        this policy yet (`_full_identity` asks its memo first): built once per token."""
        principal = decision.principal
        if principal is None:
            return b""
        assert isinstance(outcome, Verified)
        identity = header_block(
            identity_values(principal, outcome.claims, rt.policy.identity_headers)
        )
        outcome.identity, outcome.identity_for = identity, rt
        return identity

    def _allowed(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        outcome: Outcome | Verified,
        token_given: bool,
        cross: bool,
        request: Navigation | None,
        extra: tuple[bytes, ...],
    ) -> Decision | None:
        """Both modes' decision: the allowed one, or None once the denial is answered."""
        last = outcome.last if outcome.__class__ is Verified and not cross else None
        if last is not None and last[0] is located:
            decision: Decision = last[1]  # the session asked for this target before
        else:
            decision = self._decision(located, outcome, cross)
        if decision.principal is not None:
            ex.user_id = decision.principal.user_id
        if not decision.allowed:
            self._refuse(ex, rt, located, decision, token_given, request, extra)
            return None
        return decision

    def _decided(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        outcome: Outcome | Verified,
        token_given: bool,
        cross: bool = False,
        request: Navigation | None = None,
        extra: tuple[bytes, ...] = (),
    ) -> Continuation | None:
        """Proxy mode: forward an allowed request, answer a denied one."""
        decision = self._allowed(ex, rt, located, outcome, token_given, cross, request, extra)
        if decision is None:
            return None
        cookie = ex.cookie
        if cookie is not None and cookie.find(b"__clerk_") >= 0:
            kept = rt.upstream_cookie(cookie)  # the handshake's cookies stay here
            if kept is not None:
                replace_cookie(ex, kept)
        if extra:  # a failed handshake's cookies to clear: on the upstream's response too
            ex.response_headers = (*ex.response_headers, *extra)
        forwarding: Forwarding = located.engine
        audience = forwarding.upstream.name if forwarding.upstream is not None else ""
        identity = self._full_identity(rt, outcome, decision, audience, False)
        if identity is None:
            return partial(self._after_profile, ex, rt, outcome, decision, audience, located)
        self._forward(ex, located, identity)
        return None

    def _answered(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        outcome: Outcome | Verified,
        token_given: bool,
        cross: bool = False,
        request: Navigation | None = None,
        extra: tuple[bytes, ...] = (),
    ) -> Continuation | None:
        """Forward-auth mode: 200 with the identity headers, or the denial."""
        decision = self._allowed(ex, rt, located, outcome, token_given, cross, request, extra)
        if decision is None:
            return None
        # the assertion's audience: the app the ingress forwards to, by its host name as
        # routes match it (lower-case, no port: what the client typed must not change it)
        original: Original = ex.original
        audience = host_without_port(original.host.decode("latin-1"))
        identity = self._full_identity(rt, outcome, decision, audience, False)
        if identity is None:
            return partial(self._after_profile, ex, rt, outcome, decision, audience, None)
        ex.decision = "allow"
        ex.reply(allowed(identity, ex.keep_alive), 200)
        return None

    def _full_identity(
        self,
        rt: Runtime,
        outcome: Outcome | Verified,
        decision: Decision,
        audience: str,
        looked_up: bool,
    ) -> bytes | None:
        """The identity block, then the user's profile headers and the signed assertion
        when configured; None when the profile must be looked up first."""
        principal = decision.principal
        if (
            principal is not None  # (a pending session on a public route: none at all)
            and outcome.__class__ is Verified
            and outcome.identity_for is rt
        ):
            identity: bytes = outcome.identity  # built before
        else:
            identity = self._identity(rt, outcome, decision)
        profiles, signer = rt.profiles, rt.signer
        if principal is None or (profiles is None and signer is None):
            return identity
        assert isinstance(outcome, Verified)
        if profiles is not None:
            block = profiles.cached(principal.user_id, after_lookup=looked_up)
            if block is None:
                if not looked_up:
                    return None
                block = NOTHING  # the lookup gave up waiting: forwarded without
            identity += block
        if signer is not None:
            memo = outcome.assertions
            if memo is None or memo[0] is not signer:
                memo = outcome.assertions = (signer, {})
            identity += signer.header(memo[1], principal, audience)
        return identity

    async def _after_profile(
        self,
        ex: Exchange,
        rt: Runtime,
        outcome: Outcome | Verified,
        decision: Decision,
        audience: str,
        located: Located | None,
    ) -> None:
        """A user's first request: wait (bounded) for the profile, then deliver."""
        assert rt.profiles is not None
        assert decision.principal is not None
        await rt.profiles.lookup(decision.principal.user_id)
        identity = self._full_identity(rt, outcome, decision, audience, True)
        assert identity is not None
        if located is None:  # forward-auth
            ex.decision = "allow"
            ex.reply(allowed(identity, ex.keep_alive), 200)
        else:
            self._forward(ex, located, identity)

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
        assert forwarding.upstream is not None  # proxy mode: `check` requires an upstream
        (self._pool or self.pool).forward(ex, forwarding.upstream, head, body)

    # ---- answers of our own -----------------------------------------------------------------

    def _refuse(
        self,
        ex: Exchange,
        rt: Runtime,
        located: Located,
        decision: Decision,
        token_given: bool,
        request: Navigation | None,
        extra: tuple[bytes, ...],
    ) -> None:
        """A denied decision: a handshake, or the denial (with Clerk's signed-out headers
        for a browser session)."""
        if decision.handshake is not None:
            self._handshake(ex, rt, located, decision.handshake, request, extra)
            return
        assert decision.reason is not None
        if decision.auth is not None:
            extra = (*auth_headers("signed-out", decision.auth), *extra)
        self._deny(ex, rt, decision.reason, token_given=token_given, extra=extra, request=request)

    def _deny(
        self,
        ex: Exchange,
        rt: Runtime,
        reason: Reason,
        *,
        token_given: bool = False,
        extra: tuple[bytes, ...] = (),
        request: Navigation | None = None,
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
                original = request.url if request is not None else original_url(ex)
        plan = denial(
            reason,
            navigation=navigation,
            sign_in_url=policy.sign_in_url,
            unauthorized_url=policy.unauthorized_url,
            original_url=original,
        )
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
        forward_auth: Original | None = ex.original
        if forward_auth is not None and forward_auth.nginx:
            plan, extra = for_nginx(plan, extra)  # a redirect as 401/403 (decision stays)
        if not ex.body_complete:
            ex.keep_alive = False  # an unread body cannot be skipped safely: close after
        response = render(plan, keep_alive=ex.keep_alive, token_given=token_given, extra=extra)
        ex.reply(response, plan.status)

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
        label, label_json = ex.route if ex.route is not None else DEFAULT_LABEL
        reason = ex.reason
        self.metrics.record(label, ex.access, ex.decision, reason or "", status, elapsed)
        if ex.forwarding:
            self.metrics.in_flight -= 1
        note = ex.note
        client, host = ex.conn.client_ip, ex.host
        if ex.forwarded is not None:  # a trusted proxy's: the client is in X-Forwarded-*
            client = client_address(ex.forwarded, client, self.runtime.trust)
            host = requested_host(ex.forwarded, host)
        original: Original | None = ex.original  # forward-auth: the request decided
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
            client,
            host if original is None else original.host,
            ex.user_agent,
            ex.request_id,
            ex.traceparent,
            "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in note.items()) if note else "",
        )

    def refused(self, reason: Reason, client: str, request_id: bytes) -> None:
        """A request the HTTP parser refused (414, 431, 408, malformed): counted, logged."""
        status = status_of(reason)
        self.metrics.record("default", "-", "deny", reason.value, status, 0.0)
        self.access_log.record(
            {
                "decision": "deny",
                "reason": reason.value,
                "status": status,
                "client": client,
                "request_id": request_id.decode("ascii"),
            }
        )

    def crashed(self, ex: Exchange) -> None:
        """A bug: logged with its traceback, counted, answered 500 (never a hang, never a
        'malformed request'), and the connection closed after the answer."""
        log.exception(
            "request handling failed",
            extra={
                "method": ex.method.decode("latin-1"),
                "path": ex.path,
                "request_id": ex.request_id.decode("ascii"),  # the client was told this one
            },
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
        if rt.profiles is not None and kind in _USER_EVENTS:
            _profile_event(rt.profiles, kind, body)  # verified, and new: the cache trusts it
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


_USER_EVENTS = frozenset(["user.created", "user.updated", "user.deleted"])


def _profile_event(profiles: Profiles, kind: str, body: bytes) -> None:
    """A verified user event keeps the profile cache current without a Backend API call."""
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return
    if not isinstance(data, dict):
        return
    if kind == "user.deleted":
        user_id = data.get("id")
        if isinstance(user_id, str):
            profiles.deleted(user_id)
    else:
        profiles.updated(data)


async def _finish(continuation: Continuation | None) -> None:
    if continuation is not None:
        await continuation()


def _cross_site(ex: Exchange, rt: Runtime, method: str, url: str) -> bool:
    """A state-changing request riding on the session cookie from another site."""
    if method not in STATE_CHANGING:
        return False
    fetch_site, origin = fetch_facts(ex)
    return cross_site(
        method, fetch_site, origin, own_origin(url), rt.policy.clerk.authorized_parties
    )


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
