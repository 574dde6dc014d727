"""YAML text to plain values, remembering the line of every field path.

PyYAML's composer keeps a position for each node; we walk the nodes
ourselves so that validation errors can name ``file:line: field.path`` and
so that duplicate keys, which YAML silently collapses, are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class LocatedDocument:
    value: Any
    # "ingress.rules[1].paths[0]" -> 1-based line; "" is the document itself.
    lines: dict[str, int] = field(default_factory=dict)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)

    def line_of(self, path: str) -> int | None:
        """The line of ``path`` or of its nearest located ancestor."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def compose_located(text: str) -> LocatedDocument:
    """Parse ``text``; raises ``yaml.YAMLError`` for malformed YAML."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    document = LocatedDocument(value=None)
    if root is not None:
        document.value = _convert(root, "", document)
    return document


def _convert(node: yaml.Node, path: str, document: LocatedDocument) -> Any:
    document.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        return _convert_mapping(node, path, document)
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(item, f"{path}[{index}]", document)
            for index, item in enumerate(node.value)
        ]
    return _SCALARS.construct_object(node)


def _convert_mapping(
    node: yaml.MappingNode, path: str, document: LocatedDocument
) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    first_seen: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = (
            _SCALARS.construct_object(key_node)
            if isinstance(key_node, yaml.ScalarNode)
            else repr(key_node.value)
        )
        line = key_node.start_mark.line + 1
        child = f"{path}.{key}" if path else str(key)
        if key in first_seen:
            document.duplicates.append((child, line, first_seen[key]))
            continue
        first_seen[key] = line
        document.lines[child] = line
        result[key] = _convert(value_node, child, document)
    return result


_SCALARS = yaml.SafeLoader("")
