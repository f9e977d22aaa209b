"""clerk-gateway command line: run, check, explain, demo."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__, build
from gateway.config import load_policy
from gateway.model import MODES
from gateway.settings import Settings, config_path, parse_address


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = args.handler(parser, args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clerk-gateway", description="Clerk authentication in front of any HTTP service."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"clerk-gateway {__version__} (Python {_python()}, {_build()})",
    )
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="serve: proxy requests according to the policy")
    run.add_argument(
        "--config", help="policy file (default: $GATEWAY_CONFIG or config/routes.yaml)"
    )
    run.add_argument(
        "--listen",
        default=os.environ.get("GATEWAY_LISTEN", "0.0.0.0:8080"),
        help="public HOST:PORT (default: $GATEWAY_LISTEN or 0.0.0.0:8080)",
    )
    run.add_argument(
        "--admin-listen",
        default=os.environ.get("GATEWAY_ADMIN_LISTEN", "0.0.0.0:9090"),
        help="admin HOST:PORT for health and metrics (default: $GATEWAY_ADMIN_LISTEN or 0.0.0.0:9090)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=_env_int("GATEWAY_WORKERS", 1),
        help="processes sharing the port (default: $GATEWAY_WORKERS or 1)",
    )
    run.add_argument(
        "--shutdown-delay",
        type=float,
        default=_env_float("GATEWAY_SHUTDOWN_DELAY", 5.0),
        metavar="S",
        help="on SIGTERM, seconds to keep serving (with /readyz 503) before draining, while "
        "load balancers stop sending traffic (default: $GATEWAY_SHUTDOWN_DELAY or 5)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=_env_float("GATEWAY_DRAIN_TIMEOUT", 30.0),
        metavar="S",
        help="then, seconds to let in-flight requests finish (default: $GATEWAY_DRAIN_TIMEOUT or 30)",
    )
    _mode_argument(run)
    run.set_defaults(handler=_run)

    check = sub.add_parser("check", help="validate a policy file")
    check.add_argument(
        "file", nargs="?", help="policy file (default: $GATEWAY_CONFIG or config/routes.yaml)"
    )
    check.add_argument("--strict", action="store_true", help="warnings fail too")
    _mode_argument(check)
    check.set_defaults(handler=_check)

    explain = sub.add_parser("explain", help="show how one request would be decided (offline)")
    explain.add_argument(
        "--config", help="policy file (default: $GATEWAY_CONFIG or config/routes.yaml)"
    )
    explain.add_argument("method", help="HTTP method, e.g. GET")
    explain.add_argument("url", help="a path (/admin) or an absolute URL (https://host/admin)")
    who = explain.add_mutually_exclusive_group()
    who.add_argument("--token", help="a session JWT (decoded, signature NOT checked)")
    who.add_argument("--claims", help="session claims as JSON, taken as validly signed")
    who.add_argument("--anonymous", action="store_true", help="no session (the default)")
    explain.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="a request header, e.g. 'Sec-Fetch-Dest: document' for a browser navigation",
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    _mode_argument(explain)
    explain.set_defaults(handler=_explain)

    reload = sub.add_parser(
        "reload",
        help="ask a running gateway to reload its policy (SIGHUP; works in images without kill)",
    )
    reload.add_argument(
        "--pid",
        type=int,
        required=True,
        help="the gateway's process id (1 in its container: kubectl exec ... -- clerk-gateway reload --pid 1)",
    )
    reload.set_defaults(handler=_reload)

    demo = sub.add_parser("demo", help="run a local Clerk stand-in, a sample app and the gateway")
    demo.add_argument(
        "--port",
        type=int,
        default=8080,
        help="gateway port on 127.0.0.1 (8080; 0: all ports free ones)",
    )
    demo.add_argument(
        "--config",
        help="run the stand-in and the sample app against your own policy instead of "
        "config/routes.yaml (it sees CLERK_* and UPSTREAM_URL, APP_ORIGIN as the demo sets them)",
    )
    demo.add_argument(
        "--check",
        action="store_true",
        help="run the walkthrough, print it and exit (1 if a check fails)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def _mode_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=os.environ.get("GATEWAY_MODE") or None,
        help="proxy (forward allowed requests) or forward-auth (answer an ingress's checks); "
        "default: $GATEWAY_MODE, else the policy's `mode:`, else proxy",
    )


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, ""))
    except ValueError:
        return default


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    path = config_path(args.file)
    result = load_policy(path, for_run=False, mode=args.mode)
    for problem in result.problems:
        print(problem)
    if result.errors:
        print(f"{path}: {len(result.errors)} error(s), {len(result.warnings)} warning(s)")
        return 1
    if result.warnings and args.strict:
        print(f"{path}: {len(result.warnings)} warning(s), failing because of --strict")
        return 1
    routes = len(result.policy.routes) if result.policy else 0
    print(f"{path}: OK ({routes} routes, {len(result.warnings)} warning(s))")
    return 0


def _explain(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gateway.explain import explain, render

    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            parser.error(f"--header expects 'Name: value', got {item!r}")
        headers[name.strip()] = value.strip()
    claims = None
    if args.claims is not None:
        try:
            claims = json.loads(args.claims)
        except json.JSONDecodeError as exc:
            parser.error(f"--claims is not JSON: {exc}")
        if not isinstance(claims, dict):
            parser.error("--claims must be a JSON object")
    path = config_path(args.config)
    result = load_policy(path, for_run=False, mode=args.mode)
    if result.policy is None:
        for problem in result.errors:
            print(problem, file=sys.stderr)
        return 1
    explanation = explain(
        result.policy,
        args.method,
        args.url,
        claims=claims,
        token=args.token,
        headers=headers,
        now_ms=time.time() * 1000,
    )
    print(render(explanation, args.json))
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gateway.server import serve

    try:
        settings = Settings(
            config=config_path(args.config),
            listen=parse_address(args.listen),
            admin_listen=parse_address(args.admin_listen),
            workers=args.workers,
            drain_timeout_s=args.drain_timeout,
            shutdown_delay_s=args.shutdown_delay,
            mode=args.mode,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if settings.workers < 1:
        parser.error("--workers must be at least 1")
    if (
        not 0 <= settings.shutdown_delay_s < math.inf
        or not 0 <= settings.drain_timeout_s < math.inf
    ):
        parser.error("--shutdown-delay and --drain-timeout must be seconds, 0 or more")
    return serve(settings)


def _reload(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """SIGHUP to a gateway, after making sure that process is one (never to an init)."""
    try:
        cmdline = Path(f"/proc/{args.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        print(f"clerk-gateway reload: no process {args.pid}", file=sys.stderr)
        return 1
    if b"clerk-gateway" not in cmdline and b"gateway run" not in cmdline:
        print(
            f"clerk-gateway reload: process {args.pid} is not a clerk-gateway "
            f"({cmdline.decode(errors='replace').strip()[:80]!r})",
            file=sys.stderr,
        )
        return 1
    os.kill(args.pid, signal.SIGHUP)
    print(f"clerk-gateway reload: asked process {args.pid} to reload its policy")
    return 0


def _python() -> str:
    return platform.python_version()


def _build() -> str:
    kind = build()
    return "request path compiled" if kind == "compiled" else "pure Python"


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args.port, args.check, args.config)


if __name__ == "__main__":
    sys.exit(main())
