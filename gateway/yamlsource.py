"""YAML text -> plain values, each remembering its line; `${VAR}` interpolation.

PyYAML's composer keeps a mark on every node; we walk the nodes ourselves so that every
value the policy reader looks at can be reported as `file:line: key.path: message`.
Duplicate keys, which PyYAML silently resolves as "last one wins", are an error here: in
a security policy a second `access:` under the same route must never go unnoticed.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    path: str
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        tag = "warning: " if self.severity is Severity.WARNING else ""
        return f"{self.file}:{self.line}: {where}{tag}{self.message}"


class EnvStr(str):
    """A string that came (at least partly) from the environment.

    `missing` names the variables that were unset with no default; `names` all the
    variables used. Readers use them to tell "the file is wrong" from "this shell has no
    secrets set", which `check` reports as a warning rather than an error.
    """

    names: tuple[str, ...]
    missing: tuple[str, ...]

    def __new__(cls, value: str, names: tuple[str, ...], missing: tuple[str, ...]) -> EnvStr:
        obj = super().__new__(cls, value)
        obj.names = names
        obj.missing = missing
        return obj


_VAR = re.compile(r"\$\$|\$\{([^}]*)\}")
_VAR_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`${VAR}`, `${VAR:-default}` (default when unset or empty) and `$$` for a `$`."""
    if "$" not in text:
        return text
    names: list[str] = []
    missing: list[str] = []

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        body = _VAR_BODY.fullmatch(m.group(1))
        if body is None:
            raise InterpolationError(
                f"invalid interpolation {m.group(0)!r}: use ${{NAME}} or ${{NAME:-default}}"
            )
        name, default = body.group(1), body.group(2)
        names.append(name)
        value = env.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            missing.append(name)
            return ""
        return value

    result = _VAR.sub(substitute, text)
    if "${" in _VAR.sub("", text):
        raise InterpolationError(f"unterminated interpolation in {text!r}")
    if not names:
        return result
    return EnvStr(result, tuple(names), tuple(missing))


@dataclass(frozen=True, slots=True)
class Document:
    """Plain YAML values plus the line (1-based) of each key path."""

    file: str
    value: Any
    lines: Mapping[str, int]
    problems: tuple[Problem, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def interpolate(self, text: str) -> str:
        """A default written like a value in the file (`${VAR:-}`), read from its env."""
        return interpolate(text, self.env)

    def line(self, path: str) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("", 1)


def parse(text: str, file: str, env: Mapping[str, str] | None = None) -> Document:
    env = os.environ if env is None else env
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        msg = f"invalid YAML at line {line}, column {column}: {exc.problem or exc.context}"
        return Document(file, None, {}, (Problem(file, line, "", msg),))
    except yaml.YAMLError as exc:
        return Document(file, None, {}, (Problem(file, 1, "", f"invalid YAML: {exc}"),))
    if node is None:
        return Document(file, None, {"": 1}, (), env)
    walker = _Walker(file, env)
    value = walker.walk(node, "")
    return Document(file, value, walker.lines, tuple(walker.problems), env)


_MAX_NODES = 100_000


class _Walker:
    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[str, int] = {}
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.budget = _MAX_NODES

    def walk(self, node: yaml.Node, path: str) -> Any:
        self.budget -= 1
        if self.budget < 0:
            # aliases can expand a small file into billions of nodes ("billion laughs")
            if self.budget == -1:
                self._problem(node, path, f"the policy expands to more than {_MAX_NODES} values")
            return None
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node, path)
                if key is None:
                    continue
                child = f"{path}.{key}" if path else key
                if key in out:
                    self._problem(key_node, child, "duplicate key (an earlier one is ignored)")
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.walk(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == "tag:yaml.org,2002:str" and "$" in node.value:
            try:
                return interpolate(node.value, self.env)
            except InterpolationError as exc:
                self._problem(node, path, str(exc))
                return ""
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._problem(node, path, f"cannot read value: {exc}")
            return None

    def _key(self, node: yaml.Node, path: str) -> str | None:
        if isinstance(node, yaml.ScalarNode):
            value = self.constructor.construct_object(node, deep=True)
            if isinstance(value, str):
                return value
        self._problem(node, path, "mapping keys must be strings")
        return None

    def _problem(self, node: yaml.Node, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, path, message))
