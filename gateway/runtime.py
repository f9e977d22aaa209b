"""Everything derived from one policy, swapped as a whole on reload: the verifier and its
caches, the header rules, the trust function, and the per-target and per-Cookie-header
facts the request path asks for again and again (each computed once, then a dict lookup).
"""

from __future__ import annotations

import ipaddress
import json
import time

from gateway.assertion import Signer
from gateway.clerk.backend import BackendAPI
from gateway.clerk.handshake import NO_COOKIES, ClerkQuery, Cookies, Instance, instance_of
from gateway.clerk.jwks import KeyCache
from gateway.clerk.tokens import Extracted, extract
from gateway.clerk.verifier import SessionVerifier
from gateway.decide import Located, locate
from gateway.decision import Reason
from gateway.headers import HeaderRules
from gateway.model import Policy
from gateway.profiles import Profiles
from gateway.routes import Route, host_without_port
from gateway.upstream import authority
from gateway.webhooks import DeliveryRecord, secret_bytes

CACHED = 4096  # targets and Cookie headers remembered per policy
DEFAULT_LABEL = ("default", '"default"')


class Forwarding:
    """What a located target means for the proxy, derived once per target and policy:
    the log label, the upstream, the request target and Host it receives, and Clerk's
    query parameters in it."""

    __slots__ = ("host", "label", "path", "query", "target", "upstream")

    def __init__(
        self, located: Located, policy: Policy, url: bytes, label: tuple[str, str]
    ) -> None:
        route = located.route
        upstream = policy.upstreams.get(route.upstream if route is not None else "default")
        self.upstream = upstream  # None in forward-auth mode: the ingress proxies
        self.label = label
        self.path = located.target.path
        # the normalised path after the upstream's base, and the query exactly as received
        _, mark, query = url.partition(b"?")
        base = upstream.base_path.encode("ascii") if upstream is not None else b""
        self.target = base + located.target.path.encode("ascii") + (mark + query if mark else b"")
        self.host = (
            None
            if upstream is None or upstream.preserve_host
            else authority(upstream).encode("ascii")
        )
        self.query = ClerkQuery.parse(located.target.query)


class Runtime:
    """Everything derived from one policy; swapped atomically on reload."""

    def __init__(
        self,
        policy: Policy,
        keys: KeyCache,
        deliveries: DeliveryRecord,
        backend: BackendAPI | None = None,
    ) -> None:
        self.policy = policy
        clerk = policy.clerk
        self.verifier = SessionVerifier(clerk, keys, policy.role_claim)
        self.rules = HeaderRules(policy.identity_names(), policy.strip_headers)
        self.webhook_secrets = tuple(secret_bytes(s) for s in policy.webhooks.secrets)
        self.deliveries = deliveries
        self.labels: dict[int, tuple[str, str]] = {
            r.index: (r.label, json.dumps(r.label)) for r in policy.routes
        }
        self.instance: Instance | None = instance_of(policy)  # Clerk's handshake on
        self.profiles: Profiles | None = None  # user_profile: (set by the application)
        self.signer: Signer | None = None  # assertion: (set by the application)
        # the Backend API client outlives a reload that keeps its URL and secret
        same = backend is not None and backend.serves(clerk)
        self.backend = backend if backend is not None and same else BackendAPI(clerk)
        networks = policy.trusted_proxies
        # asked per connection, and per request behind a proxy (the log's client address,
        # from X-Forwarded-For): parsing an address costs microseconds, a verdict a lookup
        verdicts: dict[str, bool] = {}

        def trust(client_ip: str) -> bool:
            if not networks or not client_ip:
                return False
            verdict = verdicts.get(client_ip)
            if verdict is None:
                try:
                    ip = ipaddress.ip_address(client_ip)
                except ValueError:
                    verdict = False
                else:
                    verdict = any(ip in net for net in networks)
                if len(verdicts) < CACHED:
                    verdicts[client_ip] = verdict
            return verdict

        self.trust = trust  # a new function per policy: connections re-check on reload
        self._located: dict[tuple[bytes, bytes, bytes], Located | Reason] = {}
        self._extracted: dict[bytes, Extracted] = {}
        self._cookies: dict[bytes, Cookies] = {}

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
                label = self.labels[route.index] if route is not None else DEFAULT_LABEL
                found.engine = Forwarding(found, self.policy, url, label)
            if len(self._located) < CACHED:
                self._located[key] = found
        return found

    def from_cookie(self, cookie: bytes) -> Extracted:
        """This instance's session cookie (Clerk's rules), remembered per Cookie header;
        for a policy without the handshake."""
        found = self._extracted.get(cookie)
        if found is None:
            found = extract(
                None,
                parse_cookies(cookie.decode("latin-1")),
                self.policy.clerk.publishable_key,
                time.time(),
                self.verifier.peek,
            )
            if len(self._extracted) < CACHED:
                self._extracted[cookie] = found
        return found

    def cookies(self, cookie: bytes | None) -> Cookies:
        """What a Cookie header says by Clerk's rules, remembered per header."""
        if cookie is None:
            return NO_COOKIES
        found = self._cookies.get(cookie)
        if found is None:
            found = Cookies.parse(
                cookie, self.policy.clerk.publishable_key, time.time(), self.verifier.peek
            )
            if len(self._cookies) < CACHED:
                self._cookies[cookie] = found
        return found

    def label(self, route: Route | None) -> tuple[str, str]:
        return self.labels[route.index] if route is not None else DEFAULT_LABEL


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
