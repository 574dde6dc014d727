"""Compile Rego modules and data with regopy into an evaluable bundle.

rego-cpp reports problems as an S-expression naming the module, a byte
offset and a message; :func:`compile_bundle` turns them into
``RegoProblem`` values with a 1-based line, so a data owner sees
``ingress.rego:4: ...`` rather than the compiler's tree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import regopy

from sandbox.policy.model import RegoModule

# "(error 12:ingress.rego|1644|45" then "(errormsg 18:Invalid collection)";
# each string is prefixed with its length.
_ERROR = re.compile(r"\(error \d+:(?P<file>[^|\n]*)\|(?P<offset>\d+)\|\d+")
_MESSAGE = re.compile(r"\(errormsg \d+:(?P<message>[^\n]*?)\)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class RegoProblem:
    file: str  # a module's bundle path, or "" when the compiler names none
    line: int | None
    message: str


class RegoCompileError(ValueError):
    def __init__(self, problems: Sequence[RegoProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(problem.message for problem in self.problems))


def entrypoint(direction: str) -> str:
    """The bundle entry point for a direction: ``sandbox/ingress/decision``."""
    return f"sandbox/{direction}/decision"


def new_interpreter() -> regopy.Interpreter:
    interpreter = regopy.Interpreter()
    # rego-cpp prints diagnostics on stdout by default; we report them.
    interpreter.log_level = regopy.LogLevel.NONE
    # A failing builtin is an error (a deny with its reason), not undefined.
    interpreter.strict_built_in_errors = True
    return interpreter


def compile_bundle(
    modules: Sequence[RegoModule], data_json: str, directions: Sequence[str]
) -> tuple[regopy.Interpreter, regopy.Bundle]:
    """An interpreter and the bundle of ``directions``' entry points.

    Raises ``RegoCompileError`` naming module and line for each problem.
    """
    interpreter = new_interpreter()
    problems: list[RegoProblem] = []
    for module in modules:
        try:
            interpreter.add_module(module.path, module.source)
        except regopy.RegoError as exc:
            problems.extend(_problems(str(exc), modules, module.path))
    if problems:
        raise RegoCompileError(problems)
    try:
        interpreter.add_data_json(data_json)
        bundle = interpreter.build(None, [entrypoint(d) for d in directions])
    except regopy.RegoError as exc:
        raise RegoCompileError(_problems(str(exc), modules, "")) from exc
    if not bundle.ok():
        raise RegoCompileError([RegoProblem("", None, "the modules do not compile")])
    return interpreter, bundle


def _problems(
    text: str, modules: Sequence[RegoModule], fallback: str
) -> list[RegoProblem]:
    sources = {module.path: module.source for module in modules}
    locations = list(_ERROR.finditer(text))
    messages = [match.group("message") for match in _MESSAGE.finditer(text)]
    if not locations or len(messages) != len(locations):
        return [RegoProblem(fallback, None, _first_line(text))]
    problems = []
    for location, message in zip(locations, messages, strict=True):
        file = location.group("file")
        line = _line_at(sources.get(file), int(location.group("offset")))
        problems.append(
            RegoProblem(file if file in sources else fallback, line, message)
        )
    return _unique(problems)


def _line_at(source: str | None, offset: int) -> int | None:
    if source is None:
        return None
    # Offsets count bytes of the UTF-8 text.
    return source.encode()[:offset].count(b"\n") + 1


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown Rego error"


def _unique(problems: list[RegoProblem]) -> list[RegoProblem]:
    # rego-cpp often reports the same fault twice, from two passes.
    return list(dict.fromkeys(problems))
