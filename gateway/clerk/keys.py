"""Clerk's key material: the publishable key's meaning, and PEM public keys.

A publishable key is `pk_test_` or `pk_live_` plus base64 of `<frontend-api-host>$`. It
names the instance: the frontend API host (hence the token issuer) and the suffix Clerk
appends to its cookie names so that several apps on one domain do not read each other's
session cookie.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key


class KeyMaterialError(ValueError):
    """A malformed publishable key or PEM; the message never contains the key itself."""


@dataclass(frozen=True, slots=True)
class PublishableKey:
    frontend_api: str
    live: bool
    cookie_suffix: str

    @property
    def issuer(self) -> str:
        return f"https://{self.frontend_api}"


def parse_publishable_key(key: str) -> PublishableKey:
    parts = key.split("_")
    if len(parts) != 3 or parts[0] != "pk" or parts[1] not in ("test", "live"):
        raise KeyMaterialError("a publishable key looks like pk_test_... or pk_live_...")
    encoded = parts[2]
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        text = decoded.decode("ascii")
    except (binascii.Error, ValueError):
        raise KeyMaterialError(
            "the publishable key's body is not base64 of an ASCII host"
        ) from None
    if not text.endswith("$") or text.count("$") != 1 or "." not in text:
        raise KeyMaterialError("the publishable key does not encode '<frontend-api-host>$'")
    host = text[:-1]
    if not host or any(c in host for c in "/?#@ \t\r\n"):
        raise KeyMaterialError("the publishable key does not encode a host name")
    return PublishableKey(host, parts[1] == "live", cookie_suffix(key))


def cookie_suffix(publishable_key: str) -> str:
    """First 8 characters of URL-safe base64 of SHA-1 of the key (@clerk/shared keys.ts)."""
    digest = hashlib.sha1(publishable_key.encode("utf-8"), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:8]


def load_pem_key(pem: str) -> RSAPublicKey:
    """Clerk's "JWT public key" (Dashboard > API keys) as an RSA public key.

    Unlike Clerk's JS SDK, which splices the modulus out of a fixed 2048-bit prefix, this
    reads any RSA SubjectPublicKeyInfo; a non-RSA or short key is refused.
    """
    text = pem.strip().replace("\\n", "\n")
    try:
        key = load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError):
        raise KeyMaterialError("jwt_key is not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise KeyMaterialError("jwt_key must be an RSA public key (Clerk signs with RS256)")
    if key.key_size < 2048:
        raise KeyMaterialError(
            f"jwt_key is a {key.key_size}-bit RSA key; at least 2048 bits needed"
        )
    return key
