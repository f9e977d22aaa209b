"""nginx and Caddy as real processes on loopback, configured from the very files the docs show.

`examples/forward-auth/nginx.conf` and `examples/forward-auth/Caddyfile` are templates with
`{{GATEWAY}}`, `{{UPSTREAM}}` and `{{LISTEN}}`; `running_proxy()` fills them in, wraps them in
the few process-level lines a test run needs (pid file, logs and temp paths in a temp dir,
no admin API, foreground), starts the proxy, waits (bounded) until it accepts connections
and stops it at the end. A missing binary skips the test and says how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "forward-auth"
TEMPLATES = {"nginx": EXAMPLES / "nginx.conf", "caddy": EXAMPLES / "Caddyfile"}
KINDS = ("nginx", "caddy")
INSTALL = {
    "nginx": "nginx is not installed: apt-get install nginx-light (CI installs it)",
    "caddy": "caddy is not installed: apt-get install caddy (CI installs it)",
}
# Where Debian puts them; /usr/sbin is often missing from a non-root PATH.
_KNOWN_PATHS = {"nginx": ("/usr/sbin/nginx",), "caddy": ("/usr/bin/caddy",)}
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_PLACEHOLDER = re.compile(r"\{\{[A-Z_]+\}\}")


def binary(kind: str) -> str | None:
    """The proxy's executable, or None when it is not installed."""
    found = shutil.which(kind)
    if found:
        return found
    return next((p for p in _KNOWN_PATHS[kind] if os.access(p, os.X_OK)), None)


def require(kind: str) -> str:
    """The proxy's executable; skips the calling test, loudly, when it is not installed."""
    exe = binary(kind)
    if exe is None:
        pytest.skip(INSTALL[kind])
    return exe


def render(kind: str, *, gateway: str, upstream: str, listen: str) -> str:
    """The example configuration with its placeholders filled in (every one of them).

    gateway, upstream: host:port. listen: nginx `listen` argument (host:port) or Caddy site
    address (http://host:port).
    """
    text = TEMPLATES[kind].read_text()
    for name, value in (("GATEWAY", gateway), ("UPSTREAM", upstream), ("LISTEN", listen)):
        if "{{" + name + "}}" not in text:
            raise ValueError(f"{TEMPLATES[kind]} has no {{{{{name}}}}} placeholder")
        text = text.replace("{{" + name + "}}", value)
    left = _PLACEHOLDER.findall(text)
    if left:
        raise ValueError(f"{TEMPLATES[kind]}: placeholders left unfilled: {sorted(set(left))}")
    return text


@dataclass
class RunningProxy:
    """A started proxy: where to reach it and what it logged."""

    kind: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    log_files: tuple[Path, ...] = field(default=())

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def host(self) -> str:
        """The Host header a client sends to it (what the original URL is built from)."""
        return f"{LOOPBACK}:{self.port}"

    def logs(self, tail: int = 60) -> str:
        """The last lines of every log it wrote, for assertion messages."""
        parts = []
        for path in self.log_files:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago (the start retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _nginx_main(workdir: Path, site: Path, exe: str) -> str:
    """Process-level wrapper around the example (an http-level include, as in conf.d/)."""
    flags = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stderr
    temp = [f"client_body_temp_path {workdir}/client_body;", f"proxy_temp_path {workdir}/proxy;"]
    # nginx creates every compiled-in temp path at start; point them all at the temp dir
    # (a module built out has no such directive).
    temp += [
        f"{name}_temp_path {workdir}/{name};"
        for name in ("fastcgi", "uwsgi", "scgi")
        if f"--without-http_{name}_module" not in flags
    ]
    body = "\n        ".join(temp)
    # master_process off: one process, run as the invoking user, nothing left behind on kill
    return f"""\
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{
    worker_connections 512;
}}
http {{
    access_log {workdir}/access.log;
    {body}
    include {site};
}}
"""


def _caddy_main(site: Path) -> str:
    return f"""\
{{
	admin off
	auto_https off
	grace_period 2s
}}
import {site}
"""


def _launch(
    kind: str, exe: str, workdir: Path, *, gateway: str, upstream: str, port: int
) -> RunningProxy:
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if kind == "nginx":
        site = workdir / "site.conf"
        site.write_text(
            render(kind, gateway=gateway, upstream=upstream, listen=f"{LOOPBACK}:{port}")
        )
        main = workdir / "nginx.conf"
        main.write_text(_nginx_main(workdir, site, exe))
        argv = [exe, "-p", str(workdir), "-c", str(main), "-e", str(workdir / "error.log")]
        logs: tuple[Path, ...] = (workdir / "error.log", workdir / "stdout.log")
    else:
        site = workdir / "site.caddy"
        site.write_text(
            render(kind, gateway=gateway, upstream=upstream, listen=f"http://{LOOPBACK}:{port}")
        )
        main = workdir / "Caddyfile"
        main.write_text(_caddy_main(site))
        argv = [exe, "run", "--config", str(main), "--adapter", "caddyfile"]
        # Caddy keeps an autosave and its storage under these: keep them in the temp dir
        env.update(HOME=str(workdir), XDG_CONFIG_HOME=str(workdir), XDG_DATA_HOME=str(workdir))
        logs = (workdir / "stdout.log",)
    with open(workdir / "stdout.log", "wb") as out:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    return RunningProxy(kind, port, workdir, process, logs)


async def _accepting(proxy: RunningProxy, deadline: float) -> bool:
    """Wait until the proxy accepts connections (True) or exits (False); bounded."""
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            return False
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        # a process that lost the port race exits right after logging it
        await asyncio.sleep(0.05)
        return proxy.process.poll() is None
    raise TimeoutError(
        f"{proxy.kind} did not accept connections on port {proxy.port} within "
        f"{START_TIMEOUT_S} s\n{proxy.logs()}"
    )


async def _stop(proxy: RunningProxy) -> None:
    """SIGTERM, a bounded wait, then SIGKILL: never a process left running."""
    process = proxy.process
    if process.poll() is None:
        process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if process.poll() is None:
            process.kill()
    process.wait(timeout=STOP_TIMEOUT_S)


@contextlib.asynccontextmanager
async def running_proxy(
    kind: str, workdir: Path, *, gateway: str, upstream: str
) -> AsyncIterator[RunningProxy]:
    """Run `kind` ("nginx" or "caddy") from its example file, in front of `upstream`, asking
    `gateway` (both host:port). Skips when the binary is missing; raises with the proxy's
    logs when it does not start."""
    exe = require(kind)
    attempts = 3
    for attempt in range(attempts):
        proxy = _launch(
            kind,
            exe,
            workdir / f"{kind}-{attempt}",
            gateway=gateway,
            upstream=upstream,
            port=free_port(),
        )
        try:
            started = await _accepting(proxy, time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            await _stop(proxy)
            raise
        if started:
            break
        await _stop(proxy)
        if "in use" not in proxy.logs().lower() or attempt == attempts - 1:
            raise RuntimeError(
                f"{kind} exited at start (status {proxy.process.returncode})\n{proxy.logs()}"
            )
    try:
        yield proxy
    finally:
        await _stop(proxy)
