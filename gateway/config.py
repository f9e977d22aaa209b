"""routes.yaml -> Policy: strict keys, every problem at once, nothing raw past this module.

`load_policy` never raises for a bad file: it returns every problem found, each with its
`file:line` and key path, and a Policy only when there is no error. Values that are empty
only because this shell lacks an environment variable are warnings under `check` (CI and
laptops rarely hold production secrets) and errors when the gateway is about to `run`.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gateway.assertion import KeyFileError, load_keys
from gateway.clerk.keys import (
    KeyMaterialError,
    PublishableKey,
    load_pem_key,
    parse_publishable_key,
)
from gateway.decision import Access
from gateway.headers import fold
from gateway.model import (
    DEFAULT_API_URL,
    FORWARD_AUTH,
    MODES,
    PROXY,
    UNSTRIPPABLE,
    AssertionSettings,
    ClerkSettings,
    HeaderPath,
    IdentityHeaders,
    IPNetwork,
    JwksSettings,
    Limits,
    Policy,
    ProfileSettings,
    Upstream,
    WebhookSettings,
    under,
)
from gateway.reader import Reader, env_names, kind_of
from gateway.routes import (
    HostPattern,
    PathPattern,
    PatternError,
    Requirement,
    Route,
    RouteTable,
    compile_pattern,
    regex_matches_nothing,
    shadowing_route,
)
from gateway.webhooks import secret_bytes
from gateway.yamlsource import EnvStr, Problem, Severity, parse

DEFAULT_WEBHOOK_SECRETS = "${CLERK_WEBHOOK_SECRET:-}"


@dataclass(frozen=True, slots=True)
class LoadResult:
    policy: Policy | None
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)


def load_policy(
    path: str | os.PathLike[str],
    *,
    for_run: bool,
    env: Mapping[str, str] | None = None,
    mode: str | None = None,
) -> LoadResult:
    """Read and validate a policy file. `for_run`: unset environment values are errors.
    `mode` (the command line's `--mode`) overrides the file's `mode:`."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return LoadResult(None, (Problem(name, 1, "", f"cannot read policy: {reason}"),))
    return parse_policy(text, name, for_run=for_run, env=env, mode=mode)


def parse_policy(
    text: str,
    file: str,
    *,
    for_run: bool,
    env: Mapping[str, str] | None = None,
    mode: str | None = None,
) -> LoadResult:
    doc = parse(text, file, env)
    reader = _Reader(doc, for_run, mode)
    policy = reader.policy() if doc.value is not None or not doc.problems else None
    problems = sorted([*doc.problems, *reader.problems], key=lambda p: (p.line, p.path))
    if any(p.severity is Severity.ERROR for p in problems):
        return LoadResult(None, tuple(problems))
    if policy is not None:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        policy = replace(policy, digest=digest)
    return LoadResult(policy, tuple(problems))


_TOP_KEYS = (
    "mode",
    "clerk",
    "webhooks",
    "upstream",
    "upstreams",
    "sign_in_url",
    "unauthorized_url",
    "role_claim",
    "trusted_proxies",
    "case_insensitive_paths",
    "limits",
    "strip_headers",
    "identity_headers",
    "user_profile",
    "assertion",
    "default",
    "routes",
)
_CLERK_KEYS = (
    "publishable_key",
    "secret_key",
    "jwt_key",
    "api_url",
    "jwks_url",
    "issuer",
    "authorized_parties",
    "allow_missing_azp",
    "clock_skew_ms",
    "jwks_refresh_interval_s",
    "jwks_kid_cooldown_s",
    "jwks_max_stale_s",
    "jwks_fetch_timeout_s",
    "token_cache_size",
    "handshake",
    "proxy_url",
    "domain",
    "is_satellite",
)
_WEBHOOK_KEYS = ("secrets", "remember_s", "tolerance_s", "max_body_bytes")
_UPSTREAM_KEYS = ("url", "connect_timeout_s", "read_timeout_s", "preserve_host")
_ROUTE_KEYS = (
    "path",
    "methods",
    "host",
    "access",
    "accept_pending",
    "require",
    "upstream",
    "name",
    "csrf",
)
_REQUIRE_KEYS = ("roles", "org_roles", "org_permissions")
_LIMIT_KEYS = tuple(Limits.__dataclass_fields__)
_IDENTITY_KEYS = tuple(k for k in IdentityHeaders.__dataclass_fields__ if k != "claims")
_PROFILE_KEYS = ("headers", "ttl_s", "max_users", "max_stale_s", "lookup_timeout_s")
_ASSERTION_KEYS = ("header", "issuer", "key_file", "ttl_s")
# Never set from an identity: framing, hop-by-hop, Host, credentials, forwarding facts.
_MANAGED_HEADERS = frozenset(
    [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "authorization",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "traceparent",
        "tracestate",
    ]
)
# Names proxies use to describe a request: never an identity header (an ingress sets or
# rewrites them; forward-auth reads them). The oauth2-proxy convention for identities
# (X-Forwarded-User, -Email, -Groups, -Preferred-Username) stays allowed:
# apps written for it read those.
_REQUEST_FACTS = ("x-forwarded-", "x-original-", "x-real-ip")
_IDENTITY_CONVENTIONS = (
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
)
# The identity names the shipped forward-auth configurations copy (and strip).
_DOCUMENTED_NAMES = frozenset(
    [
        "X-Clerk-User-Id",
        "X-Clerk-Session-Id",
        "X-Clerk-Role",
        "X-Clerk-Role-Encoding",
        "X-Clerk-Org-Id",
        "X-Clerk-Org-Slug",
        "X-Clerk-Org-Slug-Encoding",
        "X-Clerk-Org-Role",
        "X-Clerk-Org-Role-Encoding",
        "X-Clerk-Org-Permissions",
        "X-Clerk-Org-Permissions-Encoding",
    ]
)
_METHODS = frozenset(
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
)
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


class _Reader(Reader):
    """The policy schema, read with located problems."""

    webhook_secrets_source: Any = None  # `webhooks.secrets` as written, or its default

    def __init__(self, doc: Any, for_run: bool, mode: str | None = None) -> None:
        super().__init__(doc, for_run)
        self.mode_override = mode
        self.mode = PROXY

    # ---- the policy -------------------------------------------------------------------------

    def policy(self) -> Policy | None:
        root = self.mapping("", self.doc.value, _TOP_KEYS)
        self.mode = self.mode_override or self.choice("mode", root.get("mode"), MODES, PROXY)
        clerk = self.clerk(root.get("clerk"))
        webhooks = self.webhooks(root.get("webhooks"))
        upstreams = self.upstreams(root.get("upstream"), root.get("upstreams"))
        ci: bool | None = None
        if root.get("case_insensitive_paths") is not None:
            ci = self.boolean("case_insensitive_paths", root.get("case_insensitive_paths"), False)
        routes = self.routes(root.get("routes"), upstreams, ci is True)
        default = self.access("default", root.get("default"), Access.PROTECTED)
        if default is Access.WEBHOOK:
            self.error("default", "the default access cannot be 'webhook'")
            default = Access.PROTECTED
        role_claim_text = self.string("role_claim", root.get("role_claim"))
        role_claim = tuple(role_claim_text.split(".")) if role_claim_text else None
        if role_claim is not None and not all(role_claim):
            self.error(
                "role_claim", f"must be a dot path like 'metadata.role', got {role_claim_text!r}"
            )
        self.cross_checks(root, routes, clerk, webhooks, role_claim, default)
        policy = Policy(
            file=self.doc.file,
            clerk=clerk,
            webhooks=webhooks,
            upstreams=MappingProxyType(upstreams),
            routes=routes,
            table=RouteTable(routes, ci),
            default=default,
            sign_in_url=self.redirect_target("sign_in_url", root.get("sign_in_url"), "/sign-in"),
            unauthorized_url=self.redirect_target(
                "unauthorized_url", root.get("unauthorized_url"), "/unauthorized"
            ),
            role_claim=role_claim,
            trusted_proxies=self.networks("trusted_proxies", root.get("trusted_proxies")),
            case_insensitive_paths=ci,
            strip_headers=self.strip_headers(root.get("strip_headers")),
            limits=self.limits(root.get("limits")),
            identity_headers=self.identity_headers(root.get("identity_headers")),
            user_profile=self.user_profile(root.get("user_profile"), clerk),
            assertion=self.assertion(root.get("assertion")),
            mode=self.mode,
        )
        self.identity_names_unique(policy)
        self.lints(routes)
        return policy

    def clerk(self, value: Any) -> ClerkSettings:
        raw = self.mapping("clerk", value, _CLERK_KEYS)
        pk_text = self.string("clerk.publishable_key", raw.get("publishable_key"))
        pk: PublishableKey | None = None
        if pk_text:
            try:
                pk = parse_publishable_key(pk_text)
            except KeyMaterialError as exc:
                self.error("clerk.publishable_key", str(exc))
        secret = self.string("clerk.secret_key", raw.get("secret_key"))
        if secret and not secret.startswith("sk_"):
            self.error("clerk.secret_key", "a Clerk secret key starts with 'sk_'")
        jwt_key = self.string("clerk.jwt_key", raw.get("jwt_key"))
        if jwt_key:
            try:
                load_pem_key(jwt_key)
            except KeyMaterialError as exc:
                self.error("clerk.jwt_key", str(exc))
        api_url = self.url("clerk.api_url", raw.get("api_url"), DEFAULT_API_URL)
        assert api_url is not None
        jwks_url = self.url("clerk.jwks_url", raw.get("jwks_url"))
        if jwks_url is None and secret:
            jwks_url = f"{api_url}/v1/jwks"
        issuer = self.url("clerk.issuer", raw.get("issuer"))
        if issuer is None and pk is not None:
            issuer = pk.issuer
        parties = self.strings("clerk.authorized_parties", raw.get("authorized_parties"))
        if parties == () and raw.get("authorized_parties"):
            parties = None  # every entry left empty by this environment (a warning): unknown
        for i, party in enumerate(parties or ()):
            parts = urlsplit(party)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("",):
                self.error(
                    f"clerk.authorized_parties[{i}]",
                    f"must be an origin like 'https://app.example.com', got {party!r}",
                )
        return ClerkSettings(
            publishable_key=pk,
            secret_key=secret,
            jwt_key=jwt_key,
            api_url=api_url,
            jwks_url=jwks_url,
            issuer=issuer,
            authorized_parties=parties,
            allow_missing_azp=self.boolean(
                "clerk.allow_missing_azp", raw.get("allow_missing_azp"), False
            ),
            clock_skew_ms=self.integer("clerk.clock_skew_ms", raw.get("clock_skew_ms"), 5000),
            jwks=JwksSettings(
                refresh_interval_s=self.number(
                    "clerk.jwks_refresh_interval_s",
                    raw.get("jwks_refresh_interval_s"),
                    300,
                    minimum=1,
                ),
                kid_cooldown_s=self.number(
                    "clerk.jwks_kid_cooldown_s", raw.get("jwks_kid_cooldown_s"), 30
                ),
                max_stale_s=self.number(
                    "clerk.jwks_max_stale_s", raw.get("jwks_max_stale_s"), 21600, minimum=1
                ),
                fetch_timeout_s=self.number(
                    "clerk.jwks_fetch_timeout_s", raw.get("jwks_fetch_timeout_s"), 5, minimum=0.01
                ),
            ),
            token_cache_size=self.integer(
                "clerk.token_cache_size", raw.get("token_cache_size"), 10_000, minimum=0
            ),
            **self.handshake(raw, pk, secret),
        )

    def handshake(
        self, raw: dict[str, Any], pk: PublishableKey | None, secret: str | None
    ) -> dict[str, Any]:
        """Clerk's handshake: on by default when it can work (a publishable key names the
        frontend API, a secret key resolves the handshake's nonce)."""
        possible = pk is not None and bool(secret)
        enabled = self.boolean("clerk.handshake", raw.get("handshake"), possible)
        if enabled and not possible and raw.get("handshake") is True:
            self.error(
                "clerk.handshake",
                "the handshake needs clerk.publishable_key (the frontend API to send browsers "
                "to) and clerk.secret_key (to resolve what comes back)",
            )
        proxy_url = self.string("clerk.proxy_url", raw.get("proxy_url"))
        if proxy_url is not None and not (
            proxy_url.startswith("/") or urlsplit(proxy_url).scheme in ("http", "https")
        ):
            self.error(
                "clerk.proxy_url",
                f"must be an http(s) URL or a path on this host, got {proxy_url!r}",
            )
        domain = self.string("clerk.domain", raw.get("domain"))
        satellite = self.boolean("clerk.is_satellite", raw.get("is_satellite"), False)
        if satellite and not (domain or proxy_url):
            self.error(
                "clerk.is_satellite",
                "a satellite needs clerk.domain (its primary's domain) or clerk.proxy_url",
            )
        return {
            "handshake": enabled and possible,
            "proxy_url": proxy_url.rstrip("/") if proxy_url else None,
            "domain": domain,
            "is_satellite": satellite,
        }

    def webhooks(self, value: Any) -> WebhookSettings:
        raw = self.mapping("webhooks", value, _WEBHOOK_KEYS)
        if raw.get("secrets") is None:
            # the contract's default, also when `webhooks:` is absent
            raw = {**raw, "secrets": self.doc.interpolate(DEFAULT_WEBHOOK_SECRETS)}
        self.webhook_secrets_source = raw["secrets"]
        secrets = self.strings("webhooks.secrets", raw.get("secrets"), split=True) or ()
        for i, secret in enumerate(secrets):
            if not secret.startswith("whsec_"):
                self.error(f"webhooks.secrets[{i}]", "a Clerk webhook secret starts with 'whsec_'")
                continue
            try:
                key = secret_bytes(secret)
            except ValueError:
                key = b""
            if len(key) < 16:
                self.error(
                    f"webhooks.secrets[{i}]",
                    "not a webhook secret: 'whsec_' must be followed by base64 of at least 16 bytes",
                )
        tolerance = self.number("webhooks.tolerance_s", raw.get("tolerance_s"), 300, minimum=1)
        remember = self.number(
            "webhooks.remember_s", raw.get("remember_s"), 2 * max(tolerance, 450)
        )
        if remember < 2 * tolerance:
            self.error(
                "webhooks.remember_s",
                f"must be at least twice tolerance_s ({2 * tolerance:g}), so that a replay "
                "inside the tolerance window is still recognised",
            )
        return WebhookSettings(
            secrets=secrets,
            remember_s=remember,
            tolerance_s=tolerance,
            max_body_bytes=self.integer(
                "webhooks.max_body_bytes", raw.get("max_body_bytes"), 1_048_576, minimum=1
            ),
        )

    def upstreams(self, default: Any, named: Any) -> dict[str, Upstream]:
        out: dict[str, Upstream] = {}
        if default is None:
            if self.mode != FORWARD_AUTH:  # there the ingress proxies; the gateway only answers
                self.error("upstream", "required: the URL (or mapping) of the default upstream")
        else:
            parsed = self.upstream("upstream", "default", default)
            if parsed is not None:
                out["default"] = parsed
        if named is not None and not isinstance(named, dict):
            self.error(
                "upstreams", f"must be a mapping of names to upstreams, got {kind_of(named)}"
            )
            named = None
        self.declared_upstreams.update(named or {})
        for name, spec in (named or {}).items():
            if name == "default":
                self.error(f"upstreams.{name}", "'default' is the top-level 'upstream'")
                continue
            parsed = self.upstream(f"upstreams.{name}", name, spec)
            if parsed is not None:
                out[name] = parsed
        return out

    def upstream(self, path: str, name: str, value: Any) -> Upstream | None:
        spec = (
            {"url": value} if isinstance(value, str) else self.mapping(path, value, _UPSTREAM_KEYS)
        )
        url_path = path if isinstance(value, str) else f"{path}.url"
        url = self.url(url_path, spec.get("url"))
        if url is None:
            if "url" not in spec:
                self.error(url_path, "required: the upstream's http(s) URL")
            return None
        parts = urlsplit(url)
        if parts.query or parts.fragment or parts.username or parts.password:
            self.error(url_path, "an upstream URL has no query, fragment or credentials")
            return None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            self.error(url_path, f"invalid port in {url!r}")
            return None
        assert parts.hostname is not None
        return Upstream(
            name=name,
            url=url,
            scheme=parts.scheme,
            host=parts.hostname,
            port=port,
            base_path=parts.path.rstrip("/"),
            connect_timeout_s=self.number(
                f"{path}.connect_timeout_s", spec.get("connect_timeout_s"), 5, minimum=0.001
            ),
            read_timeout_s=self.number(
                f"{path}.read_timeout_s", spec.get("read_timeout_s"), 60, minimum=0.001
            ),
            preserve_host=self.boolean(f"{path}.preserve_host", spec.get("preserve_host"), True),
        )

    def access(self, path: str, value: Any, default: Access) -> Access:
        if value is None:
            return default
        try:
            return Access(value)
        except ValueError:
            choices = ", ".join(a.value for a in Access)
            guess = difflib.get_close_matches(str(value), [a.value for a in Access], n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            self.error(path, f"unknown access {value!r} (one of {choices}){hint}")
            return default

    def routes(self, value: Any, upstreams: Mapping[str, Upstream], ci: bool) -> tuple[Route, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error("routes", f"must be a list of routes, got {kind_of(value)}")
            return ()
        out: list[Route] = []
        for i, item in enumerate(value):
            route = self.route(f"routes[{i}]", i, item, upstreams, ci)
            if route is not None:
                out.append(route)
        return tuple(out)

    def route(
        self, path: str, index: int, value: Any, upstreams: Mapping[str, Upstream], ci: bool
    ) -> Route | None:
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping with 'path' and 'access', got {kind_of(value)}")
            return None
        raw = self.mapping(path, value, _ROUTE_KEYS)
        patterns: list[PathPattern] = []
        if "path" not in raw:
            self.error(f"{path}.path", "required: a path pattern or a list of them")
        for i, source in enumerate(self.strings(f"{path}.path", raw.get("path")) or ()):
            where = f"{path}.path[{i}]" if isinstance(raw.get("path"), list) else f"{path}.path"
            try:
                patterns.append(compile_pattern(source, case_insensitive=ci))
            except PatternError as exc:
                self.error(where, str(exc))
        if "access" not in raw:
            self.error(f"{path}.access", "required: public, protected, admin, webhook or deny")
        access = self.access(f"{path}.access", raw.get("access"), Access.DENY)
        methods: frozenset[str] | None = None
        if raw.get("methods") is not None:
            names = self.strings(f"{path}.methods", raw.get("methods")) or ()
            for name in names:
                if name.upper() not in _METHODS and not set(name) <= _TOKEN_CHARS:
                    self.error(f"{path}.methods", f"{name!r} is not an HTTP method")
            methods = frozenset(n.upper() for n in names)
        host_text = self.string(f"{path}.host", raw.get("host"))
        host = None
        if host_text:
            host = HostPattern.parse(host_text)
            bare = host.source.removeprefix("*.")
            if not bare or "*" in bare or any(c in bare for c in "/:@ ") or "." not in bare:
                self.error(f"{path}.host", f"must be a host name or '*.domain', got {host_text!r}")
        upstream = self.string(f"{path}.upstream", raw.get("upstream"), "default")
        assert upstream is not None
        if upstream not in self.declared_upstreams:
            known = ", ".join(sorted(self.declared_upstreams - {"default"})) or "none"
            self.error(
                f"{path}.upstream", f"upstream {upstream!r} is not defined (defined: {known})"
            )
        require = self.requirement(f"{path}.require", raw.get("require"))
        if access in (Access.PUBLIC, Access.WEBHOOK, Access.DENY) and require != Requirement():
            self.error(f"{path}.require", f"an '{access.value}' route cannot have requirements")
        return Route(
            index=index,
            patterns=tuple(patterns),
            access=access,
            methods=methods,
            host=host,
            accept_pending=self.boolean(f"{path}.accept_pending", raw.get("accept_pending"), False),
            require=require,
            upstream=upstream,
            name=self.string(f"{path}.name", raw.get("name")),
            line=self.doc.line(path),
            csrf=self.route_csrf(path, raw.get("csrf")),
            written=(
                tuple(p.source for p in patterns)
                if isinstance(raw.get("path"), list)
                else (patterns[0].source if patterns else "")
            ),
        )

    def route_csrf(self, path: str, value: Any) -> bool:
        csrf = self.boolean(f"{path}.csrf", value, True)
        if not csrf:
            self.warn(
                f"{path}.csrf",
                "cross-site POST/PUT/PATCH/DELETE requests with the session cookie are "
                "forwarded on this route (CSRF protection off): only for legacy forms that "
                "need it",
            )
        return csrf

    def requirement(self, path: str, value: Any) -> Requirement:
        raw = self.mapping(path, value, _REQUIRE_KEYS)
        roles = self.strings(f"{path}.roles", raw.get("roles")) or ()
        org_roles = self.strings(f"{path}.org_roles", raw.get("org_roles")) or ()
        perms = self.strings(f"{path}.org_permissions", raw.get("org_permissions")) or ()
        for i, perm in enumerate(perms):
            if not perm.startswith("org:") or perm.count(":") != 2:
                self.error(
                    f"{path}.org_permissions[{i}]",
                    f"must look like 'org:<feature>:<permission>', got {perm!r}",
                )
        return Requirement(
            roles=roles,
            org_roles=tuple(r if r.startswith("org:") else f"org:{r}" for r in org_roles),
            org_permissions=perms,
        )

    def networks(self, path: str, value: Any) -> tuple[IPNetwork, ...]:
        out: list[IPNetwork] = []
        for i, text in enumerate(self.strings(path, value) or ()):
            try:
                out.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                self.error(f"{path}[{i}]", f"not a valid address or CIDR: {exc}")
        return tuple(out)

    def limits(self, value: Any) -> Limits:
        raw = self.mapping("limits", value, _LIMIT_KEYS)
        d = Limits()
        limits = Limits(
            max_header_bytes=self.integer(
                "limits.max_header_bytes",
                raw.get("max_header_bytes"),
                d.max_header_bytes,
                minimum=256,
            ),
            max_request_line_bytes=self.integer(
                "limits.max_request_line_bytes",
                raw.get("max_request_line_bytes"),
                d.max_request_line_bytes,
                minimum=256,
            ),
            max_head_bytes=self.integer(
                "limits.max_head_bytes", raw.get("max_head_bytes"), d.max_head_bytes, minimum=1024
            ),
            request_head_timeout_s=self.number(
                "limits.request_head_timeout_s",
                raw.get("request_head_timeout_s"),
                d.request_head_timeout_s,
                minimum=0.1,
            ),
            body_idle_timeout_s=self.number(
                "limits.body_idle_timeout_s",
                raw.get("body_idle_timeout_s"),
                d.body_idle_timeout_s,
                minimum=0.1,
            ),
        )
        if limits.max_head_bytes < max(limits.max_header_bytes, limits.max_request_line_bytes):
            self.error(
                "limits.max_head_bytes",
                "must be at least max_header_bytes and max_request_line_bytes "
                f"({max(limits.max_header_bytes, limits.max_request_line_bytes)})",
            )
        return limits

    def header_names(self, path: str, value: Any) -> tuple[str, ...]:
        names = self.strings(path, value) or ()
        for i, name in enumerate(names):
            if not set(name) <= _TOKEN_CHARS:
                self.error(f"{path}[{i}]", f"{name!r} is not a valid header name")
        return names

    def strip_headers(self, value: Any) -> tuple[str, ...]:
        names = self.header_names("strip_headers", value)
        for i, name in enumerate(names):
            why = UNSTRIPPABLE.get(fold(name.encode("latin-1")).decode("latin-1"))
            if why is not None:
                self.error(f"strip_headers[{i}]", f"{name!r} cannot be stripped: {why}")
        return names

    def identity_headers(self, value: Any) -> IdentityHeaders:
        if value is not None and not isinstance(value, dict):
            self.error("identity_headers", f"must be a mapping, got {kind_of(value)}")
            value = None
        raw: dict[str, Any] = dict(value or {})
        defaults = IdentityHeaders()
        chosen: dict[str, str | None] = {}
        for key in _IDENTITY_KEYS:
            if key in raw and raw[key] is None:
                chosen[key] = None
                continue
            name = self.string(f"identity_headers.{key}", raw.get(key), getattr(defaults, key))
            if name is not None:
                self.identity_name(f"identity_headers.{key}", name)
            chosen[key] = name
        # every other entry is `Header-Name: claim.path` (any claim of the session token)
        extra = {k: v for k, v in raw.items() if k not in _IDENTITY_KEYS}
        claims = self.header_paths("identity_headers", extra, "claim")
        return IdentityHeaders(**chosen, claims=claims)

    def header_paths(self, path: str, raw: dict[Any, Any], what: str) -> tuple[HeaderPath, ...]:
        """`Header-Name: dot.path` entries, each name and path checked."""
        out: list[HeaderPath] = []
        for name, target in raw.items():
            where = f"{path}.{name}"
            if not isinstance(name, str) or not self.identity_name(where, name):
                continue
            text = self.string(where, target)
            if text is None:
                self.error(where, f"needs a {what} path, e.g. `{name}: email`")
                continue
            parts = tuple(text.split("."))
            if not all(parts) or any(c.isspace() for c in text):
                self.error(where, f"must be a dot path like 'metadata.tenant', got {text!r}")
                continue
            if "-" not in name and "-" in text and text[:1].isupper():
                self.warn(
                    where,
                    f"{name!r} is read as a header name and {text!r} as a {what} path; "
                    f"did you mean `{text}: {name}`?",
                )
            out.append(HeaderPath(name, parts))
        return tuple(out)

    def identity_name(self, path: str, name: str) -> bool:
        """A header name the gateway may set from an identity: a token, and none of the
        names it manages itself (framing, hop-by-hop, Host, credentials, forwarding)."""
        if not name or not set(name) <= _TOKEN_CHARS:
            self.error(path, f"{name!r} is not a valid header name")
            return False
        # folded as the header rules and CGI-style servers read names: X.Request.Id is
        # X-Request-Id to them
        folded = fold(name.encode("latin-1")).decode("latin-1")
        if folded in _MANAGED_HEADERS:
            self.error(path, f"{name!r} is managed by the gateway; choose another name")
            return False
        if folded.startswith(_REQUEST_FACTS) and not folded.startswith(_IDENTITY_CONVENTIONS):
            self.error(
                path,
                f"{name!r} is a name proxies use to describe the request (X-Forwarded-*, "
                "X-Original-*, X-Real-IP): an ingress may set or rewrite it, and a forward-auth "
                "check reads it; choose another name",
            )
            return False
        return True

    def identity_names_unique(self, policy: Policy) -> None:
        # folded as servers read names (X.Clerk.Role is X-Clerk-Role to CGI and WSGI)
        names = [fold(n.encode("latin-1")).decode("latin-1") for n in policy.identity_names()]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            self.error("identity_headers", f"header {dup!r} is set from two sources")
        if self.mode != FORWARD_AUTH:
            return
        # the shipped proxy configurations strip X-Clerk-* from clients and copy the
        # built-in names: any other name is the operator's to add, on both lists
        others = [n for n in policy.identity_names() if n not in _DOCUMENTED_NAMES]
        if others:
            self.warn(
                "identity_headers",
                "in forward-auth mode your proxy must copy these identity headers from the "
                "gateway's answer and strip them from every client request, or a client can "
                f"forge them: {', '.join(others)} (docs/forward-auth.md, 'Identity headers "
                "of your own'); the shipped configurations handle only the built-in names",
            )

    def user_profile(self, value: Any, clerk: ClerkSettings) -> ProfileSettings | None:
        if value is None:
            return None
        raw = self.mapping("user_profile", value, _PROFILE_KEYS)
        headers_raw = raw.get("headers")
        if not isinstance(headers_raw, dict) or not headers_raw:
            self.error(
                "user_profile.headers",
                "needs at least one `Header-Name: field` (email, name, first_name, last_name, "
                "username, image_url, phone, public_metadata.<key>, or any user field path)",
            )
            headers_raw = {}
        if not clerk.secret_key:
            self.error(
                "user_profile",
                "profiles come from Clerk's Backend API: clerk.secret_key is required",
            )
        defaults = ProfileSettings()
        return ProfileSettings(
            headers=self.header_paths("user_profile.headers", headers_raw, "profile field"),
            ttl_s=self.number("user_profile.ttl_s", raw.get("ttl_s"), defaults.ttl_s, minimum=1),
            max_users=self.integer(
                "user_profile.max_users", raw.get("max_users"), defaults.max_users, minimum=1
            ),
            max_stale_s=self.number(
                "user_profile.max_stale_s", raw.get("max_stale_s"), defaults.max_stale_s, minimum=0
            ),
            lookup_timeout_s=self.number(
                "user_profile.lookup_timeout_s",
                raw.get("lookup_timeout_s"),
                defaults.lookup_timeout_s,
                minimum=0,
            ),
        )

    def assertion(self, value: Any) -> AssertionSettings | None:
        if value is None:
            return None
        raw = self.mapping("assertion", value, _ASSERTION_KEYS)
        defaults = AssertionSettings()
        header = self.string("assertion.header", raw.get("header"), defaults.header)
        assert header is not None
        self.identity_name("assertion.header", header)
        issuer = self.string("assertion.issuer", raw.get("issuer"))
        if issuer is None:
            self.error(
                "assertion.issuer",
                "required: the name upstreams expect in `iss`, e.g. https://gateway.example.com",
            )
        ttl = self.integer("assertion.ttl_s", raw.get("ttl_s"), defaults.ttl_s, minimum=2)
        if ttl > 300:
            self.warn(
                "assertion.ttl_s",
                f"{ttl} s: an assertion is a per-request proof; a captured one is replayable "
                "that long",
            )
        key_file = self.string("assertion.key_file", raw.get("key_file"))
        if key_file is None:
            self.warn(
                "assertion.key_file",
                "not set: a signing key is generated at every start, and upstreams must "
                "refetch the JWKS after each restart",
            )
        elif not os.path.exists(key_file):
            self.warn(
                "assertion.key_file",
                f"{key_file} does not exist here: `run` generates a key when it is absent",
            )
        else:
            try:
                load_keys(key_file)
            except KeyFileError as exc:
                self.error("assertion.key_file", str(exc))
        return AssertionSettings(
            header=header, issuer=issuer or defaults.issuer, key_file=key_file, ttl_s=ttl
        )

    # ---- checks across sections -------------------------------------------------------------

    def cross_checks(
        self,
        root: Mapping[str, Any],
        routes: tuple[Route, ...],
        clerk: ClerkSettings,
        webhooks: WebhookSettings,
        role_claim: tuple[str, ...] | None,
        default: Access,
    ) -> None:
        needs_keys = default in (Access.PROTECTED, Access.ADMIN) or any(
            r.access is not Access.DENY and r.access is not Access.WEBHOOK for r in routes
        )
        if needs_keys and not (clerk.jwt_key or clerk.jwks_url):
            raw = root.get("clerk") if isinstance(root.get("clerk"), dict) else {}
            assert isinstance(raw, dict)
            env_named = [
                v
                for k, v in raw.items()
                if k in ("secret_key", "jwt_key", "jwks_url") and isinstance(v, EnvStr) and v == ""
            ]
            if env_named:
                names = sorted({n for v in env_named for n in v.names})
                self.env_problem(
                    "clerk",
                    f"no key source: {env_names(names)} {'is' if len(names) == 1 else 'are'} empty "
                    "here, so there is no jwt_key, secret_key or jwks_url to verify session "
                    "tokens with: `clerk-gateway run` will refuse to start until one is set",
                )
            else:
                self.error(
                    "clerk",
                    "no key source: set clerk.jwt_key (PEM), clerk.secret_key (keys from "
                    "<api_url>/v1/jwks) or clerk.jwks_url",
                )
        if (
            clerk.jwks_url
            and not clerk.secret_key
            and not clerk.jwt_key
            and under(clerk.jwks_url, clerk.api_url)
        ):
            raw_clerk = root.get("clerk") if isinstance(root.get("clerk"), dict) else {}
            secret = raw_clerk.get("secret_key") if isinstance(raw_clerk, dict) else None
            message = (
                "the Backend API's JWKS needs clerk.secret_key (or point jwks_url at your "
                "frontend API's /.well-known/jwks.json)"
            )
            if isinstance(secret, EnvStr) and secret == "":
                self.env_problem(
                    "clerk.jwks_url",
                    f"{message}; {env_names(secret.names)} is empty here: "
                    "`clerk-gateway run` will refuse to start until it is set",
                )
            else:
                self.error("clerk.jwks_url", message)
        webhook_routes = [r for r in routes if r.access is Access.WEBHOOK]
        if self.mode == FORWARD_AUTH:
            for route in webhook_routes:
                self.error(
                    f"routes[{route.index}].access",
                    "a webhook route needs the request body, which an ingress does not send to "
                    "a forward-auth endpoint: serve webhooks from a gateway in proxy mode",
                )
            if not root.get("trusted_proxies"):
                self.warn(
                    "trusted_proxies",
                    "forward-auth mode believes X-Forwarded-*/X-Original-* only from trusted "
                    "proxies: list your ingress's addresses, or every check is refused (400)",
                )
            webhook_routes = []
        if webhook_routes and not webhooks.secrets:
            value = self.webhook_secrets_source
            first = f"routes[{webhook_routes[0].index}]"
            if isinstance(value, EnvStr) and value.strip() == "":
                self.env_problem(
                    "webhooks.secrets",
                    f"{env_names(value.names)} is empty or unset here, but {first} is a webhook "
                    f"route: `clerk-gateway run` will refuse to start until it is set",
                )
            else:
                self.error(
                    "webhooks.secrets",
                    f"{first} is a webhook route, so at least one 'whsec_' secret is required",
                )
        for route in routes:
            needs_role = route.access is Access.ADMIN or bool(route.require.roles)
            if needs_role and role_claim is None:
                what = "an admin route" if route.access is Access.ADMIN else "require.roles"
                self.error(
                    f"routes[{route.index}].access",
                    f"{what} needs 'role_claim' (the dot path of the role in the session "
                    "claims, e.g. metadata.role)",
                )
                break

    def lints(self, routes: tuple[Route, ...]) -> None:
        named: dict[str, Route] = {}
        for route in routes:
            if route.name is None:
                continue
            if route.name in named:
                first = named[route.name]
                self.error(
                    f"routes[{route.index}].name",
                    f"{route.name!r} is already the name of routes[{first.index}] (line "
                    f"{first.line}); names label metrics and logs, so each must be unique",
                )
            else:
                named[route.name] = route
        for route in routes:
            where = f"routes[{route.index}]"
            if route.methods is not None and not route.methods:
                self.warn(f"{where}.methods", "empty methods list: this route never matches")
                continue
            for pattern in route.patterns:
                why = regex_matches_nothing(pattern)
                if why:
                    self.warn(f"{where}.path", f"{pattern.source!r} matches nothing: {why}")
            if not route.patterns:
                continue
            earlier = shadowing_route(routes, route)
            if earlier is not None:
                self.warn(
                    where,
                    f"never matches: routes[{earlier.index}] (line {earlier.line}, "
                    f"{earlier.pattern_text}) matches every request it would",
                )
