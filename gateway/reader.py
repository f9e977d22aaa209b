"""Typed reads of a YAML document, each failure a located Problem (never an exception).

`config.py` builds the policy schema on top of these; a value read here is a plain Python
value of the asked-for type, or the default with a problem recorded at the value's line.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from gateway.yamlsource import Document, EnvStr, Problem, Severity


class Reader:
    """Typed reads of the plain document; each failed read records a problem."""

    def __init__(self, doc: Document, for_run: bool) -> None:
        self.doc = doc
        self.for_run = for_run
        self.problems: list[Problem] = []
        self.declared_upstreams: set[str] = {"default"}

    # ---- problems ---------------------------------------------------------------------------

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.doc.file, self.doc.line(path), path, message))

    def warn(self, path: str, message: str) -> None:
        line = self.doc.line(path)
        self.problems.append(Problem(self.doc.file, line, path, message, Severity.WARNING))

    def env_problem(self, path: str, message: str) -> None:
        """A problem that follows only from this environment: fatal for run, not for check."""
        (self.error if self.for_run else self.warn)(path, message)

    # ---- typed reads ------------------------------------------------------------------------

    def mapping(self, path: str, value: Any, allowed: Collection[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {kind_of(value)}")
            return {}
        for key in value:
            if key not in allowed:
                child = f"{path}.{key}" if path else key
                guess = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f"; did you mean {guess[0]!r}?" if guess else ""
                self.error(child, f"unknown key {key!r}{hint}")
        return value

    def string(self, path: str, value: Any, default: str | None = None) -> str | None:
        """A string; "" (after interpolation) counts as absent."""
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(path, f"must be a string, got {kind_of(value)}")
            return default
        if isinstance(value, EnvStr) and value.missing:
            self.env_problem(
                path,
                f"environment variable {env_names(value.missing)} is not set: "
                "`clerk-gateway run` will refuse to start until it is",
            )
        return value if value != "" else default

    def boolean(self, path: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, EnvStr) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, got {kind_of(value)}")
            return default
        return value

    def choice(self, path: str, value: Any, choices: Collection[str], default: str) -> str:
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            options = ", ".join(choices)
            self.error(path, f"must be one of {options}, got {kind_of(value)}")
            return default
        return value

    def number(self, path: str, value: Any, default: float, *, minimum: float = 0) -> float:
        if value is None:
            return default
        if isinstance(value, EnvStr):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"must be a number, got {kind_of(value)}")
            return default
        if value < minimum:
            self.error(path, f"must be at least {minimum:g}, got {value:g}")
            return default
        return float(value)

    def integer(self, path: str, value: Any, default: int, *, minimum: int = 0) -> int:
        if value is None:
            return default
        if isinstance(value, EnvStr) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer, got {kind_of(value)}")
            return default
        if value < minimum:
            self.error(path, f"must be at least {minimum}, got {value}")
            return default
        return value

    def strings(self, path: str, value: Any, *, split: bool = False) -> tuple[str, ...] | None:
        """A list of non-empty strings (or one string; `split`: space-separated)."""
        if value is None:
            return None
        if isinstance(value, str):
            self.string(path, value)
            items: list[Any] = value.split() if split else [value]
        elif isinstance(value, list):
            items = value
        else:
            self.error(path, f"must be a list of strings, got {kind_of(value)}")
            return None
        out: list[str] = []
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]" if isinstance(value, list) else path
            if isinstance(item, EnvStr) and item.missing and isinstance(value, list):
                self.env_problem(
                    item_path,
                    f"environment variable {env_names(item.missing)} is not set: "
                    "`clerk-gateway run` will refuse to start until it is",
                )
                continue
            if isinstance(item, EnvStr) and not item.strip() and isinstance(value, list):
                self.env_problem(item_path, f"{env_names(item.names)} is empty here")
                continue
            if not isinstance(item, str) or not item.strip():
                self.error(item_path, f"must be a non-empty string, got {kind_of(item)}")
                continue
            if isinstance(item, EnvStr) and item.missing:
                self.env_problem(
                    item_path, f"environment variable {env_names(item.missing)} is not set"
                )
            out.extend(item.split() if split else [item])
        return tuple(out)

    def url(self, path: str, value: Any, default: str | None = None) -> str | None:
        text = self.string(path, value, default)
        if text is None or text == default:
            return text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.error(path, f"must be an http(s) URL, got {text!r}")
            return default
        return text.rstrip("/") if parts.path in ("", "/") else text

    def redirect_target(self, path: str, value: Any, default: str) -> str:
        text = self.string(path, value, default)
        assert text is not None
        if text.startswith("/") and not text.startswith("//") and "\\" not in text:
            return text
        parts = urlsplit(text)
        if parts.scheme in ("http", "https") and parts.hostname:
            return text
        self.error(
            path, f"must be an absolute http(s) URL or a path starting with '/', got {text!r}"
        )
        return default


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return (
            f"a string ({value!r})"
            if len(value) < 40 and not isinstance(value, EnvStr)
            else "a string"
        )
    return f"{type(value).__name__} ({value!r})"


def env_names(names: Collection[str]) -> str:
    return ", ".join(f"${{{n}}}" for n in names)
