"""Browser sessions as Clerk's frontend API keeps them: clients, sessions, handshake payloads.

A *client* is one browser (Clerk keeps its id in the `__client` cookie on the frontend
API's own host); it has at most one active *session*. The handshake hands the APP's host
its cookies as `Set-Cookie` directive strings (no Domain attribute, so they land on
whatever host the app is on), carried back either as a single-use nonce the app's backend
exchanges through the Backend API, or inline as a signed JWT.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

ONE_YEAR_S = 31_536_000


@dataclass
class Client:
    id: str
    user_id: str | None = None
    session_id: str | None = None
    client_uat: int = 0  # the sign-in time in Unix seconds; 0 while signed out

    @property
    def signed_in(self) -> bool:
        return self.user_id is not None and self.session_id is not None

    def start_session(self, user_id: str, now_s: int) -> None:
        """A sign-in always makes a new session, as Clerk does, even for the same user."""
        self.user_id = user_id
        self.session_id = "sess_" + secrets.token_hex(12)
        self.client_uat = now_s

    def end_session(self) -> None:
        self.user_id = None
        self.session_id = None
        self.client_uat = 0


def new_client_id() -> str:
    return "client_" + secrets.token_hex(12)


def new_dev_browser() -> str:
    """Opaque to the app: Clerk's SDKs only check that a dev-browser token is present."""
    return "dvb_" + secrets.token_urlsafe(24)


def _names(base: str, suffix: str | None) -> list[str]:
    """Clerk writes the suffixed name beside the plain one, so older SDKs keep working."""
    return [base] if suffix is None else [base, f"{base}_{suffix}"]


def signed_in_directives(token: str, client_uat: int, suffix: str | None) -> list[str]:
    return [f"{n}={token}; Path=/; SameSite=Lax" for n in _names("__session", suffix)] + [
        f"{n}={client_uat}; Path=/; SameSite=Lax; Max-Age={ONE_YEAR_S}"
        for n in _names("__client_uat", suffix)
    ]


def signed_out_directives(suffix: str | None) -> list[str]:
    return [f"{n}=; Path=/; Max-Age=0" for n in _names("__session", suffix)] + [
        f"{n}=0; Path=/; SameSite=Lax; Max-Age={ONE_YEAR_S}" for n in _names("__client_uat", suffix)
    ]


def dev_browser_directives(token: str, suffix: str | None) -> list[str]:
    return [f"{n}={token}; Path=/; SameSite=Lax" for n in _names("__clerk_db_jwt", suffix)]


@dataclass
class NonceStore:
    """Handshake payloads waiting for the app's backend: single use, short-lived."""

    _payloads: dict[str, tuple[list[str], float]] = field(default_factory=dict)

    def issue(self, directives: list[str], now: float, ttl_s: float) -> str:
        self._drop_expired(now)
        nonce = secrets.token_urlsafe(24)
        self._payloads[nonce] = (list(directives), now + ttl_s)
        return nonce

    def take(self, nonce: str, now: float) -> list[str] | None:
        """The payload, once; None for a nonce never issued, already used or expired."""
        entry = self._payloads.pop(nonce, None)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def __len__(self) -> int:
        return len(self._payloads)

    def _drop_expired(self, now: float) -> None:
        # Payloads nobody collects (a closed tab) would otherwise pile up.
        for nonce in [n for n, (_, expires) in self._payloads.items() if expires <= now]:
            del self._payloads[nonce]
