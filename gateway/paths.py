"""Request-target normalisation: the one place a path becomes what rules and upstream see.

The classic auth-proxy bypass is a path that the proxy and the upstream read differently
(`/admin/../admin`, `//admin`, `/%61dmin`, `/admin%2f`). The defence is to produce ONE
canonical string, decide on it, and send exactly that string upstream; anything whose
meaning depends on the server reading it is refused instead of guessed at.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from urllib.parse import quote, unquote

_HEX = frozenset(string.hexdigits)
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Characters allowed raw in a canonical path segment (RFC 3986 pchar minus ';', which some
# servers treat as a path-parameter separator and strip, and minus '%' handled separately).
_PCHAR_RAW = _UNRESERVED | frozenset("!$&'()*+,=:@")
_PLAIN = _PCHAR_RAW | {"/"}
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")
# Encoded bytes refused outright: '/' and '\' (segment separators to some servers), ';'
# (path parameters), NUL and every other control character.
_REFUSED_BYTES = frozenset([0x2F, 0x5C, 0x3B, 0x7F, *range(0x20)])


@dataclass(frozen=True, slots=True)
class Target:
    """A normalised request target: the path rules see and upstream gets, the raw query."""

    path: str
    query: str  # as received, without the '?', byte for byte ("" when absent)
    has_query: bool

    @property
    def path_qs(self) -> str:
        return f"{self.path}?{self.query}" if self.has_query else self.path


def normalise_target(raw: str) -> Target | None:
    """Split and normalise an origin-form request target; None means `path-ambiguous`."""
    if not raw.startswith("/") or "#" in raw:
        # absolute form (GET http://host/x), asterisk form, fragments: refused
        return None
    path, sep, query = raw.partition("?")
    normal = normalise_path(path)
    if normal is None:
        return None
    return Target(normal, query, bool(sep))


def normalise_path(path: str) -> str | None:
    """Canonical form of a path, or None when its meaning is ambiguous.

    Unreserved characters are decoded, other escapes are kept with upper-case hex, raw
    bytes outside `pchar` are percent-encoded, `//` is merged and then `.`/`..` are
    resolved (nginx's order). The result is a fixed point: normalising it changes nothing.
    """
    if not path.startswith("/"):
        return None
    if path.isascii() and _is_plain(path):
        return _resolve_segments(path)
    try:
        raw = path.encode("utf-8", "strict")
    except UnicodeEncodeError:  # lone surrogates from a non-UTF-8 request line
        return None
    decoded = bytearray()  # every byte the path stands for, to check it is valid UTF-8
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25:  # '%'
            if i + 2 >= n:
                return None
            h1, h2 = chr(raw[i + 1]), chr(raw[i + 2])
            if h1 not in _HEX or h2 not in _HEX:
                return None
            value = int(h1 + h2, 16)
            if value in _REFUSED_BYTES:
                return None
            decoded.append(value)
            ch = chr(value)
            # Only unreserved characters are decoded: an encoded reserved character is
            # not equivalent to the raw one (RFC 3986 6.2.2.2), so it stays encoded.
            out.append(ch if ch in _UNRESERVED else f"%{value:02X}")
            i += 3
            continue
        if b < 0x20 or b == 0x7F or b in (0x5C, 0x3B):  # controls, backslash, ';'
            return None
        decoded.append(b)
        ch = chr(b)
        out.append(ch if ch == "/" or ch in _PCHAR_RAW else f"%{b:02X}")
        i += 1
    try:
        decoded.decode("utf-8", "strict")  # rejects invalid and overlong sequences
    except UnicodeDecodeError:
        return None
    result = "".join(out)
    if "%25" in result and _DOUBLE_ENCODED.search(result):
        # "%25xx" becomes a fresh escape after one more decode: a double-decoding upstream
        # would read a different path than the rules saw. Checked on the output, since
        # decoding an unreserved escape can complete one ("%25a%61" is "%25aa").
        return None
    return _resolve_segments(result)


def _is_plain(path: str) -> bool:
    # The common case: nothing to decode or encode; only dot segments and '//' to resolve.
    return set(path) <= _PLAIN


def _resolve_segments(path: str) -> str | None:
    if "//" not in path and "/." not in path:
        return path
    parts = path.split("/")
    # parts[0] is "" (the leading slash). Merge empty segments, keeping a trailing one.
    last = len(parts) - 1
    out: list[str] = []
    trailing = False
    for index, seg in enumerate(parts[1:], start=1):
        if seg == "" and index != last:
            continue
        trailing = seg in ("", ".", "..")
        if seg == ".":
            continue
        if seg == "..":
            if not out:
                return None  # climbs above the root
            out.pop()
            continue
        if seg != "":
            out.append(seg)
    result = "/" + "/".join(out)
    if trailing and out:
        result += "/"
    return result


# ---- folding: how case-insensitive servers (IIS, Express by default) read a path ----------

_FOLD_SAFE = "".join(sorted(_PCHAR_RAW | {"/"}))


def fold_path(path: str) -> str:
    """The path as a server that ignores case and trailing dots and spaces of a segment
    (IIS, Windows file systems) reads it, in normalised spelling. `path` is normalised."""
    if fold_invariant(path):
        return path
    text = unquote(path, errors="surrogateescape").lower()
    text = "/".join(segment.rstrip(". ") for segment in text.split("/"))
    return quote(text, safe=_FOLD_SAFE, errors="surrogateescape")


def fold_invariant(path: str) -> bool:
    """True when folding cannot change `path` (the common case, tested cheaply)."""
    return "%" not in path and "./" not in path and not path.endswith(".") and path.lower() == path
