"""Mutation testing of the pure modules, each against its own unit tests (`make mutation`).

mutmut 3 mutates the code inside functions and methods. Each module is run on its own, in
a copy of the package under build/mutation/<module>/, with a `setup.cfg` that names the
module and its one test file, so a mutant counts as killed only when the module's own
unit tests catch it (never the integration suite, never another module's tests).

mutmut 3 does not touch module-level tables (hop-by-hop names, the unreserved set, size
caps...), and several of the survivors issue 11 names live there. TABLE_MUTANTS below are
those edits, made by hand: each is applied to the copy and the module's tests must fail.

At the end: one row per module, killed / total and the percentage; mutants documented as
equivalent in docs/mutation.md (EQUIVALENT below, matched by function and mutated line,
not by mutmut's numbering, which shifts when the code does) leave the denominator. The
diff of every other survivor goes to build/mutation/survivors.txt.

Usage: python scripts/mutation.py [module ...]   (module: paths, routes, ..., tokens)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"

# module -> its own unit test file
MODULES = {
    "paths": ("gateway/paths.py", "tests/unit/test_paths.py"),
    "routes": ("gateway/routes.py", "tests/unit/test_routes.py"),
    "decide": ("gateway/decide.py", "tests/unit/test_decide.py"),
    "decision": ("gateway/decision.py", "tests/unit/test_decision.py"),
    "headers": ("gateway/headers.py", "tests/unit/test_headers.py"),
    "tokens": ("gateway/clerk/tokens.py", "tests/unit/test_tokens.py"),
    "claims": ("gateway/clerk/claims.py", "tests/unit/test_claims.py"),
    "webhooks": ("gateway/webhooks.py", "tests/unit/test_webhooks.py"),
    "responses": ("gateway/responses.py", "tests/unit/test_responses.py"),
}

KILLED = {"killed", "timeout", "segfault", "caught by type check"}

# Module-level edits mutmut 3 does not make: (description, text in the module, replacement).
# The text must occur exactly once; if the code moved on, the row is reported as stale.
TABLE_MUTANTS: dict[str, list[tuple[str, str, str]]] = {
    "paths": [
        ("'_' dropped from the unreserved set", '"-._~"', '"-.~"'),
        ("'~' dropped from the unreserved set", '"-._~"', '"-._"'),
        ("control range shortened", "*range(0x20)", "*range(0x1F)"),
        ("encoded DEL accepted", "0x3B, 0x7F, *range", "0x3B, *range"),
        ("encoded backslash accepted", "0x2F, 0x5C, 0x3B", "0x2F, 0x3B"),
        ("encoded ';' accepted", "0x5C, 0x3B, 0x7F", "0x5C, 0x7F"),
        ("encoded '/' accepted", "[0x2F, 0x5C", "[0x5C"),
        ("'@' dropped from raw pchar", '"!$&\'()*+,=:@"', '"!$&\'()*+,=:"'),
        ("double-encoding check blind to lower-case hex", "%25[0-9A-Fa-f]{2}", "%25[0-9A-F]{2}"),
    ],
    "headers": [
        ("proxy-authorization not hop-by-hop", 'b"proxy-authorization",\n', ""),
        ("proxy-connection not hop-by-hop", 'b"proxy-connection",\n', ""),
        ("proxy-authenticate not hop-by-hop", 'b"proxy-authenticate",\n', ""),
        ("keep-alive not hop-by-hop", 'b"keep-alive",\n', ""),
        ("te not hop-by-hop", 'b"te",\n', ""),
        ("trailer not hop-by-hop", 'b"trailer",\n', ""),
        (
            "reserved prefix without its dash",
            'RESERVED_PREFIX = b"x-clerk-"',
            'RESERVED_PREFIX = b"x-clerk"',
        ),
        ("X-Forwarded-For kept as a plain header", 'b"x-forwarded-for": X_FORWARDED_FOR,', ""),
        (
            "X-Forwarded-Proto kept as a plain header",
            'b"x-forwarded-proto": X_FORWARDED_PROTO,',
            "",
        ),
        ("X-Forwarded-Host kept as a plain header", 'b"x-forwarded-host": X_FORWARDED_HOST,', ""),
        ("Forwarded kept as a plain header", 'b"forwarded": FORWARDED,', ""),
        ("Host kept as a plain header", 'b"host": HOST,', ""),
        ("X-Original-URL not an override", 'b"X-Original-URL",', ""),
        ("X-Real-IP not an override", 'b"X-Real-IP",', ""),
        ("X-Forwarded-Scheme not an override", 'b"X-Forwarded-Scheme",', ""),
        (
            "'close' read as a header name",
            '[b"keep-alive", b"close", b"upgrade"]',
            '[b"keep-alive", b"upgrade"]',
        ),
        (
            "'_' no longer folded onto '-'",
            "\n\n\ndef fold(",
            "\n_NOT_ALNUM = _NOT_ALNUM[:0x5F] + b'_' + _NOT_ALNUM[0x60:]\n\n\ndef fold(",
        ),
    ],
    "tokens": [
        ("token size cap one byte larger", "MAX_TOKEN_BYTES = 16_384", "MAX_TOKEN_BYTES = 16_385"),
        ("RS384 not accepted", '"RS384": hashes.SHA384,', ""),
        ("RS512 not accepted", '"RS512": hashes.SHA512,', ""),
        ("application/at+jwt not an access token", '"at+jwt", "application/at+jwt"', '"at+jwt"'),
        (
            "the session category changed",
            'SESSION_CATEGORY = "cl_B7d4PD111AAA"',
            'SESSION_CATEGORY = "cl_B7d4PD222AAA"',
        ),
        ("the no-class marker changed", 'NO_CATEGORY = "cl_I7d4PD111III"', 'NO_CATEGORY = "cl_X"'),
    ],
    "webhooks": [
        ("id cap one larger", "MAX_ID_CHARS = 256", "MAX_ID_CHARS = 257"),
        ("id cap one smaller", "MAX_ID_CHARS = 256", "MAX_ID_CHARS = 255"),
        (
            "signature header cap one larger",
            "MAX_SIGNATURE_HEADER = 16_384",
            "MAX_SIGNATURE_HEADER = 16_385",
        ),
        (
            "signature header cap one smaller",
            "MAX_SIGNATURE_HEADER = 16_384",
            "MAX_SIGNATURE_HEADER = 16_383",
        ),
        ("another signature version", 'SIGNATURE_VERSION = "v1"', 'SIGNATURE_VERSION = "v1a"'),
    ],
    "responses": [
        ("path-ambiguous not a 400", "Reason.PATH_AMBIGUOUS: 400,", ""),
        ("webhook-in-progress not a 409", "Reason.WEBHOOK_IN_PROGRESS: 409,", ""),
        ("role-required not a 403", "Reason.ROLE_REQUIRED: 403,", ""),
        ("route-denied not a 403", "Reason.ROUTE_DENIED: 403,", ""),
        ("already-delivered not a 200", "Reason.WEBHOOK_ALREADY_DELIVERED: 200,", ""),
        ("jwks failure not a 503", "Reason.JWK_REMOTE_FAILED_TO_LOAD: 503,", ""),
        (
            "upstream timeout a 502",
            "Reason.UPSTREAM_TIMEOUT: 504,",
            "Reason.UPSTREAM_TIMEOUT: 502,",
        ),
        ("internal error not a 500", "Reason.INTERNAL_ERROR: 500,", ""),
        ("body too large not a 413", "Reason.WEBHOOK_BODY_TOO_LARGE: 413,", ""),
        ("header too large not a 431", "Reason.REQUEST_HEADER_TOO_LARGE: 431,", ""),
        ("403 body says unauthorized", '403: "forbidden",', '403: "unauthorized",'),
        (
            "org permission not redirected to unauthorized_url",
            "Reason.ORG_ROLE_REQUIRED, Reason.ORG_PERMISSION_REQUIRED]",
            "Reason.ORG_ROLE_REQUIRED]",
        ),
        ("Retry-After changed", "RETRY_AFTER_S = 5", "RETRY_AFTER_S = 6"),
    ],
    "routes": [
        (
            "'?' not a quantifier",
            '_QUANTIFIERS = frozenset("*+?{")',
            '_QUANTIFIERS = frozenset("*+{")',
        ),
        (
            "'{' not a quantifier",
            '_QUANTIFIERS = frozenset("*+?{")',
            '_QUANTIFIERS = frozenset("*+?")',
        ),
    ],
    "decide": [
        ("the admin role renamed", 'ADMIN_ROLE = "admin"', 'ADMIN_ROLE = "administrator"'),
    ],
}

# Survivors with no observable behaviour change, each explained in docs/mutation.md:
# (module, function, the mutated line as mutmut shows it after '+', stripped).
P, R, H, T, C, W = (
    "gateway/paths.py",
    "gateway/routes.py",
    "gateway/headers.py",
    "gateway/clerk/tokens.py",
    "gateway/clerk/claims.py",
    "gateway/webhooks.py",
)
EQUIVALENT: set[tuple[str, str, str]] = {
    # codec and error-handler names: "strict" is the default, codec names ignore case
    (P, "normalise_path", 'raw = path.encode("utf-8", )'),
    (P, "normalise_path", 'raw = path.encode("UTF-8", "strict")'),
    (P, "normalise_path", 'decoded.decode("utf-8", )  # rejects invalid and overlong sequences'),
    (
        P,
        "normalise_path",
        'decoded.decode("UTF-8", "strict")  # rejects invalid and overlong sequences',
    ),
    (
        H,
        "HeaderRules.__init__",
        'self.reserved = frozenset(fold(n.encode("LATIN-1")) for n in (*identity_names, *strip))',
    ),
    (T, "b64url_decode", 'raw = part.encode("ASCII")  # UnicodeEncodeError is a ValueError'),
    (T, "_object", 'return _json(b64url_decode(part).decode("UTF-8"))'),
    (T, "decode", 'signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ASCII")'),
    (C, "decode_permissions", "for feature_entry, mask_text in zip(features, masks, strict=None):"),
    (C, "decode_permissions", "for feature_entry, mask_text in zip(features, masks, ):"),
    (T, "extract", 'return Extracted(token, "header", )'),
    # paths: the plain fast path and the general path agree on plain paths
    (P, "_is_plain", "return set(path) < _PLAIN"),
    # paths: `trailing` is always set by the last segment, which is never skipped
    (P, "_resolve_segments", "trailing = None"),
    (P, "_resolve_segments", "trailing = True"),
    (P, "_resolve_segments", 'if seg == "XXXX" and index != last:'),
    # paths: the text is lower-cased before rstrip, so an upper-case X is never there
    (P, "fold_path", 'text = "/".join(segment.rstrip("XX. XX") for segment in text.split("/"))'),
    # routes: the placeholder only has to be a plain segment
    (
        R,
        "_tokens",
        'literal = "/" + "/".join(t if isinstance(t, str) else "XXxXX" for t in tokens)',
    ),
    (R, "_tokens", 'literal = "/" + "/".join(t if isinstance(t, str) else "X" for t in tokens)'),
    # routes: the look-ahead and the pop after a quantifier each suffice alone
    (R, "_regex_literal_prefix", "nxt = None"),
    (
        R,
        "_regex_literal_prefix",
        'nxt = body[index + 1] if (index + 1 < len(body)) and False else ""',
    ),
    (R, "_regex_literal_prefix", 'nxt = body[index + 1] if index + 2 < len(body) else ""'),
    (R, "_regex_literal_prefix", 'nxt = body[index + 1] if index + 1 < len(body) else "XXXX"'),
    # routes: optimisations only (the folded table is unused when folding is off; the
    # trivial-table shortcut returns what the full comparison would)
    (
        R,
        "RouteTable.__init__",
        "tuple(_folded_route(r) for r in routes) if (case_insensitive is not False) or True else ()",
    ),
    (R, "RouteTable.__init__", "self._trivial = None"),
    (R, "RouteTable.__init__", "p.kind is PatternKind.REGEX and fold_path(p.source) == p.source"),
    # routes: any negative position means "none"
    (R, "_first", "return -2"),
    # routes: the fallback pattern holds a segment of dots and spaces, which no folded path has
    (R, "_folded_route", "patterns.append(compile_pattern(pattern.source, case_insensitive=None))"),
    (R, "_folded_route", "patterns.append(compile_pattern(pattern.source, ))"),
    (
        R,
        "_folded_route",
        "patterns.append(compile_pattern(pattern.source, case_insensitive=False))",
    ),
    # routes: `break` then `return None` is `return`
    (R, "shadowing_route", "return"),
    # routes: a literal prefix never holds '.' or '\\' (both are regex metacharacters)
    (R, "regex_matches_nothing", 'for fragment in ("//", "XX/./XX", "/../", ";", "\\\\"):'),
    (R, "regex_matches_nothing", 'for fragment in ("//", "/./", "XX/../XX", ";", "\\\\"):'),
    (R, "regex_matches_nothing", 'for fragment in ("//", "/./", "/../", ";", "XX\\\\XX"):'),
    # headers: scan's own lookup of the verdict cache is a shortcut of HeaderRules.action,
    # which asks the same cache: bypassing it changes the cost, not the verdict
    (H, "scan", "action = None"),
    (H, "scan", "action = known.get(None)"),
    # headers: None and False are both falsy where they are read
    (H, "forwarded_lines", "seen_proto = seen_host = None"),
    # headers: codec names ignore case
    (H, "client_address", 'address = hop.strip().decode("LATIN-1")'),
    # tokens: more padding than a group needs; a2b_base64 (not strict) stops at the first
    # complete group and ignores the rest
    (
        T,
        "b64url_decode",
        'return binascii.a2b_base64(raw.translate(_TO_STANDARD) + b"=" * (+spare % 4))',
    ),
    (
        T,
        "b64url_decode",
        'return binascii.a2b_base64(raw.translate(_TO_STANDARD) + b"=" * (-spare % 5))',
    ),
    # tokens: key ids are strings, so get(None) finds nothing either way
    (T, "KeySet.get", "return self.by_kid.get(kid) if (kid is not None) or True else None"),
    # tokens (cookie choice): an absent cookie and an undecodable one read alike
    (T, "_use_suffixed", 'suffixed = cookies.get(f"__session_{suffix}") or "XXXX"'),
    (T, "_use_suffixed", "plain_claims = _peek(plain) if (plain) or True else None"),
    (T, "_use_suffixed", "suffixed_claims = _peek(suffixed) if (suffixed) or True else None"),
    # tokens: with the suffixed uat "0" the next rule returns the same answer
    (
        T,
        "_use_suffixed",
        'if suffixed_uat != "XX0XX" and plain_uat != "0" and plain_iat > suffixed_iat:',
    ),
    # webhooks: every value is non-empty there (checked the line before)
    (W, "read_headers", 'msg_id, timestamp, signature = (v or "XXXX" for v in values)'),
    # webhooks: base64 holds no comma, so a second comma fails either way
    (W, "_v1_signatures", 'version, sep, encoded = entry.rpartition(",")'),
    # webhooks: only the key's presence is read
    (W, "DeliveryRecord.finish", "self._delivered[msg_id] = None"),
    (W, "DeliveryRecord.finish", "self._delivered[msg_id] = False"),
    # responses: no "text/html" in the stand-in either; letters are never quoted; a codec
    # name in capitals; None is as falsy as False
    ("gateway/responses.py", "is_navigation", 'return "text/html" in (accept or "XXXX").lower()'),
    (
        "gateway/responses.py",
        "with_query",
        "return f\"{base}{sep}{name}={quote(value, safe='XXXX')}{hash_}{fragment}\"",
    ),
    (
        "gateway/responses.py",
        "_render",
        'lines.append(b"Location: %s\\r\\n" % denial.location.encode("LATIN-1", "replace"))',
    ),
    (
        "gateway/responses.py",
        "refusal",
        "return render(Denial(status_of(reason), reason), keep_alive=None)",
    ),
}


@dataclass
class Score:
    module: str
    statuses: dict[str, str] = field(default_factory=dict)
    equivalent: list[str] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)  # (description, outcome)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.statuses) - len(self.equivalent)

    @property
    def killed(self) -> int:
        return sum(1 for s in self.statuses.values() if s in KILLED)

    @property
    def tables_killed(self) -> int:
        return sum(1 for _, outcome in self.tables if outcome == "killed")


def prepare(name: str) -> Path:
    source, tests = MODULES[name]
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "tests" / "unit").mkdir(parents=True)
    shutil.copytree(
        ROOT / "gateway", work / "gateway", ignore=shutil.ignore_patterns("__pycache__")
    )
    for path in ("tests/__init__.py", "tests/conftest.py", "tests/unit/__init__.py", tests):
        shutil.copy2(ROOT / path, work / path)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")  # pytest's settings
    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = gateway/\n"
        f"only_mutate = {source}\n"
        f"pytest_add_cli_args_test_selection = {tests}\n"
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n"
        # workers fork from a process that collected the tests but ran none, so no cache
        # a test run fills (responses' rendered heads) hides a mutant
        "process_isolation = forkserver\n"
    )
    return work


def run_mutmut(name: str, work: Path, log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "mutmut", "run"], cwd=work, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        sys.exit(f"mutmut failed for {name} (exit {done.returncode}); see {log}")


def read_results(name: str, work: Path) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    source, _ = MODULES[name]
    meta = json.loads((work / "mutants" / f"{source}.meta").read_text())
    return {k: status_by_exit_code[v] for k, v in meta["exit_code_by_key"].items()}


def diffs(work: Path, source: str, names: list[str]) -> dict[str, str]:
    """mutmut's own diff of each mutant (read in the module's work directory)."""
    from mutmut.configuration import reset_config
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    here = Path.cwd()
    os.chdir(work)
    try:
        reset_config()
        return {n: get_diff_for_mutant(n, path=Path(source)) for n in names}
    finally:
        os.chdir(here)
        reset_config()


def mutated_line(diff: str) -> str:
    added = [
        line[1:].strip()
        for line in diff.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    return " / ".join(added)


def function_of(mutant: str) -> str:
    # gateway.paths.x_normalise_path__mutmut_11, gateway.routes.xǁRouteTableǁmatch__mutmut_3
    tail = mutant.rpartition(".")[2].rpartition("__mutmut_")[0]
    return tail.removeprefix("x_").removeprefix("xǁ").replace("ǁ", ".")


def run_tables(name: str, work: Path) -> list[tuple[str, str]]:
    source, tests = MODULES[name]
    path = work / source
    original = path.read_text()
    outcomes: list[tuple[str, str]] = []
    env = {**os.environ, "PYTHONPATH": str(work)}
    for description, old, new in TABLE_MUTANTS.get(name, []):
        if original.count(old) != 1:
            outcomes.append((description, "stale (text not found once)"))
            continue
        path.write_text(original.replace(old, new))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", tests],
                cwd=work,
                env=env,
                capture_output=True,
            )
        finally:
            path.write_text(original)
        outcomes.append(
            (
                description,
                "killed" if done.returncode == 1 else f"survived (exit {done.returncode})",
            )
        )
    return outcomes


def main(argv: list[str]) -> int:
    names = argv or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        sys.exit(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    WORK.mkdir(parents=True, exist_ok=True)
    report = WORK / "survivors.txt"
    scores: list[Score] = []
    with report.open("w") as survivors:
        for name in names:
            started = time.monotonic()
            source, tests = MODULES[name]
            print(f"{source}: mutmut against {tests} ...", flush=True)
            work = prepare(name)
            run_mutmut(name, work, WORK / f"{name}.log")
            score = Score(source, read_results(name, work))
            alive = [k for k, s in score.statuses.items() if s not in KILLED]
            for mutant, diff in diffs(work, source, alive).items():
                key = (source, function_of(mutant), mutated_line(diff))
                if key in EQUIVALENT:
                    score.equivalent.append(mutant)
                    continue
                survivors.write(f"# {mutant}: {score.statuses[mutant]}\n{diff}\n\n")
            score.tables = run_tables(name, work)
            for description, outcome in score.tables:
                if outcome != "killed":
                    survivors.write(f"# {source} table mutant '{description}': {outcome}\n\n")
            survivors.flush()
            score.seconds = time.monotonic() - started
            scores.append(score)
            print(
                f"    {score.killed}/{score.total} killed, {len(score.equivalent)} equivalent, "
                f"tables {score.tables_killed}/{len(score.tables)}, {score.seconds:.0f} s",
                flush=True,
            )
    print()
    print(f"{'module':<26} {'killed':>7} {'total':>6} {'score':>7} {'equiv':>6} {'tables':>7}")
    for s in scores:
        percent = 100.0 * s.killed / s.total if s.total else 100.0
        tables = f"{s.tables_killed}/{len(s.tables)}" if s.tables else "-"
        print(
            f"{s.module:<26} {s.killed:>7} {s.total:>6} {percent:>6.1f}% {len(s.equivalent):>6} {tables:>7}"
        )
    killed, total = sum(s.killed for s in scores), sum(s.total for s in scores)
    print(f"{'all':<26} {killed:>7} {total:>6} {100.0 * killed / max(total, 1):>6.1f}%")
    print(
        f"\nsurvivors' diffs: {report.relative_to(ROOT)}; "
        f"took {sum(s.seconds for s in scores) / 60:.1f} min"
    )
    below = [s.module for s in scores if s.total and s.killed < 0.9 * s.total]
    missed = [s.module for s in scores if s.tables_killed < len(s.tables)]
    if below or missed:
        print(f"below 90%: {below or 'none'}; table mutants alive: {missed or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
