"""Shared fixtures: a Clerk stand-in with pre-generated keys, served on loopback."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.devclerk import DevClerk, SigningKey, new_rsa_key

_POOL: list[rsa.RSAPrivateKey] = []


def rsa_keys(n: int) -> list[rsa.RSAPrivateKey]:
    """RSA keys generated once per test session (2048-bit generation is slow)."""
    while len(_POOL) < n:
        _POOL.append(new_rsa_key())
    return _POOL[:n]


@pytest.fixture
def devclerk() -> DevClerk:
    keys = rsa_keys(3)
    clerk = DevClerk(keys=[SigningKey("ins_test_key_1", keys[0])])
    return clerk


@pytest.fixture
def spare_keys() -> list[rsa.RSAPrivateKey]:
    return rsa_keys(3)[1:]
