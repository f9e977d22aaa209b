"""The build backend: setuptools, plus the compiler only for the builds that compile.

pyproject.toml names this module (`backend-path`). It is setuptools' own backend with one
change: a wheel build that will compile the request path (setup.py; CLERK_GATEWAY_COMPILE
not `no`, CPython) also asks for mypy, which holds mypyc, and for the libraries whose types
mypy checks the package against, all pinned (compile_settings.py), so that every build
compiles the same C from the same types. Editable installs (`make demo`, developers) and
`no` builds need none of it.
"""

from __future__ import annotations

from typing import Any

from compile_settings import COMPILER, compiling
from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403  (every hook not redefined below)


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    wanted: list[str] = build_meta.get_requires_for_build_wheel(config_settings)
    return wanted + list(COMPILER) if compiling() else wanted
