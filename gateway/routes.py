"""Compiled route table: first match wins, unmatched requests get the policy default.

Patterns are compiled once at load. `RouteTable.match` is pure and cheap: a method set
lookup, a host suffix test, then for each path pattern a literal-prefix test that rules
most routes out before any regular expression runs.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Final

from gateway.decision import Access
from gateway.paths import fold_invariant, fold_path, normalise_path


class PatternKind(enum.Enum):
    EXACT = "exact"
    GLOB = "glob"
    REGEX = "regex"


class _Wild(enum.Enum):
    STAR = "*"
    DSTAR = "**"


Token = str | _Wild


class PatternError(ValueError):
    """A path pattern that cannot be compiled; the message is shown to the operator."""


@dataclass(frozen=True, slots=True)
class PathPattern:
    source: str
    kind: PatternKind
    prefix: str  # every matching (case-folded when insensitive) path starts with this
    regex: re.Pattern[str] | None
    tokens: tuple[Token, ...] = ()
    case_insensitive: bool = False

    def matches(self, key: str) -> bool:
        """`key` is the normalised path, already lower-cased when case-insensitive."""
        if self.kind is PatternKind.EXACT:
            return key == self.prefix
        if not key.startswith(self.prefix):
            return False
        assert self.regex is not None
        return self.regex.fullmatch(key) is not None


REGEX_PREFIX = "regex:"


def compile_pattern(source: str, *, case_insensitive: bool = False) -> PathPattern:
    """Compile one `path:` entry; raises PatternError with an operator-facing message."""
    if source.startswith(REGEX_PREFIX):
        body = source[len(REGEX_PREFIX) :]
        flags = re.IGNORECASE if case_insensitive else 0
        try:
            regex = re.compile(body, flags)
        except re.error as exc:
            raise PatternError(f"regular expression does not compile: {exc}") from None
        prefix = _regex_literal_prefix(body)
        if case_insensitive:
            prefix = prefix.lower()
        return PathPattern(source, PatternKind.REGEX, prefix, regex, (), case_insensitive)
    if not source.startswith("/"):
        raise PatternError(f"a path pattern must start with '/' (or 'regex:'), got {source!r}")
    tokens = _tokens(source)
    fold = str.lower if case_insensitive else str
    if not any(isinstance(t, _Wild) for t in tokens):
        return PathPattern(source, PatternKind.EXACT, fold(source), None, tokens, case_insensitive)
    prefix_parts: list[str] = []
    for token in tokens:
        if isinstance(token, _Wild):
            if token is _Wild.STAR:
                prefix_parts.append("/")
            break
        prefix_parts.append("/" + token)
    regex_src = "".join(_token_regex(t) for t in tokens)
    flags = re.IGNORECASE if case_insensitive else 0
    return PathPattern(
        source,
        PatternKind.GLOB,
        fold("".join(prefix_parts)),
        re.compile(regex_src, flags),
        tokens,
        case_insensitive,
    )


def _tokens(source: str) -> tuple[Token, ...]:
    tokens: list[Token] = []
    for segment in source[1:].split("/"):
        if segment == "**":
            tokens.append(_Wild.DSTAR)
        elif segment == "*":
            tokens.append(_Wild.STAR)
        elif "*" in segment:
            raise PatternError(
                f"'*' and '**' must be whole segments (in {source!r}); "
                "use 'regex:' for partial matches"
            )
        else:
            tokens.append(segment)
    literal = "/" + "/".join(t if isinstance(t, str) else "x" for t in tokens)
    normal = normalise_path(literal)
    if normal != literal:
        hint = f"; write it as {normal!r}" if normal else ""
        raise PatternError(
            f"pattern {source!r} is not a normalised path, so no request could match it{hint}"
        )
    return tuple(tokens)


def _token_regex(token: Token) -> str:
    if token is _Wild.DSTAR:
        return "(?:/[^/]*)*"
    if token is _Wild.STAR:
        return "/[^/]+"
    assert isinstance(token, str)
    return "/" + re.escape(token)


_REGEX_META = frozenset(".^$*+?{}[]\\|()")
_QUANTIFIERS = frozenset("*+?{")


def _regex_literal_prefix(body: str) -> str:
    """The literal text every full match must start with ("" when unknown)."""
    if "|" in body:
        return ""
    body = body.removeprefix("^")  # fullmatch anchors anyway
    chars: list[str] = []
    for index, ch in enumerate(body):
        if ch in _REGEX_META:
            # a quantifier makes the character before it optional
            if ch in _QUANTIFIERS and chars:
                chars.pop()
            break
        nxt = body[index + 1] if index + 1 < len(body) else ""
        if nxt in _QUANTIFIERS:
            break
        chars.append(ch)
    return "".join(chars)


@dataclass(frozen=True, slots=True)
class HostPattern:
    source: str
    suffix: str | None  # ".example.com" for "*.example.com"

    @staticmethod
    def parse(source: str) -> HostPattern:
        host = source.lower()
        if host.startswith("*."):
            return HostPattern(host, host[1:])
        return HostPattern(host, None)

    def matches(self, host: str) -> bool:
        """`host` is lower-case and without a port."""
        if self.suffix is None:
            return host == self.source
        return host.endswith(self.suffix) and len(host) > len(self.suffix)

    def covers(self, other: HostPattern) -> bool:
        if self.suffix is None:
            return other.suffix is None and other.source == self.source
        if other.suffix is None:
            return self.matches(other.source)
        return other.suffix.endswith(self.suffix)


@dataclass(frozen=True, slots=True)
class Requirement:
    """Every listed dimension must hold; an empty tuple is not required."""

    roles: tuple[str, ...] = ()
    org_roles: tuple[str, ...] = ()
    org_permissions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    patterns: tuple[PathPattern, ...]
    access: Access
    methods: frozenset[str] | None = None
    host: HostPattern | None = None
    accept_pending: bool = False
    require: Requirement = field(default_factory=Requirement)
    upstream: str = "default"
    name: str | None = None
    line: int = 0
    written: str | tuple[str, ...] = ""  # the `path:` value as written: a string or a list
    csrf: bool = True  # cookie sessions' state-changing requests must come from our origins

    @property
    def label(self) -> str:
        return self.name or f"routes[{self.index}]"

    @property
    def pattern_text(self) -> str:
        return ", ".join(p.source for p in self.patterns)


# RFC 9110 7.2 / RFC 3986 3.2.2: uri-host [":" port]; an IP literal in brackets, else a
# reg-name's characters. RFC 9112 3.2: anything else in Host is a 400.
_AUTHORITY = re.compile(r"(?:\[[0-9A-Za-z:.%_~-]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(?::[0-9]*)?")


def valid_authority(host: str) -> bool:
    return _AUTHORITY.fullmatch(host) is not None


def host_without_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, _, _ = host.partition(":")
    return name


class Ambiguous:
    """A path that matches another route once folded the way IIS or Express read it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "AMBIGUOUS"


