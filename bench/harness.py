"""What bench/run.py measures with: servers started on loopback and always stopped, their
CPU time (user and system, from /proc) and RSS, and wrk runs parsed into a Result.

Every wait is bounded: ports, subprocesses, shutdowns.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = "0", "1"


class StartError(RuntimeError):
    """A server did not come up; the message says why (with the tail of its stderr)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def ensure_tools() -> None:
    missing = [
        t
        for t in ("nginx", "wrk", "taskset")
        if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {missing}: install nginx-light and wrk (apt) or run as root")
    print(f"installing {missing} from apt ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "nginx-light", "wrk", "util-linux"],
        check=True,
        timeout=600,
    )


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    stderr: Path | None = None

    def pids(self) -> list[int]:
        """The process and its children (nginx workers, gateway or probe workers)."""
        out = [self.proc.pid]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            kids = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, timeout=5
            ).stdout
            out += [int(p) for p in kids.split()]
        return out

    def cpu_ticks(self) -> tuple[int, int]:
        """(utime, stime) in clock ticks, summed over the server's processes."""
        user = system = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                user += int(fields[11])  # field 14: utime
                system += int(fields[12])  # field 15: stime
        return user, system

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def stderr_tail(self, lines: int = 15) -> str:
        if self.stderr is None or not self.stderr.exists():
            return ""
        tail = self.stderr.read_text(errors="replace").splitlines()[-lines:]
        return textwrap.indent("\n".join(tail), "    | ")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def wait_port(port: int, within: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartError(f"exited with status {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise StartError(f"nothing listens on {port} after {within:.0f} s")


def launch(
    name: str,
    command: Sequence[str],
    port: int,
    workdir: Path,
    *,
    cpu: str | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    """Start `command` (pinned to `cpu` when given) and wait until it listens on `port`.
    stdout (access logs) is discarded; stderr goes to a file shown when the start fails.
    On failure the process is stopped before StartError is raised."""
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    stderr = workdir / f"{name.replace(' ', '_')}.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            list(command),
            env=dict(env) if env is not None else None,
            cwd=cwd or workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    server = Server(name, proc, port, stderr)
    try:
        wait_port(port, proc=proc)
    except BaseException as exc:
        server.stop()
        if isinstance(exc, StartError):
            raise StartError(f"{name}: {exc}\n{server.stderr_tail()}") from None
        raise
    return server


def nginx_conf(workdir: Path, name: str, port: int, workers: int, body: str) -> Path:
    conf = workdir / f"{name}.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            worker_processes {workers};
            pid {workdir}/{name}.pid;
            error_log {workdir}/{name}.error.log warn;
            events {{ worker_connections 4096; }}
            http {{
              access_log off;
              keepalive_requests 10000000;
              client_body_temp_path {workdir}/{name}-body;
              proxy_temp_path {workdir}/{name}-proxy;
              fastcgi_temp_path {workdir}/{name}-fcgi;
              uwsgi_temp_path {workdir}/{name}-uwsgi;
              scgi_temp_path {workdir}/{name}-scgi;
            {textwrap.indent(body.replace("PORT", str(port)), "  ")}
            }}
            """
        )
    )
    return conf


def start_nginx(
    workdir: Path, name: str, body: str, *, cpu: str | None, workers: int = 1
) -> Server:
    """nginx with `body` inside `http {}` (PORT replaced by the port it listens on)."""
    port = free_port()
    conf = nginx_conf(workdir, name, port, workers, body)
    command = [nginx_binary(), "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
    return launch(name, command, port, workdir, cpu=cpu)


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_user_us: float  # per request
    cpu_sys_us: float  # per request
    requests: int
    non2xx: int
    socket_errors: int = 0
    also_cpu_us: tuple[tuple[float, float], ...] = ()  # (user, sys) per request of `also`

    @property
    def cpu_us(self) -> float:
        return self.cpu_user_us + self.cpu_sys_us


def _percentile(out: str, which: str) -> float:
    match = re.search(rf"{which}\s+([\d.]+(?:us|ms|s|m))\b", out)
    if match is None:
        print(
            f"    (wrk printed no {which} latency:)\n" + textwrap.indent(out, "    | "), flush=True
        )
        return float("nan")
    return _ms(match.group(1))


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    server: Server,
    path: str,
    *,
    duration: float,
    connections: int = 64,
    headers: Mapping[str, str] | None = None,
    script: Path | None = None,
    also: Sequence[Server] = (),
) -> Result:
    """One `wrk -t1` run pinned to the load CPU; the server's CPU time (and that of the
    servers in `also`, which serve the same requests behind it) is read before and after,
    so CPU per request covers exactly this run."""
    command = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if script:
        command += ["-s", str(script)]
    command.append(f"http://{HOST}:{server.port}{path}")
    user0, sys0 = server.cpu_ticks()
    also0 = [s.cpu_ticks() for s in also]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    user1, sys1 = server.cpu_ticks()
    also1 = [s.cpu_ticks() for s in also]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors_match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    per_request = 1e6 / CLK_TCK / max(requests, 1)
    return Result(
        rps,
        _percentile(out, "50%"),
        _percentile(out, "99%"),
        (user1 - user0) * per_request,
        (sys1 - sys0) * per_request,
        requests,
        int(non2xx_match.group(1)) if non2xx_match else 0,
        sum(int(n) for n in errors_match.groups()) if errors_match else 0,
        tuple(
            ((u1 - u0) * per_request, (s1 - s0) * per_request)
            for (u0, s0), (u1, s1) in zip(also0, also1, strict=True)
        ),
    )


def median(results: list[Result]) -> Result:
    """Medians of the runs; the CPU split is the one of the run with the median total, so
    user + system add up to the total shown."""
    cpu = sorted(results, key=lambda r: r.cpu_us)[(len(results) - 1) // 2]
    return Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        cpu.cpu_user_us,
        cpu.cpu_sys_us,
        sum(r.requests for r in results),
        sum(r.non2xx for r in results),
        sum(r.socket_errors for r in results),
        cpu.also_cpu_us,
    )
