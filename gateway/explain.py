"""`clerk-gateway explain`: how the policy would decide one request, offline.

It runs the same pure pieces the server runs (normalise, match, verify claims, decide,
deny rendering, identity headers), so an explanation cannot drift from what `run` does.
A `--token` is decoded WITHOUT checking its signature, and the output says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from gateway.browser import own_origin
from gateway.clerk.claims import principal_from_claims
from gateway.clerk.handshake import (
    NO_COOKIES,
    ClerkQuery,
    Cookies,
    Navigation,
    Resolve,
    SignedOut,
    Verify,
    after_verification,
    before_verification,
    clean_url,
    handshake_url,
    instance_of,
)
from gateway.clerk.tokens import check_claims, decode, peek_claims, verify
from gateway.clerk.verifier import options_for
from gateway.decide import Outcome, cross_site, decide, locate
from gateway.decision import Access, Decision, Principal, Reason
from gateway.identity import identity_values
from gateway.model import FORWARD_AUTH, PROXY, Policy
from gateway.paths import normalise_target
from gateway.responses import denial, is_navigation
from gateway.routes import Route, host_without_port


@dataclass(frozen=True, slots=True)
class Explanation:
    method: str
    url: str
    path: str | None
    route: Route | None
    access: Access | None
    decision: str  # allow | deny | redirect
    status: int
    reason: Reason | None
    location: str | None
    headers: tuple[tuple[str, str], ...]
    identity: str  # how the identity was given, for the text output
    note: str | None = None
    mode: str = PROXY

    def as_json(self) -> dict[str, Any]:
        route = (
            None
            if self.route is None
            else {
                "index": self.route.index,
                "path": (
                    list(self.route.written)
                    if isinstance(self.route.written, tuple)
                    else self.route.written
                ),
                "access": self.route.access.value,
                "name": self.route.name,
            }
        )
        return {
            "method": self.method,
            "url": self.url,
            "path": self.path,
            "route": route,
            "access": self.access.value if self.access else None,
            "decision": self.decision,
            "status": self.status,
            "reason": self.reason.value if self.reason else None,
            "location": self.location,
            "headers": dict(self.headers),
            "signature_checked": False,
            "mode": self.mode,
        }

    def as_text(self) -> str:
        if self.route is not None:
            name = f" ({self.route.name})" if self.route.name else ""
            route = f"routes[{self.route.index}]{name}: {self.route.pattern_text} (line {self.route.line})"
        elif self.path is None:
            route = "none (the path was refused before matching)"
        else:
            route = "none matched: the policy default applies"
        lines = [
            f"request:   {self.method} {self.url}",
            f"path:      {self.path if self.path is not None else '(refused: ambiguous)'}",
            f"route:     {route}",
            f"access:    {self.access.value if self.access else '-'}",
            f"identity:  {self.identity}",
            f"decision:  {self.decision}",
            f"status:    {self.status}",
            f"reason:    {self.reason.value if self.reason else '-'}",
        ]
        if self.location:
            lines.append(f"location:  {self.location}")
        if self.headers:
            lines.append("forwarded identity headers:")
            lines.extend(f"  {name}: {value}" for name, value in self.headers)
        elif self.decision == "allow":
            lines.append("forwarded identity headers: none")
        if self.note:
            lines.append(f"note:      {self.note}")
        if self.mode == FORWARD_AUTH:
            lines.append(
                "mode:      forward-auth: this is the answer to the ingress's check "
                "(200 with the identity headers when allowed; behind nginx auth_request a "
                "redirect is 401/403 with X-Clerk-Redirect)"
            )
        lines.append("signature: not checked (explain never verifies signatures)")
        return "\n".join(lines)


def explain(
    policy: Policy,
    method: str,
    url: str,
    *,
    claims: Mapping[str, Any] | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    now_ms: float,
) -> Explanation:
    """How the policy decides one request, in the policy's mode."""
    found = _explain(policy, method, url, claims, token, headers, now_ms)
    return replace(found, mode=policy.mode)


