"""A local Clerk stand-in for the demo and the tests, with no Clerk account.

It plays the parts of a Clerk instance a gateway talks to:

- the Backend API (`backend.py`): `/v1/jwks`, `/v1/users/{id}` and
  `/v1/clients/handshake_payload`, answered only with the secret key;
- the frontend API for browsers (`frontend.py`): `/.well-known/jwks.json`, a sign-in page,
  the handshake `/v1/client/handshake` and sign-out;
- webhooks: Svix-signed `user.*` events, in step with the user store;
- demo conveniences (`demoroutes.py`): `/demo/token/{who}` and `POST /demo/users`.

Tokens have Clerk's real v2 shape. Tests use its knobs to rotate keys, stage outages, rate
limits and slow answers, and count the calls it served. It binds to loopback only.
"""

from gateway.devclerk.claims import encode_org_permissions, org_claims
from gateway.devclerk.keys import SigningKey, new_rsa_key, publishable_key_for
from gateway.devclerk.sessions import Client
from gateway.devclerk.standin import LOOPBACK, DevClerk, default_frontend_url, serve
from gateway.devclerk.users import DEMO_USERS

__all__ = [
    "DEMO_USERS",
    "LOOPBACK",
    "Client",
    "DevClerk",
    "SigningKey",
    "default_frontend_url",
    "encode_org_permissions",
    "new_rsa_key",
    "org_claims",
    "publishable_key_for",
    "serve",
]
