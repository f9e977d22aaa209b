"""Load benchmark: clerk-gateway beside the bench probe, nginx proxy_pass and the bare
upstream, all measured in the same run.

    make bench            # or: .venv-compiled/bin/python bench/run.py [--duration 5] [--repeats 3]

The gateway measured is the one installed for the Python running this script: `make
bench` runs it from .venv-compiled (the wheel `pip install .` builds, request path
compiled); `make bench BENCH_VENV=.venv` measures the sources (pure Python).

Loopback only, every run bounded in time, every server stopped (also on Ctrl-C or
SIGTERM). Installs `nginx` and `wrk` from apt when they are missing (root). Prints (and
with --json stores) the gateway's Python build, event loop and libraries, the machine, the
date and the nginx and wrk versions, then one markdown table.

Two passes. First the servers under test (gateway, probe, nginx proxy_pass) each run one
worker pinned to CPU 0, while wrk and the upstream (nginx `return 200`) share CPU 1. Then
each runs `--workers` workers unpinned; the cache-hit req/s of the two passes give the
scaling figure. The direct upstream is measured in the first pass only (it is the same
pinned server in both).

Scenarios: a valid token from the Authorization header and from the `__session` cookie
(with `__client_uat`; the policy has a publishable key, so Clerk's cookie choice runs),
both verified-token cache hits; a fresh token every request (cache miss: RSA); no token
and a bad signature (401); a public route; a 1 MiB response. Every scenario sends the
same requests to every server, interleaved per repeat, the median of `--repeats` runs
reported; ratios to nginx proxy_pass are what to compare, because absolute numbers drift
2-3x on shared machines. Unexpected statuses are flagged in the table.

The probe (`../shared/bench-probe/rawproxy.py --auth jwt-cache --uvloop`, run by the
gateway's interpreter) is the leanest Python proxy doing the core of the gateway's job: a
floor for the gateway's cost. It verifies the same tokens (PyJWT, from a JWKS file written
from this run's key) and caches successes only. It runs the scenarios it supports (not
the cache miss, as it caches 100,000 tokens; not the public route, as it has no routes);
when it is missing or fails to start, its column is skipped with a loud notice.

CPU per request is read from /proc/<pid>/stat (utime, stime) of each server's processes
around each wrk run and shown as user+system=total microseconds.

The pinned pass also measures: 1,000 idle keep-alive connections (RSS), a 1 GiB streamed
response and a 1 GiB streamed upload through the gateway (RSS growth; the upload goes to
bench/sink.py, which reads and discards the body and answers with its byte count), and,
when the installed gateway knows `run --mode forward-auth`, nginx `auth_request` to the
gateway in forward-auth mode beside plain nginx proxy_pass (otherwise: skipped, saying why).

Benchmarks are not tests: CI does not run this.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from buildinfo import describe, environment  # noqa: E402
from harness import (  # noqa: E402
    HOST,
    LOAD_CPU,
    SERVER_CPU,
    Result,
    Server,
    StartError,
    ensure_tools,
    free_port,
    launch,
    median,
    start_nginx,
    wrk,
)
from memory import download, idle_connections_rss, peak_rss_during, upload  # noqa: E402
from minting import claim, mint_tokens  # noqa: E402

from gateway.devclerk import DevClerk  # noqa: E402

DEFAULT_PROBE = ROOT.parent / "shared" / "bench-probe" / "rawproxy.py"
GIB = 1 << 30
TOKEN_CACHE = 2000  # the gateway's token_cache_size in the bench policy
TARGETS = {"scaling": 1.6, "idle_rss_mib": 100, "stream_growth_mib": 32}
SCALING_CAVEAT = (
    "On 2 vCPUs a second worker shares its core with wrk and the upstream (pinned to CPU 1), "
    "so 2x is out of reach here (performance-notes.md: two workers gained 1.15-1.5x on this "
    "kind of machine); the probe's and nginx's own scaling in the same run show the ceiling."
)
PROBE_WHY_NOT = {
    "fresh": "the probe column is `--auth jwt-crypto`: cryptography per request, no cache, "
    "no claims beyond exp/iss (its cached mode would turn the rotating tokens into hits)",
    "public": "not run: the probe has no routes (no token: its 401 everywhere)",
}


# ---- the gateway, the probe, the sink -----------------------------------------------------


def gateway_python() -> str:
    """The interpreter running this script: its environment's gateway is the one measured."""
    return sys.executable


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "clerk-gateway"
    # -P: never the checkout's sources by way of the working directory
    return [str(script)] if script.exists() else [sys.executable, "-P", "-m", "gateway"]