def _explain(
    policy: Policy,
    method: str,
    url: str,
    claims: Mapping[str, Any] | None,
    token: str | None,
    headers: Mapping[str, str] | None,
    now_ms: float,
) -> Explanation:
    method = method.upper()
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    parts = urlsplit(url)
    target = url[len(f"{parts.scheme}://{parts.netloc}") :] if parts.scheme else url
    target = target or "/"
    host_header = parts.netloc or headers.get("host") or "localhost"
    scheme = parts.scheme or "http"
    outcome, identity, session_claims = _outcome(policy, claims, token, now_ms)
    located = locate(policy, method, host_without_port(host_header), target)
    if isinstance(located, Reason):
        normal = normalise_target(target)
        folded = (
            "the path matches another route once folded (case, trailing dots or spaces), "
            "as a case-insensitive upstream would read it; set case_insensitive_paths"
        )
        return Explanation(
            method,
            url,
            normal.path if normal is not None else None,
            None,
            None,
            "deny",
            400,
            located,
            None,
            (),
            identity,
            folded if normal is not None else None,
        )
    normal, route, access = located.target, located.route, located.access
    original = f"{scheme}://{host_header}{normal.path_qs}"
    note: str | None = None
    cross = False
    if token is None and claims is None and access not in (Access.DENY, Access.WEBHOOK):
        browser = _browser(policy, method, original, normal.query, headers, now_ms)
        if isinstance(browser, Explanation):
            return replace(browser, path=normal.path, route=route, access=access, url=url)
        outcome, identity, cross, note, session_claims = browser
    decision: Decision = decide(located, outcome, cross_site=cross)
    if access is Access.WEBHOOK:
        note = "webhook routes are forwarded only with a valid Svix signature (checked on the body)"
    if decision.handshake is not None:
        instance = instance_of(policy)
        assert instance is not None
        jar = _cookies(policy, headers, now_ms)
        request = _navigation(method, original, headers)
        location = decision.handshake.location or handshake_url(
            instance, decision.handshake.reason, request, jar, ClerkQuery.parse(normal.query)
        )
        return Explanation(
            method,
            url,
            normal.path,
            route,
            access,
            "redirect",
            307,
            decision.handshake.reason,
            location,
            (),
            identity,
            "Clerk's handshake: the browser gets a fresh session token from Clerk's frontend "
            "API and comes back (x-clerk-auth-status: handshake; at most 3 in a row)",
        )
    if decision.allowed:
        forwarded = (
            tuple(identity_values(decision.principal, session_claims, policy.identity_headers))
            + _looked_up(policy, decision.principal, route)
            if decision.principal is not None
            else ()
        )
        return Explanation(
            method,
            url,
            normal.path,
            route,
            access,
            "allow",
            200,
            None,
            None,
            forwarded,
            identity,
            note,
        )
    assert decision.reason is not None
    result = denial(
        decision.reason,
        navigation=is_navigation(method, headers.get("sec-fetch-dest"), headers.get("accept")),
        sign_in_url=policy.sign_in_url,
        unauthorized_url=policy.unauthorized_url,
        original_url=original,
    )
    if decision.auth is not None:
        note = f"signed out by Clerk's rules: {decision.auth.value}"
    return Explanation(
        method,
        url,
        normal.path,
        route,
        access,
        result.kind,
        result.status,
        decision.reason,
        result.location,
        (),
        identity,
        note,
    )


def _looked_up(
    policy: Policy, principal: Principal, route: Route | None
) -> tuple[tuple[str, str], ...]:
    """The headers `run` adds that explain cannot compute offline, marked as such."""
    out: list[tuple[str, str]] = []
    if policy.user_profile is not None:
        for header in policy.user_profile.headers:
            out.append(
                (
                    header.name,
                    f"(looked up: {'.'.join(header.path)} of {principal.user_id}'s profile "
                    "in Clerk's Backend API; left out when the lookup fails)",
                )
            )
    if policy.assertion is not None:
        audience = route.upstream if route is not None else "default"
        if policy.mode == FORWARD_AUTH:
            audience = "<the request's host>"
        out.append(
            (
                policy.assertion.header,
                f"(signed: an ES256 JWT for aud={audience}, sub={principal.user_id}, "
                f"valid {policy.assertion.ttl_s} s)",
            )
        )
    return tuple(out)


def _cookies(policy: Policy, headers: Mapping[str, str], now_ms: float) -> Cookies:
    cookie = headers.get("cookie")
    if not cookie:
        return NO_COOKIES
    return Cookies.parse(
        cookie.encode("latin-1", "replace"),
        policy.clerk.publishable_key,
        now_ms / 1000,
        peek_claims,
    )


def _navigation(method: str, original: str, headers: Mapping[str, str]) -> Navigation:
    dest = headers.get("sec-fetch-dest")
    return Navigation(
        method,
        original,
        is_navigation(method, dest, headers.get("accept")),
        dest is not None and dest.strip().lower() == "document",
        headers.get("referer"),
    )


