"""Route matching: patterns, methods, hosts, first match wins, default for the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.decision import Access
from gateway.paths import fold_path, normalise_path
from gateway.routes import (
    AMBIGUOUS,
    Ambiguous,
    HostPattern,
    PatternError,
    PatternKind,
    Route,
    RouteTable,
    compile_pattern,
    host_without_port,
    regex_matches_nothing,
    shadowing_route,
    valid_authority,
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
    ("regex alternation of two prefixes", "regex:/a/x|/b/y", "/b/y", True),
    ("regex with an anchor", "regex:^/api/x", "/api/x", True),
    ("regex optional character", "regex:/ab?c", "/ac", True),
    ("regex counted repetition", "regex:/ab{0,1}c", "/ac", True),
    ("regex star after a literal", "regex:/ab*c", "/ac", True),
    ("regex is case-sensitive by default", "regex:/(A|B)pi", "/api", False),
    ("glob is case-sensitive after a star", "/*/Admin", "/x/admin", False),
    ("glob with capitals matches as written", "/Admin/**", "/Admin/x", True),
    ("exact with capitals matches as written", "/Admin", "/Admin", True),
    ("literal dots are not regex dots in globs", "/file.txt", "/fileXtxt", False),
    ("matching is case-sensitive by default", "/Admin/**", "/admin", False),
]


@pytest.mark.parametrize(
    ("description", "pattern", "path", "matches"), PATTERN_CASES, ids=[c[0] for c in PATTERN_CASES]
)
def test_pattern(description: str, pattern: str, path: str, matches: bool) -> None:
    assert compile_pattern(pattern).matches(path) is matches, description


CASE_INSENSITIVE = [
    # (description, pattern, path as the table hands it over: already lower-cased)
    ("exact", "/Admin", "/admin"),
    ("glob", "/Admin/**", "/admin/x"),
    ("glob after a star", "/*/Admin", "/x/admin"),
    ("regex", "regex:/Api/.*", "/api/x"),
    ("regex without a literal prefix", "regex:/(A|B)pi", "/api"),
]


@pytest.mark.parametrize(
    ("description", "pattern", "path"), CASE_INSENSITIVE, ids=[c[0] for c in CASE_INSENSITIVE]
)
def test_case_insensitive_pattern(description: str, pattern: str, path: str) -> None:
    assert compile_pattern(pattern, case_insensitive=True).matches(path), description


def _shape(pattern: str, case_insensitive: bool = False) -> tuple[object, ...]:
    p = compile_pattern(pattern, case_insensitive=case_insensitive)
    tokens = tuple(t if isinstance(t, str) else t.value for t in p.tokens)
    return (p.source, p.kind, p.prefix, tokens, p.case_insensitive, p.regex is None)


COMPILED = [
    # (description, pattern, case-insensitive, (source, kind, prefix, tokens, ci, no regex))
    (
        "exact",
        "/a/B",
        False,
        ("/a/B", PatternKind.EXACT, "/a/B", ("a", "B"), False, True),
    ),
    (
        "exact, case-insensitive",
        "/a/B",
        True,
        ("/a/B", PatternKind.EXACT, "/a/b", ("a", "B"), True, True),
    ),
    (
        "glob",
        "/A/*/c/**",
        False,
        ("/A/*/c/**", PatternKind.GLOB, "/A/", ("A", "*", "c", "**"), False, False),
    ),
    (
        "glob, case-insensitive",
        "/A/**",
        True,
        ("/A/**", PatternKind.GLOB, "/a", ("A", "**"), True, False),
    ),
    (
        "regex",
        "regex:/Api/v[0-9]+",
        False,
        ("regex:/Api/v[0-9]+", PatternKind.REGEX, "/Api/v", (), False, False),
    ),
    (
        "regex, case-insensitive",
        "regex:/Api/v[0-9]+",
        True,
        ("regex:/Api/v[0-9]+", PatternKind.REGEX, "/api/v", (), True, False),
    ),
]


@pytest.mark.parametrize(
    ("description", "pattern", "ci", "shape"), COMPILED, ids=[c[0] for c in COMPILED]
)
def test_compiled_pattern(
    description: str, pattern: str, ci: bool, shape: tuple[object, ...]
) -> None:
    assert _shape(pattern, ci) == shape, description


REGEX_PREFIXES = [
    # (description, regex, the literal prefix every match starts with)
    ("all literal", "/exact", "/exact"),
    ("up to a character class", "/api/v[0-9]+", "/api/v"),
    ("up to a trailing wildcard", "/api/.*", "/api/"),
    ("a leading anchor is skipped", "^/api/x", "/api/x"),
    ("the character before '?' is optional", "/ab?c", "/a"),
    ("the character before '*' is optional", "/ab*", "/a"),
    ("the character before '+' is left out", "/ab+", "/a"),
    ("the character before '{' is optional", "/ab{0,1}c", "/a"),
    ("up to a group", "/api/(x|y)", ""),
    ("a group without alternation", "/api/(x)", "/api/"),
    ("an escape ends the prefix", "/a\\.b", "/a"),
    ("alternation at the top: no prefix", "/a/x|/b/y", ""),
    ("an optional first character", "x*/y", ""),
]


@pytest.mark.parametrize(
    ("description", "regex", "prefix"), REGEX_PREFIXES, ids=[c[0] for c in REGEX_PREFIXES]
)
def test_regex_literal_prefix(description: str, regex: str, prefix: str) -> None:
    assert compile_pattern("regex:" + regex).prefix == prefix, description


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
    ("partial-segment star, the advice", "/a/b*", "use 'regex:' for partial matches"),
]


@pytest.mark.parametrize(
    ("description", "pattern", "message"), BAD_PATTERNS, ids=[c[0] for c in BAD_PATTERNS]
)
def test_bad_patterns(description: str, pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message.replace("(", r"\(").replace("*", r"\*")):
        compile_pattern(pattern)


def test_a_partial_star_is_refused_with_advice() -> None:
    with pytest.raises(PatternError) as refused:
        compile_pattern("/files/*.txt")
    assert str(refused.value) == (
        "'*' and '**' must be whole segments (in '/files/*.txt'); use 'regex:' for partial matches"
    )


def test_a_pattern_above_the_root_gets_no_hint() -> None:
    with pytest.raises(PatternError) as refused:
        compile_pattern("/../a")
    assert str(refused.value) == (
        "pattern '/../a' is not a normalised path, so no request could match it"
    )


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


HOSTS = [
    # (description, Host header, host)
    ("a port dropped, lower-cased", "Example.COM:8080", "example.com"),
    ("an IPv6 literal with a port", "[::1]:8080", "[::1]"),
    ("a bare name", "host", "host"),
    ("spaces around", " app.example.com ", "app.example.com"),
    ("an IPv6 literal without its bracket", "[::1", "[::1"),
    ("an IPv6 literal ends at its first bracket", "[::1]]:80", "[::1]"),
]


@pytest.mark.parametrize(("description", "raw", "expected"), HOSTS, ids=[c[0] for c in HOSTS])
def test_host_without_port(description: str, raw: str, expected: str) -> None:
    assert host_without_port(raw) == expected, description


HOST_PATTERNS = [
    # (description, host pattern, request host, matches)
    ("an exact host", "app.example.com", "app.example.com", True),
    ("an exact host in capitals", "App.Example.COM", "app.example.com", True),
    ("an exact host does not match a subdomain", "app.example.com", "x.app.example.com", False),
    ("a wildcard matches a subdomain", "*.example.com", "acme.example.com", True),
    ("a wildcard matches a deeper subdomain", "*.Example.com", "a.b.example.com", True),
    ("a wildcard does not match the apex", "*.example.com", "example.com", False),
    ("a wildcard does not match the bare suffix", "*.example.com", ".example.com", False),
    ("a wildcard does not match a look-alike", "*.example.com", "evilexample.com", False),
]


@pytest.mark.parametrize(
    ("description", "pattern", "host", "matches"),
    HOST_PATTERNS,
    ids=[c[0] for c in HOST_PATTERNS],
)
def test_host_pattern(description: str, pattern: str, host: str, matches: bool) -> None:
    parsed = HostPattern.parse(pattern)
    assert parsed.matches(host) is matches, description
    assert parsed.source == pattern.lower()  # as config lints and explain show it


HOST_COVERS = [
    # (description, earlier host pattern, later host pattern, every later host matches earlier)
    ("the same host", "a.example.com", "A.example.com", True),
    ("another host", "a.example.com", "b.example.com", False),
    ("a host does not cover a wildcard", "a.example.com", "*.example.com", False),
    ("a wildcard covers its subdomain", "*.example.com", "a.example.com", True),
    ("a wildcard does not cover its apex", "*.example.com", "example.com", False),
    ("a wildcard covers a deeper wildcard", "*.example.com", "*.a.example.com", True),
    ("a deeper wildcard does not cover a wider one", "*.a.example.com", "*.example.com", False),
]


@pytest.mark.parametrize(
    ("description", "earlier", "later", "covers"), HOST_COVERS, ids=[c[0] for c in HOST_COVERS]
)
def test_host_pattern_covers(description: str, earlier: str, later: str, covers: bool) -> None:
    assert HostPattern.parse(earlier).covers(HostPattern.parse(later)) is covers, description


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


# ---- tables built inside the test (nothing computed at import) ----------------------------

TABLES = [
    # (description, routes as (paths, methods, host), case_insensitive, method, host, path,
    #  route index, or None for the default, or "ambiguous")
    ("a table of plain globs", [(["/admin/**"], None, None)], None, "GET", "h", "/admin/x", 0),
    ("a plain table, no match", [(["/admin/**"], None, None)], None, "GET", "h", "/x", None),
    (
        "a plain table still refuses another spelling",
        [(["/admin/**"], None, None)],
        None,
        "GET",
        "h",
        "/ADMIN/x",
        "ambiguous",
    ),
    (
        "a table whose only pattern has capitals refuses the lower-case spelling",
        [(["/Docs/**"], None, None)],
        None,
        "GET",
        "h",
        "/docs/a",
        "ambiguous",
    ),
    (
        "a pattern with a trailing dot is read as IIS reads it",
        [(["/a./**"], None, None)],
        None,
        "GET",
        "h",
        "/a/x",
        "ambiguous",
    ),
    (
        "folding: a method-bound route by its method",
        [(["/hooks/**"], ["POST"], None)],
        True,
        "POST",
        "h",
        "/HOOKS/x",
        0,
    ),
    (
        "folding: a method-bound route by another method",
        [(["/hooks/**"], ["POST"], None)],
        True,
        "GET",
        "h",
        "/HOOKS/x",
        None,
    ),
    (
        "folding: a host-bound route on its host",
        [(["/r/**"], None, "*.example.com")],
        True,
        "GET",
        "a.example.com",
        "/R/x",
        0,
    ),
    (
        "folding: no route matches",
        [(["/a/**"], None, None), (["/b/**"], None, None)],
        True,
        "GET",
        "h",
        "/C",
        None,
    ),
    (
        "folding: a regex with capitals",
        [(["regex:/API/v[0-9]+"], None, None)],
        True,
        "GET",
        "h",
        "/api/v1",
        0,
    ),
    (
        "folding: a glob with a trailing dot",
        [(["/a./**"], None, None)],
        True,
        "GET",
        "h",
        "/A/x",
        0,
    ),
    (
        "folding: a pattern folding cannot keep normalised is passed over",
        [(["/.../x"], None, None), (["/y/**"], None, None)],
        True,
        "GET",
        "h",
        "/Y/z",
        1,
    ),
    (
        "...and under the unset default too",
        [(["/.../x"], None, None), (["/y/**"], None, None)],
        None,
        "GET",
        "h",
        "/Y/z",
        "ambiguous",
    ),
]


@pytest.mark.parametrize(
    ("description", "spec", "ci", "method", "host", "path", "expected"),
    TABLES,
    ids=[c[0] for c in TABLES],
)
def test_table(
    description: str,
    spec: list[tuple[list[str], list[str] | None, str | None]],
    ci: bool | None,
    method: str,
    host: str,
    path: str,
    expected: int | str | None,
) -> None:
    routes = tuple(
        _route(
            i,
            paths,
            Access.PROTECTED,
            methods=frozenset(methods) if methods else None,
            host=HostPattern.parse(host_pattern) if host_pattern else None,
        )
        for i, (paths, methods, host_pattern) in enumerate(spec)
    )
    found = RouteTable(routes, case_insensitive=ci).match(method, host, path)
    if isinstance(found, Route):
        assert found is routes[found.index]  # the route as written
        got: int | str | None = found.index
    else:
        got = "ambiguous" if found is AMBIGUOUS else found
    assert got == expected, description


def test_ambiguous_reads_as_such() -> None:
    assert repr(AMBIGUOUS) == "AMBIGUOUS"


# ---- lints: routes that can never match -------------------------------------------------

Spec = tuple[list[str], list[str] | None, str | None]

SHADOWS: list[tuple[str, list[Spec], Spec, int | None]] = [
    # (description, earlier routes, the later route, index of the shadowing route or None)
    ("a catch-all shadows everything", [(["/**"], None, None)], (["/admin/**"], None, None), 0),
    (
        "a wider glob shadows a narrower one",
        [(["/admin/**"], None, None)],
        (["/admin/users/*"], None, None),
        0,
    ),
    (
        "a star does not cover a double star",
        [(["/a/*"], None, None)],
        (["/a/**"], None, None),
        None,
    ),
    ("a star covers a star", [(["/a/*"], None, None)], (["/a/*"], None, None), 0),
    ("a star covers a literal segment", [(["/a/*"], None, None)], (["/a/b"], None, None), 0),
    ("a double star covers nothing more", [(["/a/**"], None, None)], (["/a"], None, None), 0),
    ("a double star in the middle", [(["/a/**/z"], None, None)], (["/a/b/*/z"], None, None), 0),
    ("a literal differs", [(["/a/b/*"], None, None)], (["/a/c/*"], None, None), None),
    (
        "a glob is not covered by a shorter one",
        [(["/a/*"], None, None)],
        (["/a/*/*"], None, None),
        None,
    ),
    (
        "a longer glob does not cover a shorter one",
        [(["/a/*/*"], None, None)],
        (["/a/*"], None, None),
        None,
    ),
    ("an exact path under a glob", [(["/admin/**"], None, None)], (["/admin/x"], None, None), 0),
    (
        "a sibling is not shadowed",
        [(["/admin/**"], None, None)],
        (["/public/**"], None, None),
        None,
    ),
    (
        "a regex covers an exact path it matches",
        [(["regex:/a.*"], None, None)],
        (["/abc"], None, None),
        0,
    ),
    (
        "regexes are not compared",
        [(["regex:/a.*"], None, None)],
        (["regex:/a/b"], None, None),
        None,
    ),
    (
        "a glob is not compared with a regex",
        [(["/**"], None, None)],
        (["regex:/x.*"], None, None),
        None,
    ),
    (
        "a regex is not compared with a glob",
        [(["regex:/.*"], None, None)],
        (["/x/**"], None, None),
        None,
    ),
    (
        "case-insensitive globs compare folded",
        [(["/Admin/**"], None, None)],
        (["/admin/x/*"], None, None),
        "ci",
    ),
    (
        "case-sensitive globs do not",
        [(["/Admin/**"], None, None)],
        (["/admin/x/*"], None, None),
        None,
    ),
    (
        "every pattern of the later route must be covered",
        [(["/a/**"], None, None)],
        (["/a/x", "/b"], None, None),
        None,
    ),
    (
        "...by any pattern of the earlier one",
        [(["/a/**", "/b"], None, None)],
        (["/a/x", "/b"], None, None),
        0,
    ),
    (
        "a GET route does not shadow every method",
        [(["/**"], ["GET"], None)],
        (["/a"], None, None),
        None,
    ),
    ("every method shadows a GET route", [(["/**"], None, None)], (["/a"], ["GET"], None), 0),
    ("GET and POST cover GET", [(["/**"], ["GET", "POST"], None)], (["/a"], ["GET"], None), 0),
    ("the same methods", [(["/**"], ["GET"], None)], (["/a"], ["GET"], None), 0),
    (
        "GET does not cover GET and POST",
        [(["/**"], ["GET"], None)],
        (["/a"], ["GET", "POST"], None),
        None,
    ),
    (
        "a route on one host does not shadow every host",
        [(["/**"], None, "a.example.com")],
        (["/a"], None, None),
        None,
    ),
    ("every host shadows one host", [(["/**"], None, None)], (["/a"], None, "a.example.com"), 0),
    (
        "a wildcard host shadows a subdomain",
        [(["/**"], None, "*.example.com")],
        (["/a"], None, "a.example.com"),
        0,
    ),
    (
        "another host does not shadow",
        [(["/**"], None, "a.example.com")],
        (["/a"], None, "b.example.com"),
        None,
    ),
    (
        "a route of other methods is passed over for a later one that shadows",
        [(["/**"], ["POST"], None), (["/**"], None, None)],
        (["/a"], ["GET"], None),
        1,
    ),
    (
        "a route of another host is passed over for a later one that shadows",
        [(["/**"], None, "b.example.com"), (["/**"], None, None)],
        (["/a"], None, "a.example.com"),
        1,
    ),
]


@pytest.mark.parametrize(
    ("description", "earlier", "later", "expected"), SHADOWS, ids=[c[0] for c in SHADOWS]
)
def test_shadowing_route(
    description: str, earlier: list[Spec], later: Spec, expected: int | str | None
) -> None:
    ci = expected == "ci"

    def make(index: int, spec: Spec) -> Route:
        paths, methods, host = spec
        patterns = tuple(compile_pattern(p, case_insensitive=ci) for p in paths)
        return Route(
            index,
            patterns,
            Access.PROTECTED,
            methods=frozenset(methods) if methods else None,
            host=HostPattern.parse(host) if host else None,
        )

    routes = [make(i, spec) for i, spec in enumerate([*earlier, later])]
    found = shadowing_route(routes, routes[-1])
    assert (found.index if found else None) == (0 if ci else expected), description


def test_a_route_does_not_shadow_itself_or_later_routes() -> None:
    routes = [_route(0, ["/a"], Access.PUBLIC), _route(1, ["/**"], Access.PUBLIC)]
    assert shadowing_route(routes, routes[0]) is None


UNMATCHABLE = [
    # (description, pattern, why it matches nothing, or None)
    ("a glob is not judged", "/a/**", None),
    ("a regex without a literal prefix", "regex:.*", None),
    ("a regex under a path", "regex:/ok/.*", None),
    (
        "a regex without the leading slash",
        "regex:api/.*",
        "every match starts with 'api/', but request paths start with '/'",
    ),
    (
        "a double slash",
        "regex:/a//b.*",
        "every match contains '//', which normalised paths never do",
    ),
    ("an escaped dot ends the literal prefix, so it is not judged", "regex:/a/\\./b", None),
    ("a '.' is any character, so it is not judged", "regex:/a/./b.*", None),
    ("a semicolon", "regex:/a;b.*", "every match contains ';', which normalised paths never do"),
    ("a backslash", "regex:/a\\\\b.*", None),
]


@pytest.mark.parametrize(
    ("description", "pattern", "why"), UNMATCHABLE, ids=[c[0] for c in UNMATCHABLE]
)
def test_regex_matches_nothing(description: str, pattern: str, why: str | None) -> None:
    assert regex_matches_nothing(compile_pattern(pattern)) == why, description


AUTHORITIES = [
    # (description, Host value, valid)
    ("a name", "app.example.com", True),
    ("a name and a port", "app.example.com:8443", True),
    ("an IPv4 address", "127.0.0.1", True),
    ("an IPv6 literal with a port", "[::1]:8080", True),
    ("an IPv6 literal with a zone", "[fe80::1%25eth0]", True),
    ("sub-delims and unreserved characters", "a-b_c.d~e!$&'()*+,;=", True),
    ("a percent-encoded name", "caf%C3%A9.example", True),
    ("empty (HTTP/1.0, or an absolute-form target)", "", True),
    ("a colon and no port", "app:", True),
    ("an unclosed bracket", "[oops", False),
    ("a closing bracket alone", "a]b", False),
    ("a space", "a b", False),
    ("userinfo", "user@app.example.com", False),
    ("a path", "app.example.com/x", False),
    ("a port that is not digits", "app.example.com:80a", False),
    ("two ports", "app:80:81", False),
    ("a bracketed name with a slash", "[a/b]", False),
    ("a backslash", "app\\x", False),
    ("a quote", 'app"x', False),
    ("a non-ASCII byte", "caf\xe9", False),
]


@pytest.mark.parametrize(
    ("description", "host", "valid"), AUTHORITIES, ids=[a[0] for a in AUTHORITIES]
)
def test_a_host_is_an_authority_or_a_400(description: str, host: str, valid: bool) -> None:
    """RFC 9110 7.2 / RFC 3986 3.2.2: what may stand in Host (the rest is a 400)."""
    assert valid_authority(host) is valid, description
