"""`clerk-gateway check` and `explain`, run as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import jwt
import pytest

import gateway
from gateway.devclerk import DevClerk
from tests.helpers import GATEWAY_CLI

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY_CLI, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, **(env or {})},
        check=False,
    )


def test_check_accepts_the_example_policy() -> None:
    result = cli("check", "config/routes.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_check_strict_fails_on_environment_warnings() -> None:
    assert cli("check", "config/routes.yaml", "--strict").returncode == 1


def test_check_reads_gateway_config() -> None:
    result = cli("check", env={"GATEWAY_CONFIG": "config/routes.yaml"})
    assert result.returncode == 0


def test_check_defaults_to_config_routes_yaml_like_run() -> None:
    result = cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("config/routes.yaml: OK")


def test_check_says_which_variable_run_will_refuse() -> None:
    out = cli("check", "config/routes.yaml").stdout
    assert "${APP_ORIGIN} is not set: `clerk-gateway run` will refuse to start" in out


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"clerk-gateway \d+\.\d+\.\d+ \(Python 3\.\d+\.\d+, .+\)\n", result.stdout)
    # the CLI runs the same installed build as this test process (sources or the wheel)
    said = {"python": "pure Python", "compiled": "request path compiled"}[gateway.build()]
    assert result.stdout.endswith(f", {said})\n")


def test_run_takes_the_shutdown_delay_from_its_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.__main__ import _parser

    monkeypatch.delenv("GATEWAY_SHUTDOWN_DELAY", raising=False)
    monkeypatch.delenv("GATEWAY_DRAIN_TIMEOUT", raising=False)
    args = _parser().parse_args(["run"])
    assert (args.shutdown_delay, args.drain_timeout) == (5.0, 30.0)
    monkeypatch.setenv("GATEWAY_SHUTDOWN_DELAY", "12.5")
    monkeypatch.setenv("GATEWAY_DRAIN_TIMEOUT", "45")
    args = _parser().parse_args(["run"])
    assert (args.shutdown_delay, args.drain_timeout) == (12.5, 45.0)
    args = _parser().parse_args(["run", "--shutdown-delay", "0"])
    assert args.shutdown_delay == 0.0


@pytest.mark.parametrize("flag", ["--shutdown-delay", "--drain-timeout"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_run_refuses_a_shutdown_time_that_is_not_seconds(flag: str, value: str) -> None:
    result = cli("run", "--config", "config/routes.yaml", flag, value)
    assert result.returncode == 2
    assert "must be seconds, 0 or more" in result.stderr


def test_reload_refuses_a_process_that_is_not_a_gateway() -> None:
    import os

    result = cli("reload", "--pid", str(os.getpid()))
    assert result.returncode == 1
    assert "is not a clerk-gateway" in result.stderr
    assert cli("reload", "--pid", "999999999").returncode == 1


def test_check_lists_five_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text(
        "clerk:\n  jwt_key: not-a-pem\n"
        "upstream: ftp://nowhere\n"
        "routes:\n"
        "  - {path: /x, access: publik}\n"
        "  - {path: 'regex:(', access: public}\n"
        "  - {path: /y, access: public, metods: [GET]}\n"
    )
    result = cli("check", str(bad))
    assert result.returncode == 1
    problems = [
        line
        for line in result.stdout.splitlines()
        if re.match(rf"{re.escape(str(bad))}:\d+: ", line)
    ]
    assert len(problems) == 5, result.stdout
    for line_no in (2, 3, 5, 6, 7):
        assert any(p.startswith(f"{bad}:{line_no}: ") for p in problems), (line_no, problems)


APP = {"APP_ORIGIN": "http://127.0.0.1:8080"}


def explain(*args: str) -> dict[str, object]:
    result = cli("explain", "--config", "config/routes.yaml", *args, "--json", env=APP)
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def claims(role: str) -> str:
    return json.dumps(
        {
            "sub": "user_1",
            "sid": "sess_1",
            "exp": time.time() + 60,
            "azp": "http://127.0.0.1:8080",
            "metadata": {"role": role},
        }
    )


def test_explain_root_is_public() -> None:
    out = explain("GET", "/", "--anonymous")
    assert (out["decision"], out["status"], out["reason"]) == ("allow", 200, None)
    assert out["route"] == {
        "index": 0,
        "path": [
            "/",
            "/sign-in/**",
            "/sign-up/**",
            "/unauthorized",
            "/api/public/**",
            "/favicon.ico",
        ],
        "access": "public",
        "name": "public",
    }
    assert out["signature_checked"] is False


def test_explain_gives_a_single_path_as_the_string_written() -> None:
    out = explain("GET", "/reports/q1", "--anonymous")
    assert out["route"] == {
        "index": 3,
        "path": "/reports/**",
        "access": "protected",
        "name": "reports",
    }


def test_explain_dashboard_anonymous_is_denied() -> None:
    out = explain("GET", "/dashboard", "--anonymous")
    assert (out["decision"], out["status"], out["reason"]) == ("deny", 401, "session-token-missing")


def test_explain_dashboard_anonymous_browser_is_redirected() -> None:
    out = explain(
        "GET", "https://app.example.com/dashboard?tab=1", "--header", "Sec-Fetch-Dest: document"
    )
    assert (out["decision"], out["status"]) == ("redirect", 307)
    assert (
        out["location"]
        == "/sign-in?redirect_url=https%3A%2F%2Fapp.example.com%2Fdashboard%3Ftab%3D1"
    )


def test_explain_admin_as_member_is_denied() -> None:
    out = explain("GET", "/admin", "--claims", claims("member"))
    assert (out["decision"], out["status"], out["reason"]) == ("deny", 403, "role-required")


def test_explain_admin_as_admin_is_allowed_with_headers() -> None:
    out = explain("GET", "/admin", "--claims", claims("admin"))
    assert (out["decision"], out["status"]) == ("allow", 200)
    assert out["headers"] == {
        "X-Clerk-User-Id": "user_1",
        "X-Clerk-Session-Id": "sess_1",
        "X-Clerk-Role": "admin",
    }


def test_explain_normalises_first() -> None:
    out = explain("GET", "/admin/../admin", "--claims", claims("member"))
    assert out["path"] == "/admin"
    assert out["route"]["index"] == 2  # type: ignore[index]


def test_explain_ambiguous_path() -> None:
    out = explain("GET", "/admin%2f")
    assert (out["status"], out["reason"]) == (400, "path-ambiguous")


def test_explain_token_is_decoded_without_checking_its_signature() -> None:
    token = jwt.encode(
        {
            "sub": "user_2",
            "exp": int(time.time()) + 60,
            "azp": "http://127.0.0.1:8080",
            "metadata": {"role": "admin"},
        },
        "not-the-real-key-but-long-enough-for-hs256",
        algorithm="HS256",
    )
    out = explain("GET", "/admin", "--token", token)
    assert out["reason"] == "token-invalid-algorithm"
    rs_token = token.replace(
        token.split(".")[0], jwt.utils.base64url_encode(b'{"alg":"RS256","typ":"JWT"}').decode()
    )
    out = explain("GET", "/admin", "--token", rs_token)
    assert (out["decision"], out["headers"]) == (
        "allow",
        {"X-Clerk-User-Id": "user_2", "X-Clerk-Role": "admin"},
    )


def test_explain_text_output_says_the_signature_was_not_checked() -> None:
    result = cli(
        "explain",
        "--config",
        "config/routes.yaml",
        "GET",
        "/admin",
        "--claims",
        claims("admin"),
        env=APP,
    )
    assert result.returncode == 0
    assert "routes[2] (admin)" in result.stdout
    assert "not checked" in result.stdout


@pytest.mark.parametrize(
    "args", [["GET"], ["GET", "/", "--claims", "{not json"], ["GET", "/", "--header", "nocolon"]]
)
def test_explain_bad_usage_exits_2(args: list[str]) -> None:
    assert cli("explain", *args).returncode == 2


def test_explain_says_which_azp_a_copied_policy_refuses() -> None:
    result = cli(
        "explain",
        "--config",
        "config/routes.yaml",
        "GET",
        "/dashboard",
        "--claims",
        json.dumps({"sub": "user_1", "exp": time.time() + 60, "azp": "https://other.example"}),
        env={"APP_ORIGIN": "https://app.example.com"},
    )
    assert "token-invalid-authorized-parties" in result.stdout
    assert (
        "the token's azp 'https://other.example' is not one of clerk.authorized_parties: "
        "[https://app.example.com]"
    ) in result.stdout


# ---- browser sessions: explain takes the cookie path `run` takes -----------------------------

CLERK = DevClerk(origin="http://127.0.0.1:8080")
WITH_HANDSHAKE = {
    **APP,
    "CLERK_PUBLISHABLE_KEY": CLERK.publishable_key,
    "CLERK_SECRET_KEY": CLERK.secret_key,
}
PAGE = ["--header", "Sec-Fetch-Dest: document"]


def explain_as(env: dict[str, str], *args: str) -> dict[str, object]:
    result = cli("explain", "--config", "config/routes.yaml", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_explain_shows_the_handshake_a_navigation_gets() -> None:
    out = explain_as(WITH_HANDSHAKE, "GET", "http://127.0.0.1:8080/dashboard", *PAGE)
    assert out["decision"] == "redirect"
    assert out["status"] == 307
    assert out["reason"] == "dev-browser-missing"
    assert str(out["location"]).startswith(
        "https://clerk.gateway-demo.localhost/v1/client/handshake?redirect_url="
        "http%3A%2F%2F127.0.0.1%3A8080%2Fdashboard&"
    )
    # the same request as an API call is a 401, never a redirect
    api = explain_as(WITH_HANDSHAKE, "GET", "http://127.0.0.1:8080/dashboard")
    assert (api["status"], api["reason"]) == (401, "session-token-missing")


def test_explain_reads_the_session_cookie_by_clerks_rules() -> None:
    now = int(time.time())
    token = CLERK.mint("user_1", now=now)
    cookie = f"Cookie: __session={token}; __client_uat={now}; __clerk_db_jwt=dvb_1"
    out = explain_as(
        WITH_HANDSHAKE, "GET", "http://127.0.0.1:8080/dashboard", *PAGE, "--header", cookie
    )
    assert (out["decision"], out["status"]) == ("allow", 200)
    headers = out["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Clerk-User-Id"] == "user_1"
    # signed in before this token was minted: refreshed through the handshake
    stale = f"Cookie: __session={token}; __client_uat={now + 60}; __clerk_db_jwt=dvb_1"
    out = explain_as(
        WITH_HANDSHAKE, "GET", "http://127.0.0.1:8080/dashboard", *PAGE, "--header", stale
    )
    assert out["reason"] == "session-token-iat-before-client-uat"
    # a cross-site POST riding on the cookie
    post = explain_as(
        WITH_HANDSHAKE,
        "POST",
        "http://127.0.0.1:8080/api/posts",
        "--header",
        cookie,
        "--header",
        "Sec-Fetch-Site: cross-site",
    )
    assert (post["status"], post["reason"]) == (403, "csrf-origin-mismatch")


def test_explain_reads_the_session_cookie_without_the_handshake_too() -> None:
    token = CLERK.mint("user_1")
    out = explain_as(
        {**APP, "CLERK_PUBLISHABLE_KEY": CLERK.publishable_key},
        "GET",
        "http://127.0.0.1:8080/dashboard",
        "--header",
        f"Cookie: __session={token}",
    )
    assert (out["decision"], out["status"]) == ("allow", 200)


def test_explain_shows_a_handshake_coming_back() -> None:
    out = explain_as(
        WITH_HANDSHAKE,
        "GET",
        "http://127.0.0.1:8080/dashboard?__clerk_handshake_nonce=n1&tab=2",
        *PAGE,
    )
    assert out["location"] == "http://127.0.0.1:8080/dashboard?tab=2"
    assert out["reason"] is None


def test_explain_shows_every_header_run_would_send(tmp_path: Path) -> None:
    policy = (ROOT / "config" / "routes.yaml").read_text() + (
        "identity_headers:\n"
        "  X-Clerk-Email: email\n"
        "  X-Clerk-Full-Name: name\n"
        "user_profile:\n"
        "  headers: {X-Clerk-User-Username: username}\n"
        "assertion:\n"
        "  issuer: https://gateway.example.com\n"
    )
    path = tmp_path / "routes.yaml"
    path.write_text(policy)
    given = json.loads(claims("member"))
    given.update(email="a@example.com", name="Zoë")
    result = cli(
        "explain",
        "--config",
        str(path),
        "GET",
        "/dashboard",
        "--claims",
        json.dumps(given),
        "--json",
        env={**APP, "CLERK_SECRET_KEY": "sk_test_x"},
    )
    assert result.returncode == 0, result.stderr
    headers = json.loads(result.stdout)["headers"]
    assert headers["X-Clerk-Email"] == "a@example.com"
    assert headers["X-Clerk-Full-Name"] == "Zo%C3%AB"
    assert headers["X-Clerk-Full-Name-Encoding"] == "percent"
    assert headers["X-Clerk-User-Username"].startswith("(looked up: username of user_1")
    assert headers["X-Clerk-Gateway-Assertion"].startswith("(signed: an ES256 JWT for aud=default")