AMBIGUOUS: Final = Ambiguous()


class RouteTable:
    """The compiled routes, and how paths are compared with them.

    `case_insensitive`: None (not set) matches exactly but refuses a path that would match
    another route, or the default instead of a route, once folded (case, trailing dots and
    spaces of a segment), because a case-insensitive upstream would serve that other
    route's content; True folds and matches; False matches exactly and never refuses.
    """

    __slots__ = ("_folded", "_trivial", "case_insensitive", "routes")

    def __init__(self, routes: tuple[Route, ...], case_insensitive: bool | None = None) -> None:
        self.routes = routes
        self.case_insensitive = case_insensitive
        self._folded = (
            tuple(_folded_route(r) for r in routes) if case_insensitive is not False else ()
        )
        # every pattern folds to itself: a path that folds to itself then matches alike
        self._trivial = all(
            p.kind is not PatternKind.REGEX and fold_path(p.source) == p.source
            for r in routes
            for p in r.patterns
        )

    def match(self, method: str, host: str, path: str) -> Route | Ambiguous | None:
        """The first route matching method, host (no port, lower-case) and normalised path;
        None when the default applies; AMBIGUOUS when folding would change the answer."""
        if self.case_insensitive is True:
            found = _first(self._folded, method, host, fold_path(path))
            return self.routes[found] if found >= 0 else None
        exact = _first(self.routes, method, host, path)
        if (
            self.case_insensitive is None
            and not (self._trivial and fold_invariant(path))
            and _first(self._folded, method, host, fold_path(path)) != exact
        ):
            return AMBIGUOUS
        return self.routes[exact] if exact >= 0 else None


