"""What a benchmark run ran on: the Python build that runs the gateway, its event loop and
libraries, the machine, the date, and the nginx and wrk versions.

The interpreter is asked in a subprocess (it may not be the one running the bench), and a
PGO or LTO build is read from its `CONFIG_ARGS` (`--enable-optimizations`, `--with-lto`)
and its compiler flags (`-fprofile-use`, `-flto`), which a distribution's build may set
without the configure switches.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from harness import nginx_binary

_ASK = r"""
import json, platform, sys, sysconfig
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
try:
    import gateway.http1
    compiled = not gateway.http1.__file__.endswith(".py")
except ImportError:
    compiled = None
try:
    import uvloop
    loop = f"uvloop {uvloop.__version__}"
except ImportError:
    loop = "asyncio (uvloop not installed)"
flags = " ".join(
    str(sysconfig.get_config_var(v) or "")
    for v in ("PY_CFLAGS_NODIST", "PY_LDFLAGS_NODIST", "CFLAGS", "LDFLAGS", "OPT")
)
print(json.dumps({
    "executable": sys.executable,
    "version": sys.version,
    "implementation": platform.python_implementation(),
    "config_args": sysconfig.get_config_var("CONFIG_ARGS"),
    "compiler_flags": flags,
    "event_loop": loop,
    "gateway_compiled": compiled,
    "libraries": {n: version(n) for n in (
        "clerk-gateway", "httptools", "uvloop", "cryptography", "PyJWT", "aiohttp")},
}))
"""


def python_build(python: str) -> dict[str, Any]:
    """The build of `python` (the gateway's interpreter), or {"error": ...}."""
    try:
        out = subprocess.run(
            [python, "-c", _ASK],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd="/",  # as the gateway runs: not importing the checkout it is started from
        ).stdout
        info: dict[str, Any] = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"executable": python, "error": f"{type(exc).__name__}: {exc}"}
    args = info.get("config_args") or ""
    flags = info.pop("compiler_flags", "")
    info["real_executable"] = os.path.realpath(info["executable"])
    info["pgo"] = "--enable-optimizations" in args or "-fprofile-use" in flags
    info["lto"] = "--with-lto" in args or "-flto" in flags
    return info


def _cpu_model() -> str:
    with_name = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        if line.startswith("model name")
    ]
    return with_name[0] if with_name else platform.processor() or "unknown"


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"
    text = (done.stdout + done.stderr).strip()  # nginx -v prints to stderr; wrk -v exits 1
    return text.splitlines()[0] if text else "unknown"


def environment(python: str) -> dict[str, Any]:
    nproc = _first_line(["nproc"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": python_build(python),
        "machine": {
            "nproc": int(nproc) if nproc.isdigit() else nproc,
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "nginx": _first_line([nginx_binary(), "-v"]),
        "wrk": re.sub(r"\s*Copyright.*", "", _first_line(["wrk", "-v"])),
    }


def describe(env: dict[str, Any]) -> str:
    """A few lines for the console (the JSON keeps everything)."""
    py = env["python"]
    if "error" in py:
        build = f"{py['executable']}: could not be asked ({py['error']})"
    else:
        optimized = ", ".join(
            f"{what} {'yes' if py[key] else 'no'}" for what, key in (("PGO", "pgo"), ("LTO", "lto"))
        )
        build = (
            f"{py['implementation']} {py['version'].split()[0]} ({py['real_executable']}; "
            f"{optimized}); {py['event_loop']}; "
            + ("request path compiled with mypyc; " if py.get("gateway_compiled") else "")
            + ", ".join(f"{k} {v}" for k, v in py["libraries"].items() if v)
        )
    machine = env["machine"]
    return "\n".join(
        [
            f"date: {env['date']}",
            f"gateway's Python: {build}",
            f"  CONFIG_ARGS: {py.get('config_args')}",
            f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Linux {machine['kernel']}; "
            f"load average {machine['loadavg_at_start']} at the start"
            + (f", {machine['loadavg_at_end']} at the end" if "loadavg_at_end" in machine else ""),
            f"tools: {env['nginx']}; {env['wrk']}",
        ]
    )
