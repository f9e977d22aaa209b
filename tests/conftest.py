"""Shared fixtures: a Clerk stand-in with pre-generated keys, served on loopback."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import gateway
from gateway.devclerk import DevClerk, SigningKey, new_rsa_key

if TYPE_CHECKING:  # the scrape needs the integration harness: imported only when used
    from tests.scrape import Scrape

_POOL: list[rsa.RSAPrivateKey] = []
# `make test` runs the suite on the sources (python) and on the installed wheel (compiled),
# and says which; a run that would silently test another build (or a half-compiled one,
# or one with a stale compiled module) stops before any test.
BUILD_ENV = "CLERK_GATEWAY_TEST_BUILD"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "buildsystem"))
from compile_settings import COMPILED  # noqa: E402

# Slow checks of packaging (wheels built from scratch) run once, in the compiled pass.
packaging_pass = pytest.mark.skipif(
    os.environ.get(BUILD_ENV) == "python",
    reason="packaging (building wheels) is checked in make test's compiled pass",
)


def pytest_report_header(config: pytest.Config) -> str:
    return f"clerk-gateway: {gateway.build()} build, from {os.path.dirname(gateway.__file__)}"


def pytest_configure(config: pytest.Config) -> None:
    wanted = os.environ.get(BUILD_ENV)
    if not wanted:
        return
    package = Path(gateway.__file__).parent
    compiled = sorted(str(p.relative_to(package)).split(".", 1)[0] for p in package.rglob("*.so"))
    expected = sorted(COMPILED) if wanted == "compiled" else []
    if wanted != gateway.build() or compiled != expected:
        raise pytest.UsageError(
            f"{BUILD_ENV}={wanted}, but the gateway imported from {package} is the "
            f"{gateway.build()} build with compiled modules {compiled} (expected {expected})"
        )


def rsa_keys(n: int) -> list[rsa.RSAPrivateKey]:
    """RSA keys generated once per test session (2048-bit generation is slow)."""
    while len(_POOL) < n:
        _POOL.append(new_rsa_key())
    return _POOL[:n]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test on plain asyncio and on uvloop (what `clerk-gateway run` uses)."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    try:
        import uvloop
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture
def devclerk() -> DevClerk:
    keys = rsa_keys(3)
    clerk = DevClerk(keys=[SigningKey("ins_test_key_1", keys[0])])
    return clerk


@pytest.fixture
def spare_keys() -> list[rsa.RSAPrivateKey]:
    return rsa_keys(3)[1:]


@pytest.fixture(scope="session")
def metrics_scrape(tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """A real `/metrics` scrape of a gateway after traffic of every kind (tests/scrape.py)."""
    from tests.scrape import scrape_after_traffic

    return scrape_after_traffic(tmp_path_factory.mktemp("scrape"))