def forward_auth_support() -> str | None:
    """None when `clerk-gateway run` has `--mode` (forward-auth); else why the row is skipped."""
    try:
        help_text = subprocess.run(
            [*gateway_command(), "run", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`clerk-gateway run --help` failed ({type(exc).__name__})"
    if "--mode" not in help_text:
        return (
            "the installed gateway has no `run --mode` (forward-auth mode, issue 14, is not "
            "on this branch yet)"
        )
    return None


def write_policy(
    workdir: Path, name: str, clerk: DevClerk, upstream: int, sink: int | None
) -> Path:
    """The bench policy. Without a sink it is the forward-auth one: no upload route, and
    nginx on loopback trusted to describe the original request."""
    lines = [
        "clerk:",
        f"  publishable_key: {clerk.publishable_key}",
        "  jwt_key: ${CLERK_JWT_KEY}",
        f"  issuer: {clerk.issuer}",
        f"  authorized_parties: [{clerk.origin}]",
        f"  token_cache_size: {TOKEN_CACHE}",
        f"upstream: http://{HOST}:{upstream}",
        "role_claim: metadata.role",
    ]
    if sink is not None:
        lines += ["upstreams:", f'  sink: {{url: "http://{HOST}:{sink}", read_timeout_s: 300}}']
    else:
        lines.append(f"trusted_proxies: [{HOST}/32]")
    lines += ["routes:", "  - {path: /public/**, access: public}"]
    if sink is not None:
        lines.append("  - {path: /sink/**, access: protected, upstream: sink}")
    lines.append("  - {path: [/api/**, /big/**], access: protected}")
    policy = workdir / f"{name}.yaml"
    policy.write_text("\n".join(lines) + "\n")
    return policy


def start_gateway(
    workdir: Path,
    name: str,
    policy: Path,
    clerk: DevClerk,
    *,
    workers: int,
    cpu: str | None,
    mode: str | None = None,
) -> Server:
    env = {**os.environ, "CLERK_JWT_KEY": clerk.signer.public_pem()}
    check = subprocess.run(
        [*gateway_command(), "check", str(policy)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )
    if check.returncode != 0:
        raise StartError(
            f"{name}: `clerk-gateway check` refused the bench policy:\n"
            + textwrap.indent(check.stdout + check.stderr, "    | ")
        )
    port, admin = free_port(), free_port()
    command = [
        *gateway_command(),
        "run",
        "--config",
        str(policy),
        "--listen",
        f"{HOST}:{port}",
        "--admin-listen",
        f"{HOST}:{admin}",
        "--workers",
        str(workers),
        "--drain-timeout",
        "5",
    ]
    if mode is not None:
        command += ["--mode", mode]
    server = launch(name, command, port, workdir, cpu=cpu, env=env)
    try:
        deadline = time.monotonic() + 30
        while status(admin, "/readyz") != 200:
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise StartError(f"{name}: /readyz never answered 200\n{server.stderr_tail()}")
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
    return server


def start_probe(
    workdir: Path,
    probe: Path,
    upstream: int,
    clerk: DevClerk,
    *,
    workers: int,
    cpu: str | None,
    auth: str = "jwt-cache",
) -> Server:
    jwks = workdir / "jwks.json"
    jwks.write_text(json.dumps(clerk.jwks()))
    port = free_port()
    command = [
        gateway_python(),
        str(probe),
        "--port",
        str(port),
        "--upstream",
        f"{HOST}:{upstream}",
        "--auth",
        auth,
        "--jwks",
        str(jwks),
        "--iss",
        clerk.issuer,
        "--uvloop",
        "--workers",
        str(workers),
    ]
    return launch(f"probe-{auth}", command, port, workdir, cpu=cpu, cwd=probe.parent)


def start_sink(workdir: Path) -> Server:
    port = free_port()
    command = [gateway_python(), str(BENCH / "sink.py"), "--port", str(port)]
    return launch("sink", command, port, workdir, cpu=LOAD_CPU)


def get(port: int, path: str, headers: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """One GET's status and body, or (None, why) when nothing answered (bounded: 5 s)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, response.read(4096).decode("latin-1").strip()
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def status(port: int, path: str, headers: Mapping[str, str] | None = None) -> int | None:
    return get(port, path, headers)[0]


WHOAMI = "/api/whoami"  # the upstream answers with the X-Clerk-User-Id it received


def identity_problems(server: Server, scenarios: list[Scenario], user: str) -> list[str]:
    """What is wrong with the identity the upstream receives for each way of sending the
    valid token, and with the answer to no token; [] when all is as expected."""
    problems = []
    for scenario in scenarios:
        if scenario.key not in ("header", "cookie", "none"):
            continue
        headers = dict(scenario.headers)
        if scenario.key == "cookie":
            headers["Cookie"] = scenario.cookie
        answer = get(server.port, WHOAMI, headers)
        expected = (200, user) if scenario.expect == 200 else (401, None)
        if answer[0] != expected[0] or (expected[1] is not None and answer[1] != expected[1]):
            problems.append(f"{scenario.name}: got {answer}, expected {expected}")
    return problems


# ---- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    path: str
    expect: int  # the status the gateway and the probe must answer (nginx: always 200)
    headers: Mapping[str, str] = field(default_factory=dict)
    script: Path | None = None
    connections: int = 64
    cookie: str = ""  # the Cookie header the script sends, for the identity check

    @property
    def probe_skip(self) -> str | None:
        return PROBE_WHY_NOT.get(self.key)

    def wrk_args(self) -> dict[str, Any]:
        return {"headers": self.headers, "script": self.script, "connections": self.connections}


def scenarios(workdir: Path, valid: str, bad: str, tokens: list[str]) -> list[Scenario]:
    listing = workdir / "tokens.txt"
    listing.write_text("\n".join(tokens) + "\n")
    rotate = workdir / "rotate.lua"
    rotate.write_text(
        f'local t = {{}}\nfor line in io.lines("{listing}") do t[#t + 1] = line end\n'
        "local i = 0\nrequest = function()\n  i = i + 1\n"
        '  return wrk.format("GET", "/api/x", {["Authorization"] = "Bearer " .. t[(i % #t) + 1]})\nend\n'
    )
    cookies = f"__client_uat={claim(valid, 'iat')}; __session={valid}"
    cookie = workdir / "cookie.lua"
    cookie.write_text(f'wrk.headers["Cookie"] = "{cookies}"\n')
    bearer = {"Authorization": f"Bearer {valid}"}
    return [
        Scenario("header", "valid token (header), cache hit", "/api/x", 200, bearer),
        Scenario(
            "cookie",
            "valid token (cookie), cache hit",
            "/api/x",
            200,
            script=cookie,
            cookie=cookies,
        ),
        Scenario("fresh", "valid token, fresh every request (RSA)", "/api/x", 200, script=rotate),
        Scenario("none", "no token (401)", "/api/x", 401),
        Scenario("bad", "bad signature (401)", "/api/x", 401, {"Authorization": f"Bearer {bad}"}),
        Scenario("public", "public route", "/public/x", 200),
        Scenario("big", "1 MiB response", "/big/1m", 200, bearer, connections=16),
    ]


def statuses_ok(result: Result, expect: int) -> bool:
    if expect < 300:
        return result.non2xx == 0
    return result.non2xx == result.requests


# ---- rows ---------------------------------------------------------------------------------


def cpu_fields(prefix: str, r: Result | None) -> dict[str, Any]:
    if r is None:
        return {f"{prefix}cpu_us_per_req": None}
    return {
        f"{prefix}cpu_us_per_req": round(r.cpu_us, 1),
        f"{prefix}cpu_user_us_per_req": round(r.cpu_user_us, 1),
        f"{prefix}cpu_sys_us_per_req": round(r.cpu_sys_us, 1),
    }


def ratio(a: Result | None, b: Result | None) -> float | None:
    return round(a.rps / b.rps, 3) if a is not None and b is not None and b.rps else None


def scenario_row(
    setup: str,
    scenario: Scenario,
    g: Result,
    n: Result,
    p: Result | None,
    d: Result | None,
    probe_note: str | None,
) -> dict[str, Any]:
    return {
        "setup": setup,
        "scenario": scenario.name,
        "expected_status": scenario.expect,
        "gateway_rps": round(g.rps),
        "probe_rps": round(p.rps) if p else None,
        "nginx_proxy_rps": round(n.rps),
        "direct_rps": round(d.rps) if d else None,
        "ratio_vs_nginx": ratio(g, n),
        "probe_ratio_vs_nginx": ratio(p, n),
        "ratio_vs_direct": ratio(g, d),
        "p50_ms": g.p50_ms,
        "p99_ms": g.p99_ms,
        "probe_p50_ms": p.p50_ms if p else None,
        "probe_p99_ms": p.p99_ms if p else None,
        **cpu_fields("", g),
        **cpu_fields("probe_", p),
        **cpu_fields("nginx_", n),
        "gateway_requests": g.requests,
        "gateway_non2xx": g.non2xx,
        "gateway_socket_errors": g.socket_errors,
        "probe_non2xx": p.non2xx if p else None,
        "statuses_ok": statuses_ok(g, scenario.expect)
        and (p is None or statuses_ok(p, scenario.expect))
        and statuses_ok(n, 200)
        and (d is None or statuses_ok(d, 200)),
        "probe_note": probe_note,
    }


def show(row: dict[str, Any]) -> str:
    probe = (
        f"probe {row['probe_rps']:8,} (x{row['probe_ratio_vs_nginx']:.2f})"
        if row["probe_rps"] is not None
        else "probe        -        "
    )
    flag = "" if row["statuses_ok"] else "  !! unexpected statuses (see JSON)"
    return (
        f"  {row['scenario']:42} gateway {row['gateway_rps']:8,} (x{row['ratio_vs_nginx']:.2f})  "
        f"{probe}  nginx {row['nginx_proxy_rps']:8,}  p99 {row['p99_ms']:6.2f} ms  "
        f"{cpu(row, '')} µs/req{flag}"
    )


# ---- memory -------------------------------------------------------------------------------


def memory_rows(setup: str, gateway: Server, proxy: Server, token: str) -> Iterator[dict[str, Any]]:
    """Idle connections, a streamed response and a streamed upload; a failure is reported
    in its row, never raised."""
    try:
        before, with_idle = idle_connections_rss(gateway, 1000, token)
        n_before, n_with = idle_connections_rss(proxy, 1000, token)
        row: dict[str, Any] = {
            "gateway_rss_before_mib": round(before / 1024, 1),
            "gateway_rss_mib": round(with_idle / 1024, 1),
            "nginx_rss_before_mib": round(n_before / 1024, 1),
            "nginx_rss_mib": round(n_with / 1024, 1),
            "target_mib": TARGETS["idle_rss_mib"],
        }
    except Exception as exc:
        row = {"error": f"{type(exc).__name__}: {exc}"}
    yield {"setup": setup, "measure": "1000 idle keep-alive connections", **row}
    transfers = [
        ("1 GiB streamed response", lambda: download(gateway.port, "/big/1g", token, GIB)),
        ("1 GiB streamed upload", lambda: upload(gateway.port, "/sink/upload", token, GIB)),
    ]
    for what, transfer in transfers:
        try:
            base, peak, secs = peak_rss_during(gateway, transfer)
            row = {
                "rss_before_mib": round(base / 1024, 1),
                "rss_growth_mib": round((peak - base) / 1024, 1),
                "seconds": round(secs, 2),
                "mib_per_s": round(1024 / secs),
                "target_growth_mib": TARGETS["stream_growth_mib"],
            }
        except Exception as exc:
            row = {"error": f"{type(exc).__name__}: {exc}"}
        yield {"setup": setup, "measure": what, **row}


def show_memory(row: dict[str, Any]) -> str:
    what = row["measure"]
    if "error" in row:
        return f"{what}: FAILED ({row['error']})"
    if "gateway_rss_mib" in row:
        return (
            f"{what}: gateway RSS {row['gateway_rss_before_mib']} -> {row['gateway_rss_mib']} MiB "
            f"(target < {row['target_mib']} MiB); nginx {row['nginx_rss_before_mib']} -> "
            f"{row['nginx_rss_mib']} MiB"
        )
    return (
        f"{what} through the gateway: RSS +{row['rss_growth_mib']} MiB "
        f"(target < {row['target_growth_mib']} MiB), {row['seconds']} s, {row['mib_per_s']} MiB/s"
    )


# ---- forward-auth -------------------------------------------------------------------------

FORWARD_AUTH_NGINX = """\
upstream backend { server HOST:UPSTREAM; keepalive 64; }
upstream gateway { server HOST:GATEWAY; keepalive 64; }
server {
  listen HOST:PORT;
  location / {
    auth_request /_auth;
    auth_request_set $user $upstream_http_x_clerk_user_id;
    proxy_pass http://backend;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Clerk-User-Id $user;
  }
  location = /_auth {
    internal;
    proxy_pass http://gateway;
    proxy_http_version 1.1;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header Connection "";
    proxy_set_header X-Original-URI $request_uri;
    proxy_set_header X-Original-Method $request_method;
    proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
  }
}
"""


def forward_auth_row(
    workdir: Path,
    setup: str,
    clerk: DevClerk,
    upstream: Server,
    proxy: Server,
    scenario: Scenario,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """nginx `auth_request` -> gateway `--mode forward-auth`, both pinned to the server CPU,
    beside plain nginx proxy_pass (interleaved). Raises StartError when it cannot start."""
    with contextlib.ExitStack() as stack:
        policy = write_policy(workdir, "forward-auth", clerk, upstream.port, None)
        gateway = start_gateway(
            workdir, "gateway-fa", policy, clerk, workers=1, cpu=SERVER_CPU, mode="forward-auth"
        )
        stack.callback(gateway.stop)
        body = (
            FORWARD_AUTH_NGINX.replace("HOST", HOST)
            .replace("UPSTREAM", str(upstream.port))
            .replace("GATEWAY", str(gateway.port))
        )
        front = start_nginx(workdir, "nginx-auth-request", body, cpu=SERVER_CPU)
        stack.callback(front.stop)
        allowed = get(front.port, WHOAMI, scenario.headers)
        denied = status(front.port, scenario.path)
        user = claim(scenario.headers["Authorization"].removeprefix("Bearer "), "sub")
        if allowed != (200, user) or denied != 401:
            raise StartError(
                f"nginx auth_request -> gateway answered {allowed} with a valid token and "
                f"{denied} without (expected {(200, user)}: the upstream saw the user id; and 401)"
            )
        f_runs, n_runs = [], []
        for _ in range(args.repeats):
            n_runs.append(wrk(proxy, scenario.path, duration=args.duration, **scenario.wrk_args()))
            f_runs.append(
                wrk(
                    front,
                    scenario.path,
                    duration=args.duration,
                    also=[gateway],
                    **scenario.wrk_args(),
                )
            )
        f, n = median(f_runs), median(n_runs)
        g_user, g_sys = f.also_cpu_us[0]
        return {
            "setup": setup,
            "scenario": f"{scenario.name}: nginx auth_request -> gateway forward-auth",
            "expected_status": scenario.expect,
            "forward_auth_rps": round(f.rps),
            "nginx_proxy_rps": round(n.rps),
            "ratio_vs_nginx": ratio(f, n),
            "p50_ms": f.p50_ms,
            "p99_ms": f.p99_ms,
            "cpu_us_per_req": round(g_user + g_sys, 1),
            "cpu_user_us_per_req": round(g_user, 1),
            "cpu_sys_us_per_req": round(g_sys, 1),
            **cpu_fields("auth_nginx_", f),
            **cpu_fields("nginx_", n),
            "statuses_ok": statuses_ok(f, scenario.expect) and statuses_ok(n, 200),
        }


def identity_row(
    workdir: Path,
    setup: str,
    clerk: DevClerk,
    upstream: Server,
    proxy: Server,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The header-token scenario with the identity additions on: two claim headers (one
    percent-encoded) and a signed ES256 assertion per request, beside nginx proxy_pass
    (interleaved). The assertion is minted once per token and reused for half its life,
    so this is the cache-hit cost. Raises StartError when it cannot start."""
    from gateway.assertion import generate_pem

    key = workdir / "assertion.pem"
    key.write_bytes(generate_pem())
    policy = write_policy(workdir, "identity", clerk, upstream.port, None)
    policy.write_text(
        policy.read_text().replace(f"trusted_proxies: [{HOST}/32]\n", "")
        + "identity_headers:\n  X-Clerk-Email: email\n  X-Clerk-Full-Name: name\n"
        + f"assertion:\n  issuer: https://bench.invalid\n  key_file: {key}\n  ttl_s: 30\n"
    )
    token = clerk.mint(
        "user_bench",
        role="member",
        lifetime_s=3600,
        claims={"email": "bench@example.com", "name": "Zoë Bench"},
    )
    headers = {"Authorization": f"Bearer {token}"}
    with contextlib.ExitStack() as stack:
        gateway = start_gateway(
            workdir, "gateway-identity", policy, clerk, workers=1, cpu=SERVER_CPU
        )
        stack.callback(gateway.stop)
        answered = get(gateway.port, WHOAMI, headers)
        if answered != (200, "user_bench"):
            raise StartError(f"the identity gateway answered {answered}, not (200, 'user_bench')")
        g_runs, n_runs = [], []
        for _ in range(args.repeats):
            n_runs.append(wrk(proxy, "/api/x", duration=args.duration, headers=headers))
            g_runs.append(wrk(gateway, "/api/x", duration=args.duration, headers=headers))
        g, n = median(g_runs), median(n_runs)
        return {
            "setup": setup,
            "scenario": "valid token (header), cache hit, + claim headers and signed assertion",
            "expected_status": 200,
            "gateway_rps": round(g.rps),
            "nginx_proxy_rps": round(n.rps),
            "ratio_vs_nginx": ratio(g, n),
            "p50_ms": g.p50_ms,
            "p99_ms": g.p99_ms,
            **cpu_fields("", g),
            **cpu_fields("nginx_", n),
            "statuses_ok": statuses_ok(g, 200) and statuses_ok(n, 200),
            "probe_rps": None,
            "direct_rps": None,
            "probe_ratio_vs_nginx": None,
            **cpu_fields("probe_", None),
        }


# ---- a pass -------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    clerk: DevClerk
    valid: str
    scenarios: list[Scenario]
    probe: Path | None
    forward_auth_skip: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.notes.append(text)


def run_pass(run: Run, workdir: Path, workers: int) -> None:
    args, clerk = run.args, run.clerk
    pinned = workers == 1
    server_cpu = SERVER_CPU if pinned else None
    setup = "1 worker pinned to one core" if pinned else f"{workers} workers, unpinned"
    print(f"\n== {setup} (gateway, probe and nginx proxy_pass alike)", flush=True)
    workdir.mkdir(mode=0o755)
    big = workdir / "big"
    big.mkdir(mode=0o755)
    with (big / "1m").open("wb") as f:
        f.write(os.urandom(1 << 20))
    with (big / "1g").open("wb") as f:
        f.truncate(GIB)  # sparse: the disk is not what is measured
    with contextlib.ExitStack() as stack:
        upstream = start_nginx(
            workdir,
            "upstream",
            f'server {{ listen {HOST}:PORT; location / {{ return 200 "ok\\n"; }} '
            f'location = {WHOAMI} {{ return 200 "$http_x_clerk_user_id\\n"; }} '
            f"location /big/ {{ alias {big}/; }} }}",
            cpu=LOAD_CPU,
        )
        stack.callback(upstream.stop)
        sink = start_sink(workdir)
        stack.callback(sink.stop)
        proxy = start_nginx(
            workdir,
            "proxy",
            f"upstream backend {{ server {HOST}:{upstream.port}; keepalive 64; }}\n"
            f"server {{ listen {HOST}:PORT; location / {{ proxy_pass http://backend; "
            f'proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering on; }} }}',
            cpu=server_cpu,
            workers=workers,
        )
        stack.callback(proxy.stop)
        policy = write_policy(workdir, "gateway", clerk, upstream.port, sink.port)
        gateway = start_gateway(
            workdir, f"gateway x{workers}", policy, clerk, workers=workers, cpu=server_cpu
        )
        stack.callback(gateway.stop)
        problems = identity_problems(gateway, run.scenarios, claim(run.valid, "sub"))
        for problem in problems:
            run.note(f"!! gateway identity check ({setup}): {problem}")
        if not problems:
            print(
                "  checked: the upstream receives the user id from the header and the cookie "
                "token; no token is a 401",
                flush=True,
            )
        probe: Server | None = None
        if run.probe is not None:
            try:
                probe = start_probe(
                    workdir, run.probe, upstream.port, clerk, workers=workers, cpu=server_cpu
                )
                stack.callback(probe.stop)
                answered = status(probe.port, "/api/x", {"Authorization": f"Bearer {run.valid}"})
                if answered != 200:
                    raise StartError(f"the probe answered {answered} to a valid token, not 200")
            except (StartError, OSError, subprocess.SubprocessError) as exc:
                run.note(f"!! PROBE SKIPPED in this pass: {exc}")
                if probe is not None:
                    probe.stop()
                probe = None
        fresh_probe: Server | None = None
        if run.probe is not None:
            try:  # the floor for a cache miss: the probe verifying with cryptography directly
                fresh_probe = start_probe(
                    workdir,
                    run.probe,
                    upstream.port,
                    clerk,
                    workers=workers,
                    cpu=server_cpu,
                    auth="jwt-crypto",
                )
                stack.callback(fresh_probe.stop)
            except (StartError, OSError, subprocess.SubprocessError) as exc:
                run.note(f"!! jwt-crypto PROBE SKIPPED in this pass: {exc}")
                fresh_probe = None
        for scenario in run.scenarios:
            use_probe = probe if scenario.probe_skip is None else None
            if scenario.key == "fresh":
                use_probe = fresh_probe
            g_runs, n_runs, p_runs, d_runs = [], [], [], []
            for _ in range(args.repeats):
                kw = {"duration": args.duration, **scenario.wrk_args()}
                n_runs.append(wrk(proxy, scenario.path, **kw))
                g_runs.append(wrk(gateway, scenario.path, **kw))
                if use_probe is not None:
                    p_runs.append(wrk(use_probe, scenario.path, **kw))
                if pinned:  # the upstream is pinned alike in both passes: measured once
                    d_runs.append(wrk(upstream, scenario.path, **kw))
            note = scenario.probe_skip if probe is not None else "not run: no probe"
            if scenario.key == "bad" and use_probe is not None:
                note = "the probe does not cache failures: PyJWT verifies every request"
            row = scenario_row(
                setup,
                scenario,
                median(g_runs),
                median(n_runs),
                median(p_runs) if p_runs else None,
                median(d_runs) if d_runs else None,
                note,
            )
            run.rows.append(row)
            print(show(row), flush=True)
        if not pinned:
            return
        for row in memory_rows(setup, gateway, proxy, run.valid):
            run.memory.append(row)
            print("  " + show_memory(row), flush=True)
        try:
            row = identity_row(workdir, setup, clerk, upstream, proxy, args)
        except (StartError, OSError, subprocess.SubprocessError) as exc:
            run.note(f"!! identity row skipped: {exc}")
        else:
            run.rows.append(row)
            print(
                f"  identity: claim headers + assertion {row['gateway_rps']:,} req/s "
                f"(x{row['ratio_vs_nginx']:.2f} nginx proxy_pass), {cpu(row, '')} µs/req",
                flush=True,
            )
        if run.forward_auth_skip is not None:
            run.note(f"forward-auth row skipped: {run.forward_auth_skip}")
            return
        header = next(s for s in run.scenarios if s.key == "header")
        try:
            row = forward_auth_row(workdir, setup, clerk, upstream, proxy, header, args)
        except (StartError, OSError, subprocess.SubprocessError) as exc:
            run.note(f"!! forward-auth row skipped: {exc}")
            return
        run.rows.append(row)
        print(
            f"  forward-auth: nginx auth_request -> gateway {row['forward_auth_rps']:,} req/s "
            f"(x{row['ratio_vs_nginx']:.2f} nginx proxy_pass), gateway {cpu(row, '')} + "
            f"nginx {cpu(row, 'auth_nginx_')} µs/req",
            flush=True,
        )


# ---- the table ----------------------------------------------------------------------------


def cpu(row: Mapping[str, Any], prefix: str) -> str:
    total = row.get(f"{prefix}cpu_us_per_req")
    if total is None:
        return "-"
    user, system = row[f"{prefix}cpu_user_us_per_req"], row[f"{prefix}cpu_sys_us_per_req"]
    return f"{user:.0f}+{system:.0f}={total:.0f}"


def _n(value: Any, fmt: str = ",") -> str:
    return "-" if value is None else format(value, fmt)


def scaling(rows: list[dict[str, Any]], workers: int) -> dict[str, Any] | None:
    """Cache-hit req/s with `workers` unpinned over 1 worker pinned, per server."""
    hits = [r for r in rows if r["scenario"] == "valid token (header), cache hit"]
    one = next((r for r in hits if r["setup"].startswith("1 worker")), None)
    many = next((r for r in hits if r["setup"].startswith(f"{workers} workers")), None)
    if one is None or many is None or workers == 1:
        return None
    out: dict[str, Any] = {"workers": workers, "target": TARGETS["scaling"]}
    for who, key in (
        ("gateway", "gateway_rps"),
        ("probe", "probe_rps"),
        ("nginx", "nginx_proxy_rps"),
    ):
        out[who] = round(many[key] / one[key], 2) if many[key] and one[key] else None
    return out


def table(
    rows: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    scale: dict[str, Any] | None,
    notes: list[str],
) -> str:
    lines = [
        "| setup | scenario | gateway req/s | probe req/s | nginx proxy_pass req/s "
        "| direct upstream req/s | gateway / nginx | probe / nginx | gateway p50 ms "
        "| gateway p99 ms | gateway CPU µs/req (user+sys) | probe CPU µs/req | nginx CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    footnotes: list[str] = []
    for r in rows:
        mark = "" if r["statuses_ok"] else " (!)"
        if "forward_auth_rps" in r:
            lines.append(
                f"| {r['setup']} | {r['scenario']}{mark} ¹ | {r['forward_auth_rps']:,} | - "
                f"| {r['nginx_proxy_rps']:,} | - | {_n(r['ratio_vs_nginx'], '.2f')} | - "
                f"| {_n(r['p50_ms'], '.2f')} | {_n(r['p99_ms'], '.2f')} | {cpu(r, '')} | - "
                f"| {cpu(r, 'nginx_')} |"
            )
            footnotes.append(
                "¹ forward-auth: req/s and latency of the whole (nginx auth_request + gateway "
                f"--mode forward-auth, both on CPU {SERVER_CPU}); the gateway's CPU is its "
                f"part, the auth_request nginx adds {cpu(r, 'auth_nginx_')} µs/req; the nginx "
                "column is plain proxy_pass."
            )
            continue
        lines.append(
            f"| {r['setup']} | {r['scenario']}{mark} | {r['gateway_rps']:,} | {_n(r['probe_rps'])} "
            f"| {r['nginx_proxy_rps']:,} | {_n(r['direct_rps'])} | {_n(r['ratio_vs_nginx'], '.2f')} "
            f"| {_n(r['probe_ratio_vs_nginx'], '.2f')} | {_n(r['p50_ms'], '.2f')} "
            f"| {_n(r['p99_ms'], '.2f')} "
            f"| {cpu(r, '')} | {cpu(r, 'probe_')} | {cpu(r, 'nginx_')} |"
        )
    if any(not r["statuses_ok"] for r in rows):
        footnotes.append("(!) some responses had unexpected statuses: see the JSON rows.")
    lines.append("")
    lines += footnotes
    for r in memory:
        lines.append(f"{r['setup']}: {show_memory(r)}")
    if scale is not None:
        lines.append(
            f"Scaling, valid token cache hit, {scale['workers']} workers unpinned / 1 worker "
            f"pinned: gateway {_n(scale['gateway'], '')}x (target >= {scale['target']}x); "
            f"probe {_n(scale['probe'], '')}x; nginx {_n(scale['nginx'], '')}x. {SCALING_CAVEAT}"
        )
    seen = set()
    for r in rows:
        if r.get("probe_note") and r["probe_note"] not in seen:
            seen.add(r["probe_note"])
            lines.append(f"Probe, {r['scenario']}: {r['probe_note']}.")
    lines += notes
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per wrk run (default 5)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="wrk runs per server and scenario, interleaved; the median is reported (default 3)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="workers of gateway, probe and nginx in the unpinned pass (default 2)",
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=5000,
        help="distinct tokens the cache-miss scenario rotates through, in order; more than "
        f"the gateway's token cache ({TOKEN_CACHE}, first in first out), so every request "
        "is a miss (default 5000)",
    )
    parser.add_argument(
        "--probe",
        type=Path,
        default=DEFAULT_PROBE,
        help="the bench probe's rawproxy.py (default: ../shared/bench-probe/rawproxy.py "
        "beside the repository); a path that does not exist, e.g. '', skips the probe column",
    )
    parser.add_argument(
        "--json", type=Path, help="also write the environment, rows and table here as JSON"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.workers < 1 or args.duration <= 0:
        parser.error("--repeats, --workers and --duration must be positive")
    if args.tokens <= TOKEN_CACHE:
        parser.error(f"--tokens must exceed the gateway's token cache ({TOKEN_CACHE})")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    ensure_tools()
    started = time.monotonic()
    env = environment(gateway_python())
    print(describe(env), flush=True)
    probe: Path | None = args.probe.resolve() if str(args.probe) not in ("", ".") else None
    if probe is None or not probe.is_file():
        print(
            f"\n!! PROBE NOT FOUND ({args.probe}): the probe column is skipped in this run !!\n",
            flush=True,
        )
        probe = None
    fa_skip = forward_auth_support()
    clerk = DevClerk(origin="http://bench.local")  # one RSA key for the whole run
    valid = clerk.mint("user_bench", role="member", lifetime_s=3600)
    head, body, sig = valid.split(".")
    bad = f"{head}.{body}.{sig[:-4]}AAAA"
    with tempfile.TemporaryDirectory(prefix="clerk-gateway-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx workers (not root) serve files from here
        t0 = time.monotonic()
        tokens = mint_tokens(clerk, args.tokens)
        print(
            f"minted {len(tokens)} tokens for the cache-miss run in {time.monotonic() - t0:.1f} s",
            flush=True,
        )
        run = Run(args, clerk, valid, scenarios(workdir, valid, bad, tokens), probe, fa_skip)
        if probe is None:
            run.notes.append(f"!! The probe was not found at {args.probe}: no probe column.")
        for workers in dict.fromkeys((1, args.workers)):
            run_pass(run, workdir / f"w{workers}", workers)
    env["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    scale = scaling(run.rows, args.workers)
    text = table(run.rows, run.memory, scale, run.notes)
    print("\n" + describe(env) + "\n\n" + text)
    print(f"\n(bench took {(time.monotonic() - started) / 60:.1f} min)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "environment": env,
                    "settings": {
                        "duration_s": args.duration,
                        "repeats": args.repeats,
                        "workers": args.workers,
                        "tokens": args.tokens,
                        "probe": str(probe) if probe else None,
                    },
                    "rows": run.rows,
                    "memory": run.memory,
                    "scaling": scale,
                    "notes": run.notes,
                    "table": text,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every server started was stopped", file=sys.stderr)
        sys.exit(130)
