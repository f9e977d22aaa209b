"""The stand-in's key material: RSA signing keys, their JWKs, and a publishable key."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def publishable_key_for(frontend_api: str, *, live: bool = False) -> str:
    encoded = base64.b64encode(f"{frontend_api}$".encode()).decode().rstrip("=")
    return f"pk_{'live' if live else 'test'}_{encoded}"


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def new_kid() -> str:
    """Clerk names an instance's key after the instance (`ins_...`)."""
    return "ins_" + secrets.token_hex(12)


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key())
        )
        data.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return data

    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
