"""Typed reading of policy fields, each failure recorded with file and line.

Every reader returns a usable placeholder after recording a problem, so one
pass over the document reports every fault, not only the first.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from sandbox.errors import PolicyProblem
from sandbox.identity.keys import ALLOWED_ALGORITHMS
from sandbox.policy.paths import PathPattern, compile_path_pattern
from sandbox.policy.source import LocatedDocument
from sandbox.units import parse_duration, parse_size

T = TypeVar("T")

_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Names sha256sum prints without escaping, so the hash formula stays simple.
_BUNDLE_PATH = re.compile(r"^[A-Za-z0-9._+@-][A-Za-z0-9._+@/-]*$")


class FieldReader:
    def __init__(self, file: str, document: LocatedDocument, raw: bytes) -> None:
        self.file = file
        self.document = document
        self.raw = raw
        self.problems: list[PolicyProblem] = []
        # Bundle-relative path -> the exact bytes read, which the hash covers.
        self.referenced: dict[str, bytes] = {}

    def bundle_contents(self) -> dict[str, bytes]:
        """Every bundle file by its path in the folder, as the bytes read."""
        return {Path(self.file).name: self.raw, **self.referenced}

    def problem(self, path: str, message: str) -> None:
        self.problem_at(self.document.line_of(path), path, message)

    def problem_at(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(PolicyProblem(self.file, line, path, message))

    def mapping(
        self, path: str, value: Any, allowed: Collection[str], required: Collection[str]
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {_kind(value)}")
            return None
        for key in value:
            if key not in allowed:
                child = f"{path}.{key}" if path else str(key)
                expected = ", ".join(sorted(allowed))
                self.problem(
                    child, f"unknown field {key!r} (expected one of: {expected})"
                )
        for key in sorted(set(required) - set(value)):
            self.problem(path, f"missing required field {key!r}")
        return value

    def sequence(self, path: str, value: Any) -> list[Any]:
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {_kind(value)}")
            return []
        return value

    def string(self, path: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            self.problem(path, f"expected a non-empty string, got {_kind(value)}")
            return ""
        return value

    def strings(self, path: str, value: Any) -> list[str]:
        items = self.sequence(path, value)
        if isinstance(value, list) and not items:
            self.problem(path, "expected at least one entry")
        return [
            self.string(f"{path}[{index}]", item) for index, item in enumerate(items)
        ]

    def identifier(self, path: str, value: Any) -> str:
        text = self.string(path, value)
        if text and not _IDENTIFIER.match(text):
            self.problem(
                path,
                f"{text!r} is not a valid name: use letters, digits, '.', '_', '-'",
            )
        return text

    def boolean(self, path: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {_kind(value)}")
            return False
        return value

    def choice(self, path: str, value: Any, options: Sequence[T]) -> T:
        for option in options:
            if value == option and type(value) is type(option):
                return option
        self.problem(path, f"expected one of {list(options)!r}, got {value!r}")
        return options[0]

    def duration(self, path: str, value: Any) -> float:
        return self._parsed(path, value, parse_duration, 0.0)

    def size(self, path: str, value: Any) -> int:
        return self._parsed(path, value, parse_size, 0)

    def _parsed(self, path: str, value: Any, parse: Any, fallback: T) -> T:
        try:
            result: T = parse(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return fallback
        return result

    def algorithms(self, path: str, value: Any) -> list[str]:
        names = self.strings(path, value)
        for index, name in enumerate(names):
            if name.lower() == "none" or name.upper().startswith("HS"):
                self.problem(
                    f"{path}[{index}]",
                    f"{name!r} is refused: unsigned and shared-secret (HMAC) tokens "
                    "cannot be pinned to a public key",
                )
            elif name and name not in ALLOWED_ALGORITHMS:
                allowed = ", ".join(ALLOWED_ALGORITHMS)
                self.problem(
                    f"{path}[{index}]",
                    f"unknown algorithm {name!r} (expected one of: {allowed})",
                )
        return [name for name in names if name in ALLOWED_ALGORITHMS]

    def methods(self, path: str, value: Any, *, allow_any: bool) -> list[str]:
        """HTTP methods in upper case; ``*`` (any) only where ``allow_any``."""
        methods = self.strings(path, value)
        for index, method in enumerate(methods):
            if (allow_any and method == "*") or _METHOD.match(method):
                continue
            hint = (
                f" (write {method.upper()!r})" if _METHOD.match(method.upper()) else ""
            )
            wildcard = ", or '*'" if allow_any else ""
            self.problem(
                f"{path}[{index}]",
                f"{method!r} is not a method: upper-case like 'GET'{wildcard}{hint}",
            )
        return methods

    def path_patterns(self, path: str, value: Any) -> tuple[PathPattern, ...]:
        patterns = []
        for index, text in enumerate(self.strings(path, value)):
            try:
                patterns.append(compile_path_pattern(text))
            except ValueError as exc:
                self.problem(f"{path}[{index}]", str(exc))
        return tuple(patterns)

    def unique(self, path: str, values: Sequence[str | None], what: str) -> None:
        seen: set[str] = set()
        for index, value in enumerate(values):
            if value is not None and value in seen:
                self.problem(f"{path}[{index}]", f"{what} {value!r} is given twice")
            if value is not None:
                seen.add(value)

    def bundle_reference(self, path: str, value: Any, root: Path) -> str:
        """A file inside the policy folder; its bytes join the bundle."""
        text = self.string(path, value)
        if not text:
            return ""
        problem = _bundle_path_problem(text, root)
        if problem:
            self.problem(path, f"{text!r} {problem}")
            return ""
        normal = str(PurePosixPath(text))
        try:
            self.referenced[normal] = (root / normal).read_bytes()
        except OSError as exc:
            self.problem(path, f"cannot read {text!r}: {exc.strerror or exc}")
            return ""
        return normal


def _bundle_path_problem(text: str, root: Path) -> str:
    if text.startswith("/") or ".." in PurePosixPath(text).parts:
        return "must be a path inside the policy folder (relative, without '..')"
    if not _BUNDLE_PATH.match(text):
        return "may hold only letters, digits and . _ + @ - / in its name"
    resolved = (root / text).resolve()
    if not resolved.is_relative_to(root.resolve()):
        return "resolves (through a link) outside the policy folder"
    if not resolved.is_file():
        return "is not a file in the policy folder"
    return ""


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
