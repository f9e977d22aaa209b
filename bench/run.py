"""Load benchmark: clerk-gateway against nginx proxy_pass and the bare upstream, same run.

    make bench            # or: .venv/bin/python bench/run.py [--duration 5] [--repeats 3]

Loopback only, every run bounded in time. Installs `nginx` and `wrk` from apt when they
are missing (root). The server under test is pinned to CPU 0; wrk and the upstream share
CPU 1. Each measurement is repeated (median reported) and every gateway number is also
given as a ratio to nginx `proxy_pass` measured in the same run, because absolute numbers
drift 2-3x on shared machines. Benchmarks are not tests: CI does not run this.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.devclerk import DevClerk  # noqa: E402

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = "0", "1"


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

    def pids(self) -> list[int]:
        """The process and its children (nginx workers, gateway workers)."""
        out = [self.proc.pid]
        with contextlib.suppress(FileNotFoundError, subprocess.SubprocessError):
            kids = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, timeout=5
            ).stdout
            out += [int(p) for p in kids.split()]
        return out

    def cpu_ticks(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def wait_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_nginx(workdir: Path, name: str, body: str, cpu: str) -> Server:
    port = free_port()
    conf = workdir / f"{name}.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            worker_processes 1;
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
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            cpu,
            nginx_binary(),
            "-p",
            str(workdir),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return Server(name, proc, port)


def start_gateway(
    workdir: Path, clerk: DevClerk, upstream: int, *, workers: int, cpu: str | None
) -> Server:
    port, admin = free_port(), free_port()
    policy = workdir / "bench-routes.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            clerk:
              jwt_key: ${{CLERK_JWT_KEY}}
              issuer: {clerk.issuer}
              authorized_parties: [{clerk.origin}]
              token_cache_size: 2000
            upstream: http://{HOST}:{upstream}
            role_claim: metadata.role
            routes:
              - {{path: /public/**, access: public}}
              - {{path: [/api/**, /big/**], access: protected}}
            """
        )
    )
    env = {**os.environ, "CLERK_JWT_KEY": clerk.signer.public_pem()}
    gateway = [str(ROOT / ".venv" / "bin" / "clerk-gateway")]
    if not Path(gateway[0]).exists():
        gateway = [sys.executable, "-m", "gateway"]
    command = [
        *gateway,
        "run",
        "--config",
        str(policy),
        "--listen",
        f"{HOST}:{port}",
        "--admin-listen",
        f"{HOST}:{admin}",
        "--workers",
        str(workers),
    ]
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir
    )
    wait_port(port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://{HOST}:{admin}/readyz", timeout=1) as r,
        ):
            if r.status == 200:
                break
        time.sleep(0.1)
    return Server(f"gateway x{workers}", proc, port)


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    requests: int
    non2xx: int


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
    token: str | None = None,
    script: Path | None = None,
) -> Result:
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
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    if script:
        command += ["-s", str(script)]
    command.append(f"http://{HOST}:{server.port}{path}")
    before = server.cpu_ticks()
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    ticks = server.cpu_ticks() - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50, p99 = _percentile(out, "50%"), _percentile(out, "99%")
    cpu_us = ticks / CLK_TCK * 1e6 / max(requests, 1)
    return Result(
        rps, p50, p99, cpu_us, requests, int(non2xx_match.group(1)) if non2xx_match else 0
    )


def median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        statistics.median(r.cpu_us for r in results),
        sum(r.requests for r in results),
        sum(r.non2xx for r in results),
    )