def _first(routes: tuple[Route, ...], method: str, host: str, key: str) -> int:
    """The position of the first matching route, -1 for none."""
    for position, route in enumerate(routes):
        if route.methods is not None and method not in route.methods:
            continue
        if route.host is not None and not route.host.matches(host):
            continue
        for pattern in route.patterns:
            if pattern.matches(key):
                return position
    return -1


def _folded_route(route: Route) -> Route:
    """The route with its patterns compiled for folded paths."""
    patterns: list[PathPattern] = []
    for pattern in route.patterns:
        source = pattern.source
        if pattern.kind is not PatternKind.REGEX:
            source = fold_path(source)
        try:
            patterns.append(compile_pattern(source, case_insensitive=True))
        except PatternError:  # folding made it unnormalised ('/a.../b'): keep the original
            patterns.append(compile_pattern(pattern.source, case_insensitive=True))
    return replace(route, patterns=tuple(patterns))


# ---- lints: routes that can never match ---------------------------------------------------


def shadowing_route(routes: Sequence[Route], route: Route) -> Route | None:
    """An earlier route that matches every request `route` would, if there is one."""
    for earlier in routes:
        if earlier.index >= route.index:
            break
        if not _methods_cover(earlier.methods, route.methods):
            continue
        if earlier.host is not None and (route.host is None or not earlier.host.covers(route.host)):
            continue
        if all(any(_pattern_covers(a, b) for a in earlier.patterns) for b in route.patterns):
            return earlier
    return None


def _methods_cover(a: frozenset[str] | None, b: frozenset[str] | None) -> bool:
    if a is None:
        return True
    return b is not None and b <= a


def _pattern_covers(a: PathPattern, b: PathPattern) -> bool:
    if b.kind is PatternKind.EXACT:
        return a.matches(b.prefix)
    if a.kind is PatternKind.GLOB and b.kind is PatternKind.GLOB:
        return _tokens_cover(a.tokens, b.tokens, a.case_insensitive)
    return False  # regex languages are not compared: no lint rather than a wrong one


def _tokens_cover(a: tuple[Token, ...], b: tuple[Token, ...], fold: bool) -> bool:
    """Is every path matched by glob `b` also matched by glob `a`?"""

    @cache
    def cover(i: int, j: int) -> bool:
        if i == len(a):
            return j == len(b)
        ta = a[i]
        if ta is _Wild.DSTAR:
            return cover(i + 1, j) or (j < len(b) and cover(i, j + 1))
        if j == len(b):
            return False
        tb = b[j]
        if ta is _Wild.STAR:
            # '*' is one non-empty segment: it covers '*' and any non-empty literal
            return tb is not _Wild.DSTAR and tb != "" and cover(i + 1, j + 1)
        if isinstance(tb, _Wild):
            return False
        assert isinstance(ta, str)
        same = ta.lower() == tb.lower() if fold else ta == tb
        return same and cover(i + 1, j + 1)

    return cover(0, 0)


def regex_matches_nothing(pattern: PathPattern) -> str | None:
    """Why a `regex:` pattern can never match a normalised path, or None."""
    if pattern.kind is not PatternKind.REGEX:
        return None
    prefix = pattern.prefix
    if prefix and not prefix.startswith("/"):
        return f"every match starts with {prefix!r}, but request paths start with '/'"
    for fragment in ("//", "/./", "/../", ";", "\\"):
        if fragment in prefix:
            return f"every match contains {fragment!r}, which normalised paths never do"
    return None
