"""The signed identity assertion: a short-lived ES256 JWT per forwarded request, so an
upstream that other paths can also reach can tell a request really came through the
gateway (a plain `X-Clerk-User-Id` proves nothing to a zero-trust upstream).

Claims: `iss` (assertion.issuer), `aud` (the upstream's name), `sub`, `sid`, `org_id`,
`org_role`, `role`, `iat`, `exp` = `iat` + ttl_s, `jti`. The public keys are served as a
JWKS at `/.well-known/jwks.json` on the admin listener.

Keys: `key_file` holds one or more PEM EC P-256 private keys; the FIRST signs and all are
published, so a rotation never breaks an upstream: add the new key second (published,
not yet signing) and reload, wait for upstreams to refresh their JWKS cache, move it first
and reload, later drop the old one. Without a key file one key is generated at start (with
a warning; upstreams must refetch the JWKS after each restart). `kid` is the key's RFC 7638
thumbprint, the same in every worker and across restarts.

Minting costs an EC signature (~30 µs here): an assertion is minted once per (session
token, upstream) and reused until half its lifetime has passed, so an upstream always
receives one valid for at least ttl_s / 2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.decision import Principal
from gateway.model import AssertionSettings

log = logging.getLogger("clerk_gateway.assertion")

ALGORITHM = "ES256"
# Set by the supervisor when it generated the key, so every worker signs with the same one.
GENERATED_KEY_ENV = "CLERK_GATEWAY_GENERATED_ASSERTION_KEY"


class KeyFileError(ValueError):
    pass


def load_keys(path: str) -> list[ec.EllipticCurvePrivateKey]:
    """Every PEM private key in the file, in order; each must be EC P-256."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    blocks = _pem_blocks(text)
    if not blocks:
        raise KeyFileError(f"{path} holds no PEM private key")
    keys: list[ec.EllipticCurvePrivateKey] = []
    for i, block in enumerate(blocks, start=1):
        try:
            key = serialization.load_pem_private_key(block, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path}: key {i} is not a readable private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KeyFileError(f"{path}: key {i} is not an EC P-256 key (ES256 needs one)")
        keys.append(key)
    return keys


def _pem_blocks(text: bytes) -> list[bytes]:
    blocks, current = [], bytearray()
    for line in text.splitlines(keepends=True):
        if line.startswith(b"-----BEGIN") and b"PRIVATE KEY" in line:
            current = bytearray(line)
        elif current:
            current += line
            if line.startswith(b"-----END"):
                blocks.append(bytes(current))
                current = bytearray()
    return blocks


def generate_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_generated_key(directory: str) -> str:
    """A fresh key in a private file (the supervisor's, shared with its workers)."""
    path = os.path.join(directory, "assertion-key.pem")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(generate_pem())
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    # RFC 7638: the SHA-256 of the required members, in lexicographic order, no spaces
    thumbprint = hashlib.sha256(
        json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode("ascii")
    ).digest()
    return {**jwk, "kid": _b64(thumbprint), "alg": ALGORITHM, "use": "sig"}


class Signer:
    """Mints assertions with the first key; publishes every key."""

    def __init__(self, settings: AssertionSettings, keys: list[ec.EllipticCurvePrivateKey]):
        self.settings = settings
        self.keys = keys
        self.key = keys[0]
        published = [public_jwk(k) for k in keys]
        self.kid = published[0]["kid"]
        self.jwks: Mapping[str, Any] = {"keys": published}
        self.header_name = settings.header.encode("latin-1")
        self._headers = {"kid": self.kid, "typ": "JWT"}

    @classmethod
    def for_settings(cls, settings: AssertionSettings) -> Signer:
        """From `key_file`, else the supervisor's generated key, else a new one (warned)."""
        path = settings.key_file
        if path is not None and Path(path).exists():
            return cls(settings, load_keys(path))
        generated = os.environ.get(GENERATED_KEY_ENV)
        if generated and Path(generated).exists():
            keys = load_keys(generated)
        else:
            keys = [ec.generate_private_key(ec.SECP256R1())]
        log.warning(
            "assertion signing key generated at start: upstreams must refetch the JWKS "
            "after every restart; set assertion.key_file to a stable key",
            extra={"key_file": path, "kid": public_jwk(keys[0])["kid"]},
        )
        return cls(settings, keys)

    def mint(self, principal: Principal, audience: str, now: float) -> str:
        iat = int(now)
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "aud": audience,
            "sub": principal.user_id,
            "iat": iat,
            "exp": iat + self.settings.ttl_s,
            "jti": secrets.token_hex(12),
        }
        if principal.session_id is not None:
            claims["sid"] = principal.session_id
        if principal.org_id is not None:
            claims["org_id"] = principal.org_id
        if principal.org_role is not None:
            claims["org_role"] = principal.org_role
        if principal.roles:
            claims["role"] = ",".join(principal.roles)
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers=self._headers)

    def header(
        self, memo: dict[str, tuple[bytes, float]], principal: Principal, audience: str
    ) -> bytes:
        """The header line for a request to `audience`, reused from `memo` (kept on the
        verified token) while it has at least half its lifetime left."""
        now = time.time()
        known = memo.get(audience)
        if known is not None and now < known[1]:
            return known[0]
        line = b"%s: %s\r\n" % (
            self.header_name,
            self.mint(principal, audience, now).encode("ascii"),
        )
        if len(memo) >= 8:
            memo.clear()  # a token is used with a handful of upstreams at most
        # from the `iat` written (whole seconds), not from now: a reused one keeps at least
        # half its lifetime, as the docs promise
        memo[audience] = (line, int(now) + self.settings.ttl_s / 2)
        return line
