"""setup.py's promise: a compiled request path where it can be built, pure Python otherwise.

Wheels are built from a copy of the checkout, as pip builds them (isolated build
environment from PyPI); the compiled wheel itself is built and run by test_image.py and by
`make test`'s compiled pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import packaging_pass

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def name_of(requirement: str) -> str:
    for stop in "[<>=!~;":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def test_the_build_sees_the_types_the_gateway_is_checked_with() -> None:
    """mypyc type-checks the package when it compiles: every runtime dependency whose types
    the gateway uses must be in the build environment too, in the same range."""
    build = {name_of(r): r for r in PYPROJECT["build-system"]["requires"]}
    for requirement in PYPROJECT["project"]["dependencies"]:
        if name_of(requirement) == "uvloop":  # untyped for mypy (ignore_missing_imports)
            continue
        assert build.get(name_of(requirement)) == requirement
    assert build["mypy"].startswith("mypy==")  # the compiler pinned: the same C every build


def wheel(tmp_path: Path, **env: str) -> tuple[list[str], str]:
    """Build a wheel of a copy of the checkout; its file names and the build's log."""
    source, out = tmp_path / "src", tmp_path / "wheels"
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    shutil.copytree(ROOT / "gateway", source / "gateway", ignore=ignored)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
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
        return [], log
    (path,) = out.glob("*.whl")
    with zipfile.ZipFile(path) as archive:
        # a fallback's wheel keeps its platform tag, its modules under .data/purelib/
        return [n.split("/purelib/")[-1] for n in archive.namelist()], log


@packaging_pass
@pytest.mark.timeout(600)
def test_without_a_c_compiler_the_wheel_is_pure_python_and_says_so(tmp_path: Path) -> None:
    names, log = wheel(tmp_path, CC="/bin/false")
    assert names, log[-3000:]
    assert "gateway/app.py" in names
    assert not [n for n in names if n.endswith(".so")]
    assert "__mypyc' extension" in log  # translated, then the compiler failed
    assert "clerk-gateway: WARNING: no working C compiler" in log


@packaging_pass
@pytest.mark.timeout(600)
def test_require_fails_the_build_instead_of_falling_back(tmp_path: Path) -> None:
    names, log = wheel(tmp_path, CC="/bin/false", CLERK_GATEWAY_COMPILE="require")
    assert names == [], "a wheel was built although its compile failed"
    assert "error: Command '['/bin/false'" in log, log[-3000:]  # the compiler, not mypyc
    assert "WARNING: no working C compiler" not in log


@packaging_pass
@pytest.mark.timeout(600)
def test_compile_no_builds_pure_python_without_running_mypyc(tmp_path: Path) -> None:
    names, log = wheel(tmp_path, CLERK_GATEWAY_COMPILE="no")
    assert "gateway/http1.py" in names
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