def idle_connections_rss(server: Server, count: int, token: str) -> tuple[int, int]:
    """RSS (KiB) before and with `count` idle keep-alive connections, each used once."""
    before = server.rss_kib()
    socks: list[socket.socket] = []
    try:
        request = (
            f"GET /api/x HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        for _ in range(count):
            s = socket.create_connection((HOST, server.port), timeout=10)
            s.sendall(request)
            socks.append(s)
        for s in socks:
            s.recv(65536)
        time.sleep(1.0)
        return before, server.rss_kib()
    finally:
        for s in socks:
            s.close()


def streamed_body_rss(
    server: Server, path: str, token: str | None, expected: int
) -> tuple[int, int, float]:
    """Peak RSS growth (KiB) while streaming a large response through `server`."""
    baseline = server.rss_kib()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss_kib())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    received = 0
    try:
        req = urllib.request.Request(f"http://{HOST}:{server.port}{path}", headers=headers)
        with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310
            while chunk := r.read(1 << 20):
                received += len(chunk)
    finally:
        done.set()
        sampler.join(timeout=5)
    assert received == expected, (received, expected)
    return baseline, peak, time.monotonic() - started


@contextlib.contextmanager
def servers(
    workdir: Path, clerk: DevClerk, *, workers: int
) -> Iterator[tuple[Server, Server, Server]]:
    workdir.mkdir(mode=0o755)
    big = workdir / "big"
    big.mkdir(mode=0o755)
    with (big / "1m").open("wb") as f:
        f.write(os.urandom(1 << 20))
    with (big / "1g").open("wb") as f:
        f.truncate(1 << 30)  # sparse: the disk is not what is measured
    upstream = start_nginx(
        workdir,
        "upstream",
        f'server {{ listen {HOST}:PORT; location / {{ return 200 "ok\\n"; }} location /big/ {{ alias {big}/; }} }}',
        LOAD_CPU,
    )
    proxy = start_nginx(
        workdir,
        "proxy",
        f"upstream backend {{ server {HOST}:{upstream.port}; keepalive 64; }}\n"
        f'server {{ listen {HOST}:PORT; location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering on; }} }}',
        SERVER_CPU,
    )
    gateway = start_gateway(
        workdir, clerk, upstream.port, workers=workers, cpu=SERVER_CPU if workers == 1 else None
    )
    try:
        yield upstream, proxy, gateway
    finally:
        for s in (gateway, proxy, upstream):
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (3)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the unpinned run (2)")
    parser.add_argument(
        "--tokens", type=int, default=5000, help="distinct tokens for the cache-miss run"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    ensure_tools()
    clerk = DevClerk(origin="http://bench.local")
    valid = clerk.mint("user_bench", role="member", lifetime_s=3600)
    head, body, sig = valid.split(".")
    bad = f"{head}.{body}.{sig[:-4]}AAAA"
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="clerk-gateway-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx workers (not root) serve files from here
        print(f"minting {args.tokens} tokens for the cache-miss run ...", flush=True)
        tokens = workdir / "tokens.txt"
        tokens.write_text(
            "\n".join(clerk.mint(f"user_{i}", lifetime_s=3600) for i in range(args.tokens)) + "\n"
        )
        rotate = workdir / "rotate.lua"
        rotate.write_text(
            f'local t = {{}}\nfor line in io.lines("{tokens}") do t[#t + 1] = line end\n'
            "local i = 0\nrequest = function()\n  i = i + 1\n"
            '  return wrk.format("GET", "/api/x", {["Authorization"] = "Bearer " .. t[(i % #t) + 1]})\nend\n'
        )
        scenarios = [
            ("valid token, cache hit", "/api/x", {"token": valid}),
            ("valid token, fresh every request (RSA)", "/api/x", {"script": rotate}),
            ("no token (401)", "/api/x", {}),
            ("bad signature (401)", "/api/x", {"token": bad}),
            ("public route", "/public/x", {}),
            ("1 MiB response", "/big/1m", {"token": valid, "connections": 16}),
        ]
        for workers in (1, args.workers):
            pinned = workers == 1
            label = "1 worker pinned to one core" if pinned else f"{workers} workers, unpinned"
            print(f"\n== gateway: {label}", flush=True)
            with servers(workdir / f"w{workers}", clerk, workers=workers) as (
                upstream,
                proxy,
                gateway,
            ):
                for name, path, kw in scenarios:
                    ref_kw = {k: v for k, v in kw.items() if k == "connections"}
                    if "script" in kw:
                        ref_kw["script"] = kw["script"]
                    g_runs, n_runs, d_runs = [], [], []
                    for _ in range(args.repeats):
                        n_runs.append(wrk(proxy, path, duration=args.duration, **ref_kw))  # type: ignore[arg-type]
                        g_runs.append(wrk(gateway, path, duration=args.duration, **kw))  # type: ignore[arg-type]
                        d_runs.append(wrk(upstream, path, duration=args.duration, **ref_kw))  # type: ignore[arg-type]
                    g, n, d = median(g_runs), median(n_runs), median(d_runs)
                    row = {
                        "setup": label,
                        "scenario": name,
                        "gateway_rps": round(g.rps),
                        "nginx_proxy_rps": round(n.rps),
                        "direct_rps": round(d.rps),
                        "ratio_vs_nginx": round(g.rps / n.rps, 3),
                        "ratio_vs_direct": round(g.rps / d.rps, 3),
                        "p50_ms": g.p50_ms,
                        "p99_ms": g.p99_ms,
                        "cpu_us_per_req": round(g.cpu_us, 1),
                        "nginx_cpu_us_per_req": round(n.cpu_us, 1),
                        "gateway_non2xx": g.non2xx,
                    }
                    rows.append(row)
                    print(
                        f"  {name:42} {g.rps:9,.0f} req/s  x{g.rps / n.rps:5.2f} nginx  p50 {g.p50_ms:6.2f} ms  p99 {g.p99_ms:6.2f} ms  {g.cpu_us:6.1f} µs/req",
                        flush=True,
                    )
                if pinned:
                    before, with_idle = idle_connections_rss(gateway, 1000, valid)
                    n_before, n_with = idle_connections_rss(proxy, 1000, valid)
                    rows.append(
                        {
                            "setup": label,
                            "scenario": "1000 idle keep-alive connections",
                            "gateway_rss_mib": round(with_idle / 1024, 1),
                            "gateway_rss_before_mib": round(before / 1024, 1),
                            "nginx_rss_mib": round(n_with / 1024, 1),
                        }
                    )
                    print(
                        f"  1000 idle keep-alive connections: gateway RSS {before / 1024:.1f} -> {with_idle / 1024:.1f} MiB (nginx {n_before / 1024:.1f} -> {n_with / 1024:.1f} MiB)"
                    )
                    base, peak, secs = streamed_body_rss(gateway, "/big/1g", valid, 1 << 30)
                    rows.append(
                        {
                            "setup": label,
                            "scenario": "1 GiB streamed response",
                            "rss_growth_mib": round((peak - base) / 1024, 1),
                            "seconds": round(secs, 2),
                            "mib_per_s": round(1024 / secs),
                        }
                    )
                    print(
                        f"  1 GiB streamed response: RSS +{(peak - base) / 1024:.1f} MiB, {secs:.1f} s ({1024 / secs:.0f} MiB/s)"
                    )
    print("\n" + table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| setup | scenario | gateway req/s | nginx proxy_pass req/s | ratio vs nginx | direct upstream req/s | p50 ms | p99 ms | gateway CPU µs/req | nginx CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "gateway_rps" in r:
            lines.append(
                f"| {r['setup']} | {r['scenario']} | {r['gateway_rps']:,} | {r['nginx_proxy_rps']:,} | {r['ratio_vs_nginx']} | {r['direct_rps']:,} | {r['p50_ms']} | {r['p99_ms']} | {r['cpu_us_per_req']} | {r['nginx_cpu_us_per_req']} |"
            )
    for r in rows:
        if "gateway_rss_mib" in r:
            lines.append(
                f"\n1000 idle keep-alive connections: gateway RSS {r['gateway_rss_before_mib']} -> {r['gateway_rss_mib']} MiB (nginx {r['nginx_rss_mib']} MiB)"
            )
        if "rss_growth_mib" in r:
            lines.append(
                f"1 GiB streamed response: gateway RSS +{r['rss_growth_mib']} MiB ({r['mib_per_s']} MiB/s)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
