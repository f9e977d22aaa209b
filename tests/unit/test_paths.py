"""Path normalisation: the canonical path rules see and the upstream receives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.paths import fold_invariant, fold_path, normalise_path, normalise_target

AMBIGUOUS = None

CASES = [
    # (description, raw path, expected canonical path or AMBIGUOUS)
    ("root stays root", "/", "/"),
    ("plain path untouched", "/dashboard/settings", "/dashboard/settings"),
    ("trailing slash kept", "/x/", "/x/"),
    ("dot-dot climbs back into admin", "/admin/../admin", "/admin"),
    ("double slash collapsed", "//admin", "/admin"),
    ("many slashes collapsed", "///admin///x", "/admin/x"),
    ("encoded unreserved letter decoded", "/%61dmin", "/admin"),
    ("encoded tilde and digits decoded", "/%7Euser/%31", "/~user/1"),
    ("encoded dots are dot segments", "/x/%2E%2E/admin", "/admin"),
    ("lower-case encoded dots too", "/x/%2e%2e/admin", "/admin"),
    ("single dot removed", "/a/./b", "/a/b"),
    ("dot-dot at end leaves directory", "/a/b/..", "/a/"),
    ("dot at end leaves directory", "/a/b/.", "/a/b/"),
    ("double slash then a trailing slash keeps it", "/a//b/", "/a/b/"),
    ("trailing double slash keeps one", "/a//", "/a/"),
    ("dot-dot to the root", "/a/..", "/"),
    ("dot to the root", "/.", "/"),
    ("merge // before resolving .. (nginx order)", "/public//../admin/x", "/admin/x"),
    ("reserved escapes kept, hex upper-cased", "/a%3ab", "/a%3Ab"),
    ("encoded ! is not the same as !", "/%21x", "/%21x"),
    ("raw sub-delims allowed", "/a!$&'()*+,=:@b", "/a!$&'()*+,=:@b"),
    ("raw space percent-encoded", "/a b", "/a%20b"),
    ("valid UTF-8 escapes kept upper-case", "/caf%c3%a9", "/caf%C3%A9"),
    ("raw non-ASCII encoded", "/café", "/caf%C3%A9"),
    ("dot-prefixed names are not dot segments", "/.well-known/x", "/.well-known/x"),
    ("three dots is a name", "/a/.../b", "/a/.../b"),
    ("encoded slash refused", "/admin%2f", AMBIGUOUS),
    ("encoded slash upper refused", "/public/..%2Fadmin", AMBIGUOUS),
    ("encoded backslash refused", "/a%5cb", AMBIGUOUS),
    ("raw backslash refused", "/a\\b", AMBIGUOUS),
    ("NUL refused", "/a%00b", AMBIGUOUS),
    ("encoded control refused", "/a%0Ab", AMBIGUOUS),
    ("raw control refused", "/a\tb", AMBIGUOUS),
    ("DEL refused", "/a%7Fb", AMBIGUOUS),
    ("semicolon path parameter refused", "/admin;jsessionid=1", AMBIGUOUS),
    ("encoded semicolon refused", "/admin%3Bx", AMBIGUOUS),
    ("double-encoded escape refused", "/%2561dmin", AMBIGUOUS),
    ("double-encoded slash refused", "/a%252Fb", AMBIGUOUS),
    ("double encoding completed by a decoded letter refused", "/%25a%61", AMBIGUOUS),
    ("an encoded percent before non-hex is fine", "/100%25x", "/100%25x"),
    ("a lone percent refused", "/100%", AMBIGUOUS),
    ("bad hex refused", "/%zz", AMBIGUOUS),
    ("second hex digit bad refused", "/%4G", AMBIGUOUS),
    ("first hex digit bad refused", "/%G4", AMBIGUOUS),
    ("encoded underscore decoded (unreserved)", "/admin%5Fpanel", "/admin_panel"),
    ("encoded hyphen and dot decoded", "/a%2Db%2Ec", "/a-b.c"),
    ("encoded @ kept (reserved)", "/a%40b", "/a%40b"),
    ("last control character refused", "/a%1Fb", AMBIGUOUS),
    ("last control character in lower-case hex refused", "/a%1fb", AMBIGUOUS),
    ("raw last control character refused", "/a\x1fb", AMBIGUOUS),
    ("raw DEL refused", "/a\x7fb", AMBIGUOUS),
    ("space is the first character allowed encoded", "/a%20b", "/a%20b"),
    ("raw byte 0x80 and above encoded", "/\u0080", "/%C2%80"),
    ("truncated escape refused", "/a%4", AMBIGUOUS),
    ("invalid UTF-8 refused", "/%FF", AMBIGUOUS),
    ("overlong encoding of '.' refused", "/%C0%AE%C0%AE/admin", AMBIGUOUS),
    ("overlong encoding of '/' refused", "/a%C0%AFb", AMBIGUOUS),
    ("UTF-16 surrogate refused", "/%ED%A0%80", AMBIGUOUS),
    ("dot-dot above root refused", "/..", AMBIGUOUS),
    ("dot-dot above root after resolving refused", "/a/../../b", AMBIGUOUS),
    ("encoded dot-dot above root refused", "/%2e%2e/x", AMBIGUOUS),
    ("relative path refused", "admin", AMBIGUOUS),
    ("lone surrogate from a non-UTF-8 request line refused", "/a\udcffb", AMBIGUOUS),
]


@pytest.mark.parametrize(("description", "raw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_normalise_path(description: str, raw: str, expected: str | None) -> None:
    assert normalise_path(raw) == expected, description


TARGETS = [
    ("query kept byte for byte", "/a/../b?x=%2F;y&z=..", ("/b", "x=%2F;y&z=..", True)),
    ("empty query kept as present", "/x?", ("/x", "", True)),
    ("no query", "/x", ("/x", "", False)),
    ("absolute form refused", "http://evil/admin", None),
    ("asterisk form refused", "*", None),
    ("fragment refused", "/x#frag", None),
    ("ambiguous path refused even with a query", "/a%2fb?x", None),
]


@pytest.mark.parametrize(("description", "raw", "expected"), TARGETS, ids=[c[0] for c in TARGETS])
def test_normalise_target(
    description: str, raw: str, expected: tuple[str, str, bool] | None
) -> None:
    target = normalise_target(raw)
    if expected is None:
        assert target is None, description
    else:
        assert target is not None
        assert (target.path, target.query, target.has_query) == expected, description


# ---- folding: how a case-insensitive server (IIS, Express by default) reads a path --------

FOLDS = [
    # (description, normalised path, folded, folding cannot change it)
    ("lower case stays", "/admin/x", "/admin/x", True),
    ("a dot inside a segment stays", "/v1.2/a.b", "/v1.2/a.b", True),
    ("a leading dot stays", "/.well-known/x", "/.well-known/x", True),
    ("upper case lowered", "/ADMIN/X", "/admin/x", False),
    ("a trailing dot dropped", "/admin./x", "/admin/x", False),
    ("a trailing dot at the end dropped", "/admin.", "/admin", False),
    ("a trailing space dropped", "/admin%20/x", "/admin/x", False),
    ("trailing dots and spaces of each segment", "/a.%20/b./c", "/a/b/c", False),
    ("a leading dot kept while folding", "/.A", "/.a", False),
    ("escapes keep upper-case hex", "/%C3%89", "/%C3%A9", False),
    ("an encoded percent stays encoded", "/A%25", "/a%25", False),
    ("sub-delims stay raw", "/A!$&'()*+,=:@~_-", "/a!$&'()*+,=:@~_-", False),
    ("an escape that folding leaves alone", "/a%20b", "/a%20b", False),
    ("an escape that is not UTF-8 survives folding", "/A%FF", "/a%FF", False),
]


@pytest.mark.parametrize(
    ("description", "path", "folded", "invariant"), FOLDS, ids=[c[0] for c in FOLDS]
)
def test_fold_path(description: str, path: str, folded: str, invariant: bool) -> None:
    assert fold_invariant(path) is invariant, description
    assert fold_path(path) == folded, description
    assert fold_path(folded) == folded  # a fixed point


PATH_CHARS = st.sampled_from(
    [
        "a",
        "b",
        "A",
        "z",
        "0",
        "-",
        "_",
        "~",
        ".",
        "..",
        "/",
        "//",
        "%2e",
        "%2E",
        "%61",
        "%41",
        "%2F",
        "%2f",
        "%5C",
        "%00",
        "%25",
        "%3B",
        "%3a",
        "%C3%A9",
        "%ff",
        "é",
        " ",
        ";",
        "\\",
        "!",
        "*",
        "@",
        ":",
        "%",
    ]
)
PATHS = st.lists(PATH_CHARS, max_size=14).map(lambda parts: "/" + "".join(parts))


@given(PATHS)
def test_normalisation_is_idempotent(path: str) -> None:
    once = normalise_path(path)
    if once is not None:
        assert normalise_path(once) == once


@given(PATHS)
def test_normalised_paths_have_no_dot_segments_or_empty_segments(path: str) -> None:
    once = normalise_path(path)
    if once is not None:
        segments = once.split("/")[1:]
        assert ".." not in segments
        assert "." not in segments
        assert "" not in segments[:-1], once
        assert "%2F" not in once.upper()
        assert ";" not in once
        assert "\\" not in once
