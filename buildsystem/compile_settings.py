"""What a build of clerk-gateway compiles, and when: read by setup.py and by the build
backend (gateway_build.py). No setuptools here, so that a mode not understood stops a
build before anything else is imported."""

from __future__ import annotations

import os
import sys

MODES = ("auto", "require", "no")

# The modules every request runs through, and token verification on a cache miss. The
# rest (configuration, the CLI, the Clerk stand-in, key fetching) stays Python.
COMPILED = (
    "http1",
    "headers",
    "upstream",
    "accesslog",
    "correlation",
    "metrics",
    "runtime",
    "app",
    "decide",
    "decision",
    "responses",
    "identity",
    "clerk/tokens",
    "clerk/claims",
    "clerk/verifier",
)

# mypy type-checks the whole package as `mypy --strict gateway` does before mypyc compiles
# it: the typed runtime dependencies (within [project.dependencies]' ranges; a test checks)
# and the stubs, pinned like the compiler, so a new release of one cannot turn a build
# into a type error (auto: a quiet pure fallback; require: a failed image build).
COMPILER = (
    "mypy==2.4.1",
    "aiohttp==3.14.5",
    "httptools==0.9.0",
    "PyJWT[crypto]==2.15.1",
    "cryptography==50.0.2",
    "cachetools==8.0.2",
    "PyYAML==6.0.4",
    "prometheus-client==0.26.0",
    "types-PyYAML==6.0.12.20261122",
    "types-cachetools==7.0.0.20260713",
)


def mode() -> str:
    """CLERK_GATEWAY_COMPILE, checked: anything but auto, require or no stops the build."""
    value = os.environ.get("CLERK_GATEWAY_COMPILE", "auto").strip().lower() or "auto"
    if value not in MODES:
        sys.exit(f"CLERK_GATEWAY_COMPILE={value!r}: expected one of {', '.join(MODES)}")
    return value


def compiling() -> bool:
    return mode() != "no" and sys.implementation.name == "cpython"
