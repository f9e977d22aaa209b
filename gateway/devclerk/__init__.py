"""A local Clerk stand-in for the demo and the tests: keys, a JWKS, token minting.

It serves the key set the way Clerk's Backend API does (`GET /v1/jwks`, answered only
with `Authorization: Bearer <secret key>`) and the way a frontend API does
(`/.well-known/jwks.json`), and mints session tokens with Clerk's real v2 claim shape.
Tests use its knobs to rotate keys, go down, answer garbage or answer slowly, and count
the fetches it served. It binds to loopback only.
"""

from gateway.devclerk.keys import SigningKey, new_rsa_key, publishable_key_for
from gateway.devclerk.standin import DEMO_USERS, LOOPBACK, DevClerk, serve

__all__ = [
    "DEMO_USERS",
    "LOOPBACK",
    "DevClerk",
    "SigningKey",
    "new_rsa_key",
    "publishable_key_for",
    "serve",
]
