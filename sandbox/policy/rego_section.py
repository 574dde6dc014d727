"""Reading of the ``rego:`` section: which directions Rego decides, and with
which modules and data.

::

    rego:
      modules: [ingress.rego, lib/paths.rego]   # required; files in the folder
      data: [rules.json]                        # optional; JSON objects
      decides: [ingress]                        # required; ingress and/or egress

Modules and data join the bundle (and so the policy hash). Modules are
compiled at load, so a syntax error is reported with its file and line.
A direction Rego decides must not also have a YAML section, except that
an egress section may set ``block_private_networks`` alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sandbox.errors import PolicyProblem
from sandbox.policy.fields import FieldReader
from sandbox.policy.input_document import DIRECTIONS, EGRESS
from sandbox.policy.model import RegoConfig, RegoModule

_FIELDS = {"modules", "data", "decides"}
# What a direction's YAML section may still say where Rego decides it.
_KEEPABLE = {EGRESS: " (block_private_networks alone may stay)"}


def read_rego_section(
    reader: FieldReader, top: dict[str, Any], root: Path
) -> RegoConfig | None:
    if "rego" not in top:
        return None
    section = reader.mapping("rego", top["rego"], _FIELDS, {"modules", "decides"})
    if section is None:
        return None
    modules = _read_modules(reader, section.get("modules"), root)
    data_paths, data_json = _read_data(reader, section.get("data", []), root)
    decides = _read_decides(reader, section.get("decides"), top)
    config = RegoConfig(tuple(modules), tuple(data_paths), data_json, decides)
    if not reader.problems and modules:
        _compile(reader, config)
    return config


def _read_modules(reader: FieldReader, value: Any, root: Path) -> list[RegoModule]:
    modules = []
    for index, item in enumerate(reader.strings("rego.modules", value)):
        path = f"rego.modules[{index}]"
        if item and not item.endswith(".rego"):
            reader.problem(
                path, f"expected a Rego module ending in .rego, got {item!r}"
            )
            continue
        name = reader.bundle_reference(path, item, root)
        if not name:
            continue
        try:
            modules.append(RegoModule(name, reader.referenced[name].decode("utf-8")))
        except UnicodeDecodeError as exc:
            reader.problem(path, f"{name!r} is not UTF-8 text: {exc}")
    return modules


def _read_data(reader: FieldReader, value: Any, root: Path) -> tuple[list[str], str]:
    merged: dict[str, Any] = {}
    names = []
    for index, item in enumerate(reader.sequence("rego.data", value)):
        path = f"rego.data[{index}]"
        name = reader.bundle_reference(path, item, root)
        document = _data_document(reader, path, name) if name else None
        if document is None:
            continue
        for key in sorted(set(document) & set(merged)):
            reader.problem(path, f"top-level key {key!r} is also in an earlier file")
        merged.update(document)
        names.append(name)
    return names, json.dumps(merged, sort_keys=True)


def _data_document(reader: FieldReader, path: str, name: str) -> dict[str, Any] | None:
    try:
        document = json.loads(reader.referenced[name])
    except UnicodeDecodeError as exc:
        reader.problem(path, f"{name!r} is not UTF-8 text: {exc}")
        return None
    except json.JSONDecodeError as exc:
        where = f"{name}:{exc.lineno}"
        reader.problem(path, f"{where}: not valid JSON: {exc.msg}")
        return None
    if not isinstance(document, dict):
        kind = type(document).__name__
        reader.problem(path, f"{name!r} must hold a JSON object, got a {kind}")
        return None
    return document


def _read_decides(
    reader: FieldReader, value: Any, top: dict[str, Any]
) -> frozenset[str]:
    directions = reader.strings("rego.decides", value)
    chosen = []
    for index, direction in enumerate(directions):
        chosen.append(reader.choice(f"rego.decides[{index}]", direction, DIRECTIONS))
    reader.unique("rego.decides", directions, "direction")
    for direction in DIRECTIONS:
        if direction in chosen and _has_rules(direction, top):
            reader.problem(
                direction,
                f"{direction} is decided by Rego (rego.decides names it), so it "
                f"cannot also have YAML rules: remove the {direction} section"
                f"{_KEEPABLE.get(direction, '')} or drop {direction!r} from "
                "rego.decides",
            )
    return frozenset(chosen)


def _has_rules(direction: str, top: dict[str, Any]) -> bool:
    """Whether ``top`` has YAML rules for ``direction``.

    Where Rego decides egress, an egress section may still set
    ``block_private_networks``: the sandbox applies it before Rego is asked.
    """
    if direction not in top:
        return False
    section = top[direction]
    return not (
        direction == EGRESS
        and isinstance(section, dict)
        and set(section) <= {"block_private_networks"}
    )


def _compile(reader: FieldReader, config: RegoConfig) -> None:
    from sandbox.engines.rego_compile import RegoCompileError, compile_bundle

    try:
        compile_bundle(config.modules, config.data_json, sorted(config.decides))
    except RegoCompileError as exc:
        folder = Path(reader.file).parent
        for problem in exc.problems:
            file = str(folder / problem.file) if problem.file else reader.file
            message = f"Rego: {problem.message}"
            reader.problems.append(PolicyProblem(file, problem.line, "", message))
