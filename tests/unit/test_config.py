"""Policy loading: every problem at once, with file:line and key path."""

from __future__ import annotations

import textwrap

import pytest

from gateway.config import load_policy, parse_policy
from gateway.decision import Access
from gateway.yamlsource import Severity, interpolate

PK = "pk_test_ZXhhbXBsZS5hY2NvdW50cy5kZXYk"  # example.accounts.dev
BASE = f"""\
clerk:
  publishable_key: {PK}
  secret_key: sk_test_abc
upstream: http://127.0.0.1:3000
role_claim: metadata.role
"""


def load(text: str, *, for_run: bool = True, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_policy(textwrap.dedent(text), "routes.yaml", for_run=for_run, env=env or {})


def messages(text: str, **kw: object) -> list[str]:
    return [str(p) for p in load(text, **kw).problems]  # type: ignore[arg-type]


def test_the_example_policy_is_valid_under_check() -> None:
    result = load_policy("config/routes.yaml", for_run=False, env={})
    assert result.errors == ()
    assert result.policy is not None
    assert [r.access for r in result.policy.routes][:3] == [
        Access.PUBLIC,
        Access.WEBHOOK,
        Access.ADMIN,
    ]


def test_the_example_policy_runs_with_its_environment() -> None:
    env = {
        "CLERK_PUBLISHABLE_KEY": PK,
        "CLERK_SECRET_KEY": "sk_test_x",
        "CLERK_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "APP_ORIGIN": "https://app.example.com",
    }
    result = load_policy("config/routes.yaml", for_run=True, env=env)
    assert result.problems == ()
    assert result.policy is not None
    assert result.policy.clerk.jwks_url == "https://api.clerk.com/v1/jwks"
    assert result.policy.clerk.issuer == "https://example.accounts.dev"
    assert result.policy.clerk.authorized_parties == ("https://app.example.com",)
    # no `webhooks:` section: the secret comes from CLERK_WEBHOOK_SECRET, the default
    assert result.policy.webhooks.secrets == ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",)


WEBHOOK_ONLY = (
    "clerk:\n  jwt_key: ${CLERK_JWT_KEY:-}\n  jwks_url: https://clerk.example.com/.well-known/jwks.json\n"
    "upstream: http://127.0.0.1:3000\n"
    "routes:\n  - {path: /hooks, access: webhook}\n"
)


def test_a_webhook_route_takes_its_secret_from_the_environment_by_default() -> None:
    env = {
        "CLERK_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3Q="
    }
    result = parse_policy(WEBHOOK_ONLY, "p.yaml", for_run=True, env=env)
    assert result.errors == ()
    assert result.policy is not None
    assert len(result.policy.webhooks.secrets) == 2


@pytest.mark.parametrize("env", [{}, {"CLERK_WEBHOOK_SECRET": ""}, {"CLERK_WEBHOOK_SECRET": "  "}])
def test_an_empty_webhook_secret_says_run_will_refuse(env: dict[str, str]) -> None:
    checked = parse_policy(WEBHOOK_ONLY, "p.yaml", for_run=False, env=env)
    assert checked.errors == ()
    [warning] = [str(p) for p in checked.warnings if "webhooks.secrets" in str(p)]
    assert "${CLERK_WEBHOOK_SECRET}" in warning
    assert "`clerk-gateway run` will refuse to start" in warning
    ran = parse_policy(WEBHOOK_ONLY, "p.yaml", for_run=True, env=env)
    assert ran.policy is None
    assert any("${CLERK_WEBHOOK_SECRET}" in str(p) for p in ran.errors)


def test_a_literally_empty_secret_list_is_an_error_even_under_check() -> None:
    text = WEBHOOK_ONLY + "webhooks:\n  secrets: []\n"
    result = parse_policy(text, "p.yaml", for_run=False, env={"CLERK_WEBHOOK_SECRET": "whsec_x"})
    assert any("webhooks.secrets" in str(p) for p in result.errors)


BAPI_JWKS = (
    "clerk:\n  api_url: https://api.example.com\n  jwks_url: https://api.example.com/v1/jwks\n"
)


def test_a_backend_jwks_with_no_secret_key_at_all_is_an_error() -> None:
    text = BAPI_JWKS + "upstream: http://127.0.0.1:3000\n"
    result = parse_policy(text, "p.yaml", for_run=False, env={})
    assert any(p.path == "clerk.jwks_url" for p in result.errors), result.problems


def test_a_backend_jwks_whose_secret_is_empty_here_is_a_warning() -> None:
    text = BAPI_JWKS + "  secret_key: ${CLERK_SECRET_KEY:-}\nupstream: http://127.0.0.1:3000\n"
    result = parse_policy(text, "p.yaml", for_run=False, env={})
    assert result.errors == ()
    [warning] = [str(p) for p in result.warnings if "clerk.jwks_url" in str(p)]
    assert "${CLERK_SECRET_KEY}" in warning
    assert "refuse to start" in warning


def test_duplicate_route_names_are_an_error() -> None:
    text = (
        "clerk:\n  jwks_url: https://clerk.example.com/.well-known/jwks.json\n"
        "upstream: http://127.0.0.1:3000\n"
        "routes:\n"
        "  - {name: app, path: /a/**, access: public}\n"
        "  - {name: app, path: /b/**, access: protected}\n"
    )
    result = parse_policy(text, "p.yaml", for_run=False, env={})
    assert [str(p) for p in result.errors] == [
        "p.yaml:6: routes[1].name: 'app' is already the name of routes[0] (line 5); "
        "names label metrics and logs, so each must be unique"
    ]


def test_run_refuses_an_unset_variable_and_names_it() -> None:
    result = load_policy("config/routes.yaml", for_run=True, env={})
    assert result.policy is None
    text = "\n".join(str(p) for p in result.errors)
    assert "${CLERK_PUBLISHABLE_KEY} is not set" in text


SINGLE_ERRORS = [
    # (description, policy text appended to BASE, expected fragment of the one error)
    (
        "unknown access level",
        "routes:\n  - {path: /x, access: pubic}\n",
        "routes.yaml:7: routes[0].access: unknown access 'pubic'",
    ),
    (
        "did-you-mean for a misspelt key",
        "routes:\n  - {path: /x, acess: public}\n",
        "unknown key 'acess'; did you mean 'access'?",
    ),
    (
        "unknown top-level key",
        "rotues: []\n",
        "routes.yaml:6: rotues: unknown key 'rotues'; did you mean 'routes'?",
    ),
    (
        "wrong type",
        "case_insensitive_paths: maybe\n",
        "case_insensitive_paths: must be true or false",
    ),
    (
        "bad CIDR",
        "trusted_proxies: [10.0.0.0/33]\n",
        "trusted_proxies[0]: not a valid address or CIDR",
    ),
    ("host bits set in CIDR", "trusted_proxies: [10.0.0.1/8]\n", "has host bits set"),
    (
        "bad URL",
        "sign_in_url: javascript:alert(1)\n",
        "sign_in_url: must be an absolute http(s) URL or a path",
    ),
    ("protocol-relative redirect", "unauthorized_url: //evil.com\n", "unauthorized_url: must be"),
    (
        "pattern that does not compile",
        "routes:\n  - {path: 'regex:/a(', access: public}\n",
        "routes[0].path: regular expression does not compile",
    ),
    (
        "undefined upstream",
        "routes:\n  - {path: /x, access: public, upstream: api}\n",
        "routes[0].upstream: upstream 'api' is not defined",
    ),
    (
        "webhook route with a literally empty secret list",
        "routes:\n  - {path: /wh, access: webhook}\nwebhooks:\n  secrets: []\n",
        "webhooks.secrets: routes[0] is a webhook route, so at least one 'whsec_' secret is required",
    ),
    ("missing path", "routes:\n  - {access: public}\n", "routes[0].path: required"),
    ("missing access", "routes:\n  - {path: /x}\n", "routes[0].access: required"),
    (
        "bad org permission",
        "routes:\n  - path: /x\n    access: protected\n    require: {org_permissions: [reports]}\n",
        "require.org_permissions[0]: must look like 'org:<feature>:<permission>'",
    ),
    (
        "requirements on a public route",
        "routes:\n  - path: /x\n    access: public\n    require: {roles: [a]}\n",
        "an 'public' route cannot have requirements",
    ),
    (
        "duplicate key",
        "routes:\n  - path: /x\n    access: public\n    access: admin\n",
        "routes.yaml:9: routes[0].access: duplicate key",
    ),
    (
        "non-http upstream",
        "upstreams:\n  api: {url: ftp://x}\n",
        "upstreams.api.url: must be an http(s) URL",
    ),
    (
        "number below its minimum",
        "limits:\n  max_header_bytes: -1\n",
        "limits.max_header_bytes: must be at least 256",
    ),
    (
        "short remember window",
        "webhooks:\n  tolerance_s: 300\n  remember_s: 100\n",
        "webhooks.remember_s: must be at least twice tolerance_s",
    ),
    ("malformed interpolation", "sign_in_url: ${1BAD}\n", "invalid interpolation"),
    (
        "webhook secret that is not base64",
        "webhooks:\n  secrets: whsec_not*base64\n",
        "webhooks.secrets[0]: not a webhook secret",
    ),
    (
        "webhook secret too short",
        "webhooks:\n  secrets: [whsec_YWJj]\n",
        "webhooks.secrets[0]: not a webhook secret",
    ),
]


@pytest.mark.parametrize(
    ("description", "extra", "expected"), SINGLE_ERRORS, ids=[c[0] for c in SINGLE_ERRORS]
)
def test_each_error_message(description: str, extra: str, expected: str) -> None:
    found = messages(BASE + extra)
    assert any(expected in m for m in found), f"{description}: {found}"


def test_admin_route_needs_role_claim() -> None:
    text = (
        BASE.replace("role_claim: metadata.role\n", "")
        + "routes:\n  - {path: /admin/**, access: admin}\n"
    )
    assert any("needs 'role_claim'" in m for m in messages(text))


def test_no_key_source_is_an_error_when_the_file_names_none() -> None:
    text = "upstream: http://127.0.0.1:3000\nroutes:\n  - {path: /x, access: protected}\n"
    found = load(text, for_run=False).errors
    assert any("no key source" in str(p) for p in found)


def test_no_key_source_from_an_empty_variable_is_a_warning_under_check() -> None:
    text = "clerk:\n  secret_key: ${CLERK_SECRET_KEY:-}\nupstream: http://127.0.0.1:3000\n"
    result = load(text, for_run=False)
    assert result.errors == ()
    assert any("${CLERK_SECRET_KEY}" in str(p) for p in result.warnings)
    assert load(text, for_run=True).policy is None


def test_five_mistakes_are_all_reported_with_their_lines() -> None:
    text = textwrap.dedent(
        """\
        clerk:
          publishable_key: pk_test_bm90LWEta2V5
          secret_key: sk_test_abc
        upstream: http://127.0.0.1:3000
        trusted_proxies: [not-an-ip]
        routes:
          - path: /x
            access: sometimes
          - path: 'regex:(['
            access: public
          - path: /y
            access: public
            upstream: nowhere
        """
    )
    result = parse_policy(text, "routes.yaml", for_run=True, env={})
    assert result.policy is None
    lines = [str(p) for p in result.errors]
    assert len(lines) == 5, lines
    expected = [
        "routes.yaml:2: clerk.publishable_key:",
        "routes.yaml:5: trusted_proxies[0]:",
        "routes.yaml:8: routes[0].access:",
        "routes.yaml:9: routes[1].path:",
        "routes.yaml:13: routes[2].upstream:",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)


def test_invalid_yaml_reports_line_and_column() -> None:
    result = load("routes:\n  - path: /x\n   access: [public\n")
    assert result.policy is None
    (problem,) = result.errors
    assert problem.line == 3
    assert "column" in problem.message


def test_secrets_never_appear_in_messages() -> None:
    text = "clerk:\n  secret_key: ${S}\n  clock_skew_ms: ${S}\nupstream: http://x\n"
    found = "\n".join(messages(text, env={"S": "supersecretvalue"}))
    assert "supersecretvalue" not in found
    assert "must be an integer" in found


@pytest.mark.parametrize(
    ("description", "text", "env", "expected"),
    [
        ("plain variable", "${A}", {"A": "1"}, "1"),
        ("default used when unset", "${A:-x}", {}, "x"),
        ("default used when empty", "${A:-x}", {"A": ""}, "x"),
        ("value wins over default", "${A:-x}", {"A": "y"}, "y"),
        ("embedded in text", "http://${H}:80", {"H": "h"}, "http://h:80"),
        ("dollar escape", "$${A}", {"A": "1"}, "${A}"),
        ("unset without default is empty", "${A}", {}, ""),
    ],
)
def test_interpolation(description: str, text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected, description


def test_interpolated_numbers_and_booleans_are_typed() -> None:
    text = BASE + "case_insensitive_paths: ${CI}\nclerk2: 1\n"
    result = load(text.replace("clerk2: 1\n", ""), env={"CI": "true"})
    assert result.policy is not None
    assert result.policy.case_insensitive_paths is True


LINTS = [
    (
        "shadowed by an earlier catch-all",
        "routes:\n  - {path: /api/**, access: public}\n  - {path: /api/users, access: admin}\n",
        "routes[1]: warning: never matches: routes[0]",
    ),
    (
        "shadowed glob by a wider glob",
        "routes:\n  - {path: /**, access: protected}\n  - {path: /a/*/b, access: public}\n",
        "routes[1]: warning: never matches",
    ),
    (
        "empty methods",
        "routes:\n  - {path: /x, access: public, methods: []}\n",
        "empty methods list",
    ),
    (
        "regex that cannot match a path",
        "routes:\n  - {path: 'regex:admin/.*', access: public}\n",
        "matches nothing",
    ),
    (
        "regex with a double slash",
        "routes:\n  - {path: 'regex://admin/.*', access: public}\n",
        "matches nothing",
    ),
]


@pytest.mark.parametrize(("description", "extra", "expected"), LINTS, ids=[c[0] for c in LINTS])
def test_lints_are_warnings(description: str, extra: str, expected: str) -> None:
    result = load(BASE + extra)
    assert result.policy is not None, result.errors
    found = [str(p) for p in result.warnings]
    assert any(expected in m for m in found), found
    assert all(p.severity is Severity.WARNING for p in result.warnings)


NOT_SHADOWED = [
    (
        "narrower methods earlier",
        "routes:\n  - {path: /api/**, access: public, methods: [GET]}\n  - {path: /api/x, access: admin}\n",
    ),
    (
        "host-bound earlier",
        "routes:\n  - {path: /**, access: public, host: a.example.com}\n  - {path: /x, access: admin}\n",
    ),
    (
        "sibling globs",
        "routes:\n  - {path: /a/*, access: public}\n  - {path: /a/**, access: admin}\n",
    ),
]


@pytest.mark.parametrize(("description", "extra"), NOT_SHADOWED, ids=[c[0] for c in NOT_SHADOWED])
def test_no_false_shadow_warnings(description: str, extra: str) -> None:
    result = load(BASE + extra)
    assert result.warnings == (), description


FORWARD_AUTH = (
    "mode: forward-auth\n"
    "clerk:\n  jwks_url: https://clerk.example.com/.well-known/jwks.json\n"
    "trusted_proxies: [10.0.0.0/8]\n"
    "routes:\n  - {path: /public/**, access: public}\n"
)


def test_forward_auth_needs_no_upstream() -> None:
    result = parse_policy(FORWARD_AUTH, "p.yaml", for_run=True, env={})
    assert result.problems == ()
    assert result.policy is not None
    assert result.policy.mode == "forward-auth"
    assert parse_policy(
        FORWARD_AUTH.replace("mode: forward-auth\n", ""), "p.yaml", for_run=True, env={}
    ).errors


def test_forward_auth_refuses_webhook_routes() -> None:
    text = (
        FORWARD_AUTH
        + "  - {path: /hooks, access: webhook}\nwebhooks:\n  secrets: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"
    )
    [error] = [str(p) for p in parse_policy(text, "p.yaml", for_run=False, env={}).errors]
    assert "routes[1].access: a webhook route needs the request body" in error


def test_forward_auth_without_trusted_proxies_warns() -> None:
    text = FORWARD_AUTH.replace("trusted_proxies: [10.0.0.0/8]\n", "")
    result = parse_policy(text, "p.yaml", for_run=False, env={})
    assert result.errors == ()
    assert any("trusted_proxies" in str(p) and "forward-auth" in str(p) for p in result.warnings)


def test_the_command_line_mode_overrides_the_file() -> None:
    text = FORWARD_AUTH.replace("mode: forward-auth\n", "") + "upstream: http://127.0.0.1:3000\n"
    result = parse_policy(text, "p.yaml", for_run=False, env={}, mode="forward-auth")
    assert result.policy is not None
    assert result.policy.mode == "forward-auth"


def test_an_unknown_mode_is_an_error() -> None:
    text = FORWARD_AUTH.replace("mode: forward-auth", "mode: sidecar")
    errors = [str(p) for p in parse_policy(text, "p.yaml", for_run=False, env={}).errors]
    assert "p.yaml:1: mode: must be one of proxy, forward-auth, got a string ('sidecar')" in errors


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Host", "every HTTP/1.1 request has one"),
        ("content_length", "it frames the request body"),  # any spelling
        ("Transfer-Encoding", "it frames the request body"),
        ("Connection", "hop-by-hop"),
        ("Upgrade", "hop-by-hop"),
        ("Authorization", "every request would be signed out"),
        ("COOKIE", "every browser would be signed out"),
    ],
)
def test_strip_headers_refuses_what_the_engine_cannot_do_without(name: str, why: str) -> None:
    result = load(BASE + f"strip_headers: [X-Internal, {name}]\n")
    assert result.policy is None
    (problem,) = result.errors
    assert f"routes.yaml:6: strip_headers[1]: {name!r} cannot be stripped: " in str(problem)
    assert why in str(problem)


def test_strip_headers_may_name_headers_the_gateway_reads() -> None:
    """They are removed before the gateway reads them (headers.py), so listing them is
    meaningful: the gateway acts as if the client never sent them."""
    names = "[X-Request-Id, User-Agent, Traceparent, Tracestate, Expect, X-Forwarded-For]"
    result = load(BASE + f"strip_headers: {names}\n")
    assert result.errors == ()
    assert result.policy is not None
    assert result.policy.strip_headers == tuple(names[1:-1].split(", "))
