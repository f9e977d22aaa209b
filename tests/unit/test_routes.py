"""Route matching: patterns, methods, hosts, first match wins, default for the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.decision import Access
from gateway.paths import fold_path, normalise_path
from gateway.routes import (
    Ambiguous,
    HostPattern,
    PatternError,
    Route,
    RouteTable,
    compile_pattern,
    host_without_port,
)

PATTERN_CASES = [
    # (description, pattern, path, matches)
    ("exact matches itself", "/dashboard", "/dashboard", True),
    ("exact does not match a trailing slash", "/x", "/x/", False),
    ("exact does not match a child", "/x", "/x/y", False),
    ("exact root", "/", "/", True),
    ("star matches one segment", "/api/*/items", "/api/v1/items", True),
    ("star does not match two segments", "/api/*/items", "/api/v1/v2/items", False),
    ("star does not match an empty segment", "/api/*", "/api/", False),
    ("double star matches the bare prefix", "/x/**", "/x", True),
    ("double star matches the prefix with slash", "/x/**", "/x/", True),
    ("double star matches any depth", "/x/**", "/x/a/b/c", True),
    ("double star does not match a sibling name", "/x/**", "/xy", False),
    ("double star in the middle matches zero segments", "/a/**/b", "/a/b", True),
    ("double star in the middle matches several", "/a/**/b", "/a/1/2/b", True),
    ("root double star matches everything", "/**", "/anything/at/all", True),
    ("regex is a full match", "regex:/api/v[0-9]+/users", "/api/v2/users", True),
    ("regex does not match a prefix only", "regex:/api/v[0-9]+", "/api/v2/users", False),
    ("regex with alternation", "regex:/(a|b)/x", "/b/x", True),
    ("literal dots are not regex dots in globs", "/file.txt", "/fileXtxt", False),
    ("matching is case-sensitive by default", "/Admin/**", "/admin", False),
]


@pytest.mark.parametrize(
    ("description", "pattern", "path", "matches"), PATTERN_CASES, ids=[c[0] for c in PATTERN_CASES]
)
def test_pattern(description: str, pattern: str, path: str, matches: bool) -> None:
    assert compile_pattern(pattern).matches(path) is matches, description


def test_case_insensitive_patterns_fold_both_sides() -> None:
    pattern = compile_pattern("/Admin/**", case_insensitive=True)
    table = RouteTable((Route(0, (pattern,), Access.ADMIN),), case_insensitive=True)
    assert table.match("GET", "h", "/ADMIN/x") is not None
    assert table.match("GET", "h", "/admin") is not None


BAD_PATTERNS = [
    ("no leading slash", "admin/**", "must start with '/'"),
    ("partial-segment star", "/files/*.txt", "whole segments"),
    ("dot-dot in a pattern", "/a/../b", "not a normalised path"),
    ("double slash in a pattern", "/a//b", "write it as '/a/b'"),
    ("encoded unreserved in a pattern", "/%61dmin", "write it as '/admin'"),
    ("regex that does not compile", "regex:/a(b", "does not compile"),
]


@pytest.mark.parametrize(
    ("description", "pattern", "message"), BAD_PATTERNS, ids=[c[0] for c in BAD_PATTERNS]
)
def test_bad_patterns(description: str, pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message.replace("(", r"\(").replace("*", r"\*")):
        compile_pattern(pattern)


def _route(index: int, paths: list[str], access: Access, **kw: object) -> Route:
    return Route(index, tuple(compile_pattern(p) for p in paths), access, **kw)  # type: ignore[arg-type]


TABLE = RouteTable(
    (
        _route(0, ["/", "/sign-in/**"], Access.PUBLIC),
        _route(1, ["/api/webhooks/clerk"], Access.WEBHOOK, methods=frozenset(["POST"])),
        _route(2, ["/admin/**"], Access.ADMIN),
        _route(3, ["/reports/**"], Access.PROTECTED, host=HostPattern.parse("reports.example.com")),
        _route(4, ["/tenants/**"], Access.PROTECTED, host=HostPattern.parse("*.example.com")),
        _route(5, ["/**"], Access.DENY, methods=frozenset(["DELETE"])),
        _route(6, ["/dashboard/**", "regex:/api/v[0-9]+/.*"], Access.PROTECTED),
    )
)

MATCH_CASES = [
    # (description, method, host, path, expected route index or None for the default)
    ("public root", "GET", "app", "/", 0),
    ("sign-in pages", "GET", "app", "/sign-in/factor-one", 0),
    ("webhook by POST", "POST", "app", "/api/webhooks/clerk", 1),
    ("webhook path by GET falls to the default", "GET", "app", "/api/webhooks/clerk", None),
    ("admin area", "GET", "app", "/admin/users", 2),
    ("host-bound route on its host", "GET", "reports.example.com", "/reports/q1", 3),
    ("host-bound route on another host", "GET", "app.example.com", "/reports/q1", None),
    ("wildcard host matches a subdomain", "GET", "acme.example.com", "/tenants/1", 4),
    ("wildcard host does not match the apex", "GET", "example.com", "/tenants/1", None),
    ("wildcard host does not match a look-alike", "GET", "evilexample.com", "/tenants/1", None),
    ("first match wins over later routes", "DELETE", "app", "/admin/x", 2),
    ("method-only catch-all", "DELETE", "app", "/dashboard/x", 5),
    ("second pattern of a route", "GET", "app", "/api/v2/users", 6),
    ("unmatched path gets the default", "GET", "app", "/nowhere", None),
]


@pytest.mark.parametrize(
    ("description", "method", "host", "path", "expected"),
    MATCH_CASES,
    ids=[c[0] for c in MATCH_CASES],
)
def test_first_match_wins(
    description: str, method: str, host: str, path: str, expected: int | None
) -> None:
    route = TABLE.match(method, host, path)
    assert (route.index if route else None) == expected, description


ADVERSARIAL = [
    ("dot-dot back into admin", "/public/../admin/x"),
    ("double slash", "//admin/x"),
    ("encoded letter", "/%61dmin/x"),
    ("encoded dots", "/public/%2e%2e/admin/x"),
    ("dot segment", "/./admin/x"),
    ("merge then resolve", "/public//../admin/x"),
]


@pytest.mark.parametrize(("description", "raw"), ADVERSARIAL, ids=[c[0] for c in ADVERSARIAL])
def test_adversarial_paths_reach_the_admin_route(description: str, raw: str) -> None:
    path = normalise_path(raw)
    assert path == "/admin/x", description
    route = TABLE.match("GET", "app", path)
    assert route is not None
    assert route.access is Access.ADMIN


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Example.COM:8080", "example.com"), ("[::1]:8080", "[::1]"), ("host", "host")],
)
def test_host_without_port(raw: str, expected: str) -> None:
    assert host_without_port(raw) == expected


SEGMENTS = st.sampled_from(["admin", "a", "x", "sign-in", "..", ".", "", "%61dmin", "%2e%2e"])


@given(st.lists(SEGMENTS, max_size=8), st.sampled_from(["GET", "POST", "DELETE"]))
def test_a_path_matches_like_its_normalised_form(segments: list[str], method: str) -> None:
    raw = "/" + "/".join(segments)
    normal = normalise_path(raw)
    if normal is None:
        return
    first = TABLE.match(method, "app", normal)
    again = TABLE.match(method, "app", normalise_path(normal) or "")
    assert first == again


# ---- folding: paths a case-insensitive upstream reads as another route --------------------

FOLD_TABLE = [
    _route(0, ["/admin/**"], Access.ADMIN),
    _route(1, ["/public/**", "/Docs/**"], Access.PUBLIC),
    _route(2, ["/internal/**"], Access.DENY),
    _route(3, ["regex:/api/v[0-9]+/x"], Access.PUBLIC),
]

FOLD_CASES = [
    # (description, path, route index exactly, under the unset default)
    ("upper case of an admin path", "/ADMIN/x", None, "ambiguous"),
    ("mixed case", "/Admin/x", None, "ambiguous"),
    ("a trailing dot IIS strips", "/admin./x", None, "ambiguous"),
    ("a trailing space IIS strips", "/admin%20/x", None, "ambiguous"),
    ("dots and spaces together", "/admin.%20./x", None, "ambiguous"),
    ("the bare deny prefix upper-cased", "/INTERNAL", None, "ambiguous"),
    ("case inside a public route stays public", "/public/MyDoc.pdf", 1, 1),
    ("a dot inside a segment is not trailing", "/public/v1.2/", 1, 1),
    ("a pattern with capitals, spelled as written", "/Docs/a", 1, 1),
    ("...and spelled otherwise folds to the same route", "/docs/a", None, "ambiguous"),
    ("no route either way", "/elsewhere/X", None, None),
    ("a regex route, exact", "/api/v1/x", 3, 3),
    ("a regex route, upper-cased: the regex folds too", "/API/v1/X", None, "ambiguous"),
    ("non-ASCII case folds", "/%C3%89COLE", None, None),
]


@pytest.mark.parametrize(
    ("description", "path", "exact", "default"), FOLD_CASES, ids=[c[0] for c in FOLD_CASES]
)
def test_folded_spellings(
    description: str, path: str, exact: int | None, default: int | str | None
) -> None:
    def index(found: object) -> int | str | None:
        if isinstance(found, Route):
            return found.index
        return None if found is None else "ambiguous"

    routes = tuple(FOLD_TABLE)
    assert index(RouteTable(routes).match("GET", "h", path)) == default, description
    assert index(RouteTable(routes, case_insensitive=False).match("GET", "h", path)) == exact
    folding = RouteTable(routes, case_insensitive=True).match("GET", "h", path)
    assert not isinstance(folding, Ambiguous)  # folding decides, it never refuses


def test_folding_matches_the_folded_route() -> None:
    table = RouteTable(tuple(FOLD_TABLE), case_insensitive=True)
    for path in ("/ADMIN/x", "/admin./x", "/admin%20/x"):
        found = table.match("GET", "h", path)
        assert isinstance(found, Route)
        assert found.index == 0
        assert found is FOLD_TABLE[0]  # the route as written, for labels and explain


FOLD_PATHS = [
    ("lower-cased", "/ADMIN/X", "/admin/x"),
    ("trailing dots and spaces of each segment", "/a.%20/b./c", "/a/b/c"),
    ("escapes keep upper-case hex", "/%C3%89", "/%C3%A9"),
    ("already folded", "/x/y.z", "/x/y.z"),
]


@pytest.mark.parametrize(
    ("description", "path", "folded"), FOLD_PATHS, ids=[c[0] for c in FOLD_PATHS]
)
def test_fold_path(description: str, path: str, folded: str) -> None:
    assert fold_path(path) == folded, description
    assert fold_path(folded) == folded  # a fixed point