def _browser(
    policy: Policy,
    method: str,
    original: str,
    query: str,
    headers: Mapping[str, str],
    now_ms: float,
) -> tuple[Outcome, str, bool, str | None, Mapping[str, Any]] | Explanation:
    """A request with no token of its own, as `run` takes it: Clerk's cookie path when the
    handshake is on, else the session cookie (Clerk's choice of cookie) as the token."""
    jar = _cookies(policy, headers, now_ms)
    instance = instance_of(policy)
    cross = jar.token is not None and cross_site(
        method,
        headers.get("sec-fetch-site"),
        headers.get("origin"),
        own_origin(original),
        policy.clerk.authorized_parties,
    )
    if instance is None:
        if jar.token is None:
            return None, "anonymous (no token)", False, None, {}
        outcome, how, claims = _outcome(policy, None, jar.token, now_ms, "session cookie")
        return outcome, how, cross, None, claims
    request = _navigation(method, original, headers)
    step = before_verification(jar, ClerkQuery.parse(query), request, instance, peek_claims)
    if isinstance(step, Resolve):
        return Explanation(
            method,
            original,
            None,
            None,
            None,
            "redirect",
            307,
            None,
            clean_url(original),
            (),
            "a handshake coming back from Clerk",
            "`run` resolves the handshake's "
            + ("nonce with Clerk's Backend API" if step.nonce else "token with the instance's keys")
            + ", sets Clerk's cookies and sends the browser on to the URL without it "
            "(not done offline)",
        )
    if isinstance(step, Verify):
        outcome, how, claims = _outcome(policy, None, step.token, now_ms, "session cookie")
        if isinstance(outcome, Principal | Reason):
            after = after_verification(outcome, jar, request, instance)
            return after, how, cross, None, claims
        return outcome, how, cross, None, claims
    how = "session cookie" if jar.token is not None else "no session token"
    said = step.auth.value if isinstance(step, SignedOut) else step.reason.value
    return (
        step,
        f"{how}: Clerk's cookie rules say {said}",
        cross,
        None,
        {},
    )


def _outcome(
    policy: Policy,
    claims: Mapping[str, Any] | None,
    token: str | None,
    now_ms: float,
    given: str = "token",
) -> tuple[Outcome, str, Mapping[str, Any]]:
    """The outcome, how the identity was given (for the text output) and the claims an
    allowed request's identity headers are read from."""
    options = options_for(policy.clerk)
    if token is not None:
        # THE verification sequence, with no keys: everything but the signature
        how = f"{given} (decoded; signature NOT checked)"
        verified = verify(token, None, now_ms, options)
        if isinstance(verified, Reason):
            decoded = decode(token)
            if isinstance(decoded, Reason):
                return verified, f"token that does not decode ({verified.value})", {}
            why = _why(verified, decoded.claims, policy)
            return verified, f"{how}, rejected: {verified.value}{why}", {}
        claims = verified.claims
    elif claims is not None:
        how = "claims given on the command line (taken as validly signed)"
        failure = check_claims(claims, now_ms, options)
        if failure is not None:
            return failure, f"{how}, rejected: {failure.value}{_why(failure, claims, policy)}", {}
    else:
        return None, "anonymous (no token)", {}
    principal: Principal | None = principal_from_claims(claims, policy.role_claim)
    if principal is None:
        return Reason.TOKEN_VERIFICATION_FAILED, f"{how}, but no usable 'sub'", {}
    return principal, f"{how}: user {principal.user_id}", claims


def _why(failure: Reason, claims: Mapping[str, Any], policy: Policy) -> str:
    """The claim and the setting that disagree, for the two failures a copied policy meets."""
    if failure is Reason.TOKEN_INVALID_AUTHORIZED_PARTIES:
        parties = ", ".join(policy.clerk.authorized_parties or ())
        return (
            f" (the token's azp {claims.get('azp')!r} is not one of clerk.authorized_parties: "
            f"[{parties}]; list the origin your app is served from)"
        )
    if failure is Reason.TOKEN_INVALID_ISSUER:
        return (
            f" (the token's iss {claims.get('iss')!r} is not this instance's issuer "
            f"{policy.clerk.issuer!r}, from clerk.publishable_key or clerk.issuer)"
        )
    return ""


def render(explanation: Explanation, as_json: bool) -> str:
    if as_json:
        return json.dumps(explanation.as_json(), indent=2)
    return explanation.as_text()
