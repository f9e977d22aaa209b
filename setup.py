"""Builds the request path as C extensions with mypyc; pure Python when that cannot be done.

Everything else about the package is in pyproject.toml. This file exists for one decision,
taken when a wheel is built (`pip install .`, `pip wheel .`, the image's build stage):

- CLERK_GATEWAY_COMPILE=auto (the default): compile the request-path modules with mypyc
  (about 45% less CPU in the Python part of a request, docs/performance.md); with no C
  compiler, or if mypyc fails, warn and build the same package as pure Python. pip shows a
  build's warnings only with `-v`; `clerk-gateway --version` says which build installed.
- CLERK_GATEWAY_COMPILE=require: compile or fail the build (CI and the image use this, so a
  broken compile never passes quietly as the pure fallback).
- CLERK_GATEWAY_COMPILE=no: pure Python.

Editable installs (`pip install -e .`, what `make` gives developers) are always pure: a
compiled module beside its source would shadow every later edit of the `.py`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

# the modes and the module list live with the build backend (buildsystem/);
# checked first, so that a mode not understood stops any build, setuptools or not
sys.path.insert(0, str(Path(__file__).resolve().parent / "buildsystem"))
from compile_settings import COMPILED, compiling, mode

WANTED = mode()

from setuptools import setup  # noqa: E402
from setuptools.command.build_ext import build_ext  # noqa: E402

# setup.py commands that build a wheel or install from this tree (not metadata, not the
# editable wheel)
BUILDS = {"bdist_wheel", "build", "build_ext", "install"}


def warn(message: str) -> None:
    # pip shows a backend's stderr only with -v or on failure; the banner is for those logs
    print(f"\nclerk-gateway: WARNING: {message}\n", file=sys.stderr, flush=True)


def forget_earlier_builds() -> None:
    """setuptools builds in ./build and packs whatever build/lib.* holds: a module deleted
    or no longer compiled since the last build would ship again (a stale `.so` even loads
    in place of its `.py`). Every wheel starts from nothing; mypyc rewrites its C anyway."""
    for stale in Path("build").glob("lib.*"):
        shutil.rmtree(stale)
    for stale in Path("build").glob("bdist.*"):
        shutil.rmtree(stale)


def extensions(wanted: str) -> list[Any]:
    if not BUILDS.intersection(sys.argv[1:]):
        return []
    forget_earlier_builds()
    if not compiling():
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
            if WANTED == "require" or not self.extensions:
                raise
            for built in Path(self.build_lib).rglob("*.so"):
                built.unlink()
            warn(f"no working C compiler ({failure}); building pure Python instead")
            self.extensions = []
            self.distribution.ext_modules = []
            # and the wheel says so: py3-none-any, not tagged for a platform it has no code for
            wheel = self.distribution.get_command_obj("bdist_wheel", create=False)
            if wheel is not None:
                wheel.root_is_pure = True


setup(ext_modules=extensions(WANTED), cmdclass={"build_ext": BuildOrFallBack})
