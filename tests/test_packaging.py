"""setup.py's promise: a compiled request path where it can be built, pure Python otherwise.

Wheels are built from a copy of the checkout, as pip builds them (isolated build
environment from PyPI); the compiled wheel itself is built and run by test_image.py and by
`make test`'s compiled pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import packaging_pass

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
sys.path.insert(0, str(ROOT / "buildsystem"))
from compile_settings import COMPILER  # noqa: E402


def name_of(requirement: str) -> str:
    for stop in "[<>=!~;":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def test_the_build_sees_the_types_the_gateway_is_checked_with() -> None:
    """mypyc type-checks the package when it compiles: every runtime dependency whose types
    the gateway uses is in the compiling build's environment too, pinned to a version its
    runtime range allows, and so are the compiler and the stubs."""
    pinned = {name_of(r): Requirement(r) for r in COMPILER}
    for line in PYPROJECT["project"]["dependencies"]:
        runtime = Requirement(line)
        if runtime.name == "uvloop":  # untyped for mypy (ignore_missing_imports)
            continue
        (spec,) = pinned.pop(name_of(line)).specifier
        assert spec.operator == "==", spec
        assert runtime.specifier.contains(spec.version), (line, spec)
    assert sorted(pinned) == ["mypy", "types-cachetools", "types-pyyaml"]
    assert all(next(iter(r.specifier)).operator == "==" for r in pinned.values())
    # the mypy that `make test` type-checks with is the one that compiles
    assert metadata.version("mypy") == next(iter(pinned["mypy"].specifier)).version


def test_only_a_compiling_build_asks_for_the_compiler() -> None:
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77", "wheel"]
    assert PYPROJECT["build-system"]["build-backend"] == "gateway_build"
    assert PYPROJECT["build-system"]["backend-path"] == ["buildsystem"]
    hooks = [sys.executable, "-c", ASK_REQUIRES]
    for mode, compiles in (("auto", True), ("require", True), ("no", False)):
        asked = subprocess.run(
            hooks,
            cwd=ROOT,
            env={**os.environ, "CLERK_GATEWAY_COMPILE": mode},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        wheel, editable = json.loads(asked.stdout.splitlines()[-1])  # after setuptools' lines
        assert ("mypy==" in " ".join(wheel)) is compiles, (mode, wheel)
        assert not [r for r in editable if r.startswith("mypy")], editable


# the backend's two hooks, as pip calls them (from the project directory, backend-path first)
ASK_REQUIRES = """
import json, sys
sys.path.insert(0, "buildsystem")
import gateway_build
print(json.dumps([
    gateway_build.get_requires_for_build_wheel(None),
    gateway_build.get_requires_for_build_editable(None),
]))
"""


def wheel(tmp_path: Path, **env: str) -> tuple[str, list[str], str]:
    """Build a wheel of a copy of the checkout: its name, its files and the build's log."""
    source, out = tmp_path / "src", tmp_path / "wheels"
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    for directory in ("gateway", "buildsystem"):
        shutil.copytree(ROOT / directory, source / directory, ignore=ignored)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # what an earlier build left behind: a module since deleted, and a compiled one
    stale = source / "build" / "lib.linux-x86_64-cpython-311" / "gateway"
    stale.mkdir(parents=True)
    (stale / "deleted_since.py").write_text("raise SystemExit('stale')\n")
    (stale / "http1.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not a library")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(source)],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = built.stdout + built.stderr
    if built.returncode != 0:
        return "", [], log
    (path,) = out.glob("*.whl")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert "gateway/deleted_since.py" not in names  # every build starts from nothing
    return path.name, names, log


@packaging_pass
@pytest.mark.timeout(600)
def test_without_a_c_compiler_the_wheel_is_pure_python_and_says_so(tmp_path: Path) -> None:
    name, names, log = wheel(tmp_path, CC="/bin/false")
    assert names, log[-3000:]
    assert name.endswith("-py3-none-any.whl")  # tagged as what it is
    assert "gateway/app.py" in names
    assert not [n for n in names if n.endswith(".so")]
    assert "__mypyc' extension" in log  # translated, then the compiler failed
    assert "clerk-gateway: WARNING: no working C compiler" in log


@packaging_pass
@pytest.mark.timeout(600)
def test_require_fails_the_build_instead_of_falling_back(tmp_path: Path) -> None:
    _, names, log = wheel(tmp_path, CC="/bin/false", CLERK_GATEWAY_COMPILE="require")
    assert names == [], "a wheel was built although its compile failed"
    assert "error: Command '['/bin/false'" in log, log[-3000:]  # the compiler, not mypyc
    assert "WARNING: no working C compiler" not in log


@packaging_pass
@pytest.mark.timeout(600)
def test_compile_no_builds_pure_python_without_running_mypyc(tmp_path: Path) -> None:
    name, names, log = wheel(tmp_path, CLERK_GATEWAY_COMPILE="no")
    assert name.endswith("-py3-none-any.whl"), log[-3000:]
    assert "gateway/http1.py" in names
    assert "Collecting mypy" not in log  # the build environment never asked for it
    assert not [n for n in names if n.endswith(".so")]
    assert "__mypyc' extension" not in log  # nothing was even translated


def test_a_mode_not_understood_fails_the_build(tmp_path: Path) -> None:
    setup = subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "--name"],
        cwd=ROOT,
        env={**os.environ, "CLERK_GATEWAY_COMPILE": "yes-please"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert setup.returncode != 0
    assert "CLERK_GATEWAY_COMPILE='yes-please': expected one of auto, require, no" in setup.stderr
    assert "setuptools" not in setup.stderr  # refused before setuptools is even imported
