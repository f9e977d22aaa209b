"""Builds the request path as C extensions with mypyc; pure Python when that cannot be done.

Everything else about the package is in pyproject.toml. This file exists for one decision,
taken when a wheel is built (`pip install .`, `pip wheel .`, the image's build stage):

- CLERK_GATEWAY_COMPILE=auto (the default): compile the request-path modules with mypyc
  (about 45% less CPU per request, docs/performance.md); with no C compiler, or if mypyc
  fails, say so loudly and build the same package as pure Python.
- CLERK_GATEWAY_COMPILE=require: compile or fail the build (CI and the image use this, so a
  broken compile never passes quietly as the pure fallback).
- CLERK_GATEWAY_COMPILE=no: pure Python.

Editable installs (`pip install -e .`, what `make` gives developers) are always pure: a
compiled module beside its source would shadow every later edit of the `.py`.
`clerk-gateway version` says which build is running.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

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
MODES = ("auto", "require", "no")
# setup.py commands that build a wheel or install from this tree (not metadata, not the
# editable wheel)
BUILDS = {"bdist_wheel", "build", "build_ext", "install"}


def mode() -> str:
    value = os.environ.get("CLERK_GATEWAY_COMPILE", "auto").strip().lower() or "auto"
    if value not in MODES:
        sys.exit(f"CLERK_GATEWAY_COMPILE={value!r}: expected one of {', '.join(MODES)}")
    return value


def warn(message: str) -> None:
    # pip shows a backend's stderr only with -v or on failure; the banner is for those logs
    print(f"\nclerk-gateway: WARNING: {message}\n", file=sys.stderr, flush=True)


def extensions(wanted: str) -> list[Any]:
    if wanted == "no" or not BUILDS.intersection(sys.argv[1:]):
        return []
    if sys.implementation.name != "cpython":
        if wanted == "require":
            sys.exit("CLERK_GATEWAY_COMPILE=require: mypyc needs CPython")
        return []
    try:
        from mypyc.build import mypycify

        # relative paths, from this directory (where build backends run setup.py): mypy
        # takes its options from pyproject.toml, mypyc writes its C under build/
        return list(mypycify([f"gateway/{name}.py" for name in COMPILED], opt_level="3"))
    except (Exception, SystemExit) as failure:  # mypyc exits on a type error
        if wanted == "require":
            raise
        warn(f"mypyc could not translate the request path ({failure!r}); building pure Python")
        return []


class BuildOrFallBack(build_ext):
    """build_ext that, in auto mode, drops every compiled module if any fails to build.

    All or nothing: the compiled modules share one runtime library, and a half-compiled
    package would be the one build nobody tested.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as failure:
            if mode() == "require" or not self.extensions:
                raise
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            warn(f"no working C compiler ({failure}); building pure Python instead")
            self.extensions = []
            self.distribution.ext_modules = []


setup(ext_modules=extensions(mode()), cmdclass={"build_ext": BuildOrFallBack})
