"""What one request costs in Python, measured without sockets (not a test; CI does not
run it).

    .venv/bin/python bench/pathcost.py [header|cookie|none|public|fresh] [--bytecodes]
    .venv/bin/python bench/pathcost.py header --callgrind     # needs valgrind

The gateway measured is the one installed for that Python: `.venv` runs the sources
(pure Python; --bytecodes needs them), `.venv-compiled` the compiled wheel.

The gateway's real request path (listener, application, upstream pool) driven in one
process: a client connection and a pooled upstream connection whose transports only
record what is written, fed a request and the upstream's response in turn. What remains
is the Python (and llhttp) a request costs, without the system calls, the event loop and
the noise of other tenants that wrk measurements on a shared machine carry (20-30% from
one run to the next here).

- default: CPU µs per request (the best of 7 rounds; still this machine's speed of the
  moment, so compare runs made minutes apart with care);
- `--bytecodes`: Python bytecodes executed per request, per function (deterministic: the
  same code gives the same count);
- `--callgrind`: machine instructions per request under valgrind's callgrind, counted
  only while requests run (deterministic, and the closest thing to CPU time this machine
  can measure without noise: no hardware counters here). About a minute.

`fresh` sends a new token every request (a cache miss: RS256 verification); the others
repeat one request (a cache hit for the token modes). The policy is bench/run.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from minting import mint_tokens
from run import write_policy

from gateway import server
from gateway.app import Gateway
from gateway.devclerk import DevClerk
from gateway.http1 import ClientConnection, ConnectionTracker
from gateway.server import _use_uvloop
from gateway.upstream import UpstreamConnection

MODES = ("header", "cookie", "none", "public", "fresh")
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 04:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n"
    b"Connection: keep-alive\r\n\r\nok\n"
)
WARM = 300  # requests before measuring: every memo and cache filled
DEVNULL = open(os.devnull, "w")  # noqa: SIM115 (open as long as the process)


class Recorder:
    """A transport that keeps the last write (the gateway's answer, or its request)."""

    def __init__(self) -> None:
        self.last = b""

    def write(self, data: bytes) -> None:
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50_000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


def request(mode: str, token: str) -> bytes:
    path = b"/public/x" if mode == "public" else b"/api/x"
    credential = b""
    if mode in ("header", "fresh"):
        credential = b"Authorization: Bearer %s\r\n" % token.encode()
    elif mode == "cookie":
        credential = b"Cookie: __session=%s\r\n" % token.encode()
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n%s\r\n" % (path, credential)


async def driver(mode: str, count: int) -> Callable[[], None]:
    """A function sending one request through the gateway (and the upstream's answer)."""
    clerk = DevClerk(origin="http://127.0.0.1")
    workdir = Path(tempfile.mkdtemp(prefix="pathcost-"))
    policy = write_policy(workdir, "pathcost", clerk, 9, 9)  # ports never dialled
    os.environ["CLERK_JWT_KEY"] = clerk.signer.public_pem()
    gateway = Gateway(str(policy))
    await gateway.start()
    gateway.access_log.stream = DEVNULL  # the lines are made, and dropped
    # the collector as the server sets it once started (server.py)
    gc.collect()
    gc.freeze()
    gc.set_threshold(getattr(server, "GC_THRESHOLD", 700), 10, 10)
    runtime = gateway.runtime
    tracker = ConnectionTracker()
    tracker.follow(runtime.policy.limits, runtime.rules, runtime.trust)
    client = ClientConnection(gateway, tracker)
    client_side = Recorder()
    client.connection_made(client_side)  # type: ignore[arg-type]
    pool = gateway.pool
    upstream = UpstreamConnection(pool, runtime.policy.upstreams["default"])
    upstream.connection_made(Recorder())  # type: ignore[arg-type]
    pool._all.add(upstream)
    pool.release(upstream)
    forwarded = mode != "none"
    if mode == "fresh":
        tokens: Iterator[bytes] = iter(
            [request(mode, t) for t in mint_tokens(clerk, count + WARM, role="member")]
        )
    else:
        tokens = itertools.repeat(request(mode, mint_tokens(clerk, 1, role="member")[0]))

    def one() -> None:
        client.data_received(next(tokens))
        if forwarded:
            upstream.data_received(RESPONSE)

    for _ in range(WARM):
        one()
    expected = b"HTTP/1.1 200" if forwarded else b"HTTP/1.1 401"
    if not client_side.last.startswith(expected):
        raise SystemExit(f"{mode}: the gateway answered {client_side.last[:60]!r}")
    return one


def timed(one: Callable[[], None], count: int) -> float:
    best = float("inf")
    for _ in range(7):  # `driver` was asked for 7 * count requests
        start = time.process_time()
        for _ in range(count):
            one()
        best = min(best, (time.process_time() - start) / count)
    return best * 1e6


def bytecodes(one: Callable[[], None], count: int) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            seen[f"{code.co_name} ({Path(code.co_filename).name}:{code.co_firstlineno})"] += 1
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    sys.settrace(calls)
    try:
        for _ in range(count):
            one()
    finally:
        sys.settrace(None)
    return seen


def consume(one: Callable[[], None], count: int) -> None:
    """Requests run inside itertools.starmap: callgrind counts only inside it."""
    collections.deque(itertools.starmap(one, itertools.repeat((), count)), maxlen=0)


def under_callgrind(mode: str, count: int) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--callgrind needs valgrind (apt install valgrind)")
    with tempfile.TemporaryDirectory() as scratch:
        run = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                "--toggle-collect=starmap_next",
                f"--callgrind-out-file={scratch}/out",
                sys.executable,
                __file__,
                mode,
                "--count",
                str(count),
                "--consume",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    # one line per process: minting many tokens forks helpers, which count nothing
    counts = [
        int(line.rsplit(":", 1)[1].strip().replace(",", ""))
        for line in run.stderr.splitlines()
        if "Collected :" in line
    ]
    if not counts or max(counts) == 0:
        raise SystemExit("callgrind reported no count:\n" + run.stderr[-2000:])
    return max(counts) // count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=MODES, nargs="?", default="header")
    parser.add_argument("--count", type=int, default=0, help="requests measured")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--bytecodes", action="store_true", help="bytecodes per function")
    what.add_argument("--callgrind", action="store_true", help="instructions per request")
    what.add_argument("--consume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = args.count or (1000 if args.callgrind or args.consume or args.bytecodes else 10_000)
    if args.mode == "fresh":
        count = min(count, 2000)  # each token is minted (signed) first
    if args.callgrind:
        print(f"{args.mode}: {under_callgrind(args.mode, count):,} instructions per request")
        return
    what = "consume" if args.consume else "bytecodes" if args.bytecodes else "time"
    _use_uvloop()  # the loop the server runs on
    asyncio.run(measure(args.mode, count, what))


async def measure(mode: str, count: int, what: str) -> None:
    """Inside the running loop, as in the server (the log writer's timer needs it)."""
    rounds = 7 if what == "time" else 1
    one = await driver(mode, count * rounds)
    if what == "consume":
        consume(one, count)
    elif what == "bytecodes":
        seen = bytecodes(one, count)
        print(f"{mode}: {sum(seen.values()) / count:,.0f} bytecodes per request")
        for name, n in seen.most_common(40):
            print(f"{n / count:8.1f}  {name}")
    else:
        print(f"{mode}: {timed(one, count):.1f} µs of CPU per request (best of 7 rounds)")


if __name__ == "__main__":
    main()
