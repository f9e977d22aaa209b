"""Session verification with state: keys from the key cache, and a verified-token cache."""

from __future__ import annotations

from gateway.clerk.tokens import VerifyOptions
from gateway.config import ClerkSettings


def options_for(settings: ClerkSettings) -> VerifyOptions:
    parties = settings.authorized_parties
    return VerifyOptions(
        issuer=settings.issuer,
        authorized_parties=frozenset(parties) if parties is not None else None,
        allow_missing_azp=settings.allow_missing_azp,
        clock_skew_ms=settings.clock_skew_ms,
    )
