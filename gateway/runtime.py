"""Everything derived from one policy, swapped as a whole on reload: the verifier and its
caches, the header rules, the trust function, and the per-target and per-Cookie-header
facts the request path asks for again and again (each computed once, then a dict lookup).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import OrderedDict
from collections.abc import Callable, ItemsView
from typing import Generic, TypeVar

from gateway.assertion import Signer
from gateway.clerk.backend import BackendAPI
from gateway.clerk.handshake import (
    NO_COOKIES,
    ClerkQuery,
    Cookies,
    Instance,
    instance_of,
    without_handshake,
    without_handshake_cookies,
)
from gateway.clerk.jwks import KeyCache
from gateway.clerk.tokens import Extracted, extract, token_from_authorization
from gateway.clerk.verifier import SessionVerifier
from gateway.decide import Located, locate
from gateway.decision import Reason
from gateway.headers import HeaderRules
from gateway.model import Policy
from gateway.profiles import Profiles
from gateway.routes import Route, host_without_port, valid_authority
from gateway.upstream import authority
from gateway.webhooks import DeliveryRecord, secret_bytes

CACHED = 4096  # targets and Cookie headers remembered per policy, at most
CACHED_BYTES = 4 * 2**20  # and what their keys weigh, at most, per memo
BIGGEST_KEY = 16_384  # a key beyond this is computed each time, never remembered
DEFAULT_LABEL = ("default", '"default"')
_UNCHANGED = bytes(bytearray(b"unchanged"))  # a fresh object, compared by identity


K = TypeVar("K", bytes, tuple[bytes, bytes, bytes])
V = TypeVar("V")


class Memo(Generic[K, V]):
    """A dict of what was computed per request fact (a target, a Cookie header), bounded in
    entries and in the bytes of its keys (the values are derived from them and weigh about
    as much): anonymous clients choose those keys, up to the header limits, and must not
    grow a worker by hundreds of megabytes. The oldest entries go first, so a flood of junk
    passes through and real users' headers are remembered again after it."""

    __slots__ = ("_bytes", "_entries", "get")

    def __init__(self) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()  # the oldest goes in O(1)
        self._bytes = 0
        self.get: Callable[[K], V | None] = self._entries.get  # the hit path: one C call

    @staticmethod
    def weight(key: bytes | tuple[bytes, bytes, bytes]) -> int:
        if isinstance(key, bytes):
            return len(key) + 64
        return len(key[0]) + len(key[1]) + len(key[2]) + 64

    def put(self, key: K, value: V) -> None:
        weight = self.weight(key)
        if weight > BIGGEST_KEY:
            return
        entries = self._entries
        while entries and (len(entries) >= CACHED or self._bytes + weight > CACHED_BYTES):
            oldest, _ = entries.popitem(last=False)
            self._bytes -= self.weight(oldest)
        entries[key] = value
        self._bytes += weight

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> ItemsView[K, V]:
        return self._entries.items()

    @property
    def held_bytes(self) -> int:
        return self._bytes


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
        if b"__clerk" in query or b"__dev_session" in query:
            # the handshake's parameters are the gateway's business, never the upstream's
            kept = without_handshake("?" + query.decode("latin-1")).encode("latin-1")
            self.target = self.target[: len(self.target) - len(query) - 1] + kept


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
        self._located: Memo[tuple[bytes, bytes, bytes], Located | Reason] = Memo()
        self._extracted: Memo[bytes, Extracted] = Memo()
        self._cookies: Memo[bytes, Cookies] = Memo()
        self._upstream_cookies: Memo[bytes, bytes] = Memo()
        self._bearer: Memo[bytes, str] = Memo()

    def locate(self, method: bytes, host: bytes, url: bytes) -> Located | Reason:
        """`decide.locate`, remembered per (method, host, target)."""
        key = (method, host, url)
        found = self._located.get(key)
        if found is None:
            text = host.decode("latin-1")
            if valid_authority(text):
                target = url.decode("utf-8", "surrogateescape")
                method_name = method.decode("latin-1")
                found = locate(self.policy, method_name, host_without_port(text), target)
            else:
                found = Reason.REQUEST_MALFORMED
            if isinstance(found, Located):
                route = found.route
                label = self.labels[route.index] if route is not None else DEFAULT_LABEL
                found.engine = Forwarding(found, self.policy, url, label)
            self._located.put(key, found)
        return found

    def bearer(self, authorization: bytes) -> str | None:
        """The token an Authorization header carries, remembered per header value: the
        same string each time, whose hash the verifier's cache lookup then does not compute
        again (a token is about a kilobyte), and no slicing, stripping or decoding."""
        found = self._bearer.get(authorization)
        if found is None:
            if authorization[:7] == b"Bearer ":
                found = authorization[7:].strip().decode("latin-1")
            else:
                found = token_from_authorization(authorization.decode("latin-1")) or ""
            self._bearer.put(authorization, found)
        return found or None

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
            self._extracted.put(cookie, found)
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
            self._cookies.put(cookie, found)
        return found

    def upstream_cookie(self, cookie: bytes) -> bytes | None:
        """The Cookie header the upstream gets when it names a `__clerk_` cookie: without
        the handshake's own (None: unchanged), whatever the path (header token, API call,
        handshake off)."""
        found = self._upstream_cookies.get(cookie)
        if found is None:
            found = without_handshake_cookies(cookie)
            if found is None:
                found = _UNCHANGED
            self._upstream_cookies.put(cookie, found)
        return None if found is _UNCHANGED else found

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
