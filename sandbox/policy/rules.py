"""Reading of ingress and egress rules into their compiled, validated form."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from sandbox.policy.fields import FieldReader
from sandbox.policy.model import (
    EFFECTS,
    ClaimCondition,
    ClaimValue,
    EgressRule,
    IdentityConfig,
    IngressRule,
)
from sandbox.policy.paths import PathPattern, compile_path_pattern

_INGRESS_FIELDS = {
    "name",
    "effect",
    "methods",
    "paths",
    "anonymous",
    "claims",
    "max_body",
}
_EGRESS_FIELDS = {"name", "effect", "hosts", "ports"}
_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*$")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def read_ingress_rules(
    reader: FieldReader, value: Any, identity: IdentityConfig
) -> tuple[IngressRule, ...]:
    items = reader.sequence("ingress.rules", value)
    rules = [
        _read_ingress_rule(reader, f"ingress.rules[{index}]", item, identity)
        for index, item in enumerate(items)
    ]
    reader.unique("ingress.rules", [r.name if r else None for r in rules], "rule name")
    return tuple(rule for rule in rules if rule is not None)


def _read_ingress_rule(
    reader: FieldReader, path: str, value: Any, identity: IdentityConfig
) -> IngressRule | None:
    item = reader.mapping(path, value, _INGRESS_FIELDS, {"name", "paths"})
    if item is None:
        return None
    effect = reader.choice(f"{path}.effect", item.get("effect", "allow"), EFFECTS)
    anonymous = reader.boolean(f"{path}.anonymous", item.get("anonymous", False))
    claims = _read_claims(reader, f"{path}.claims", item.get("claims", {}))
    max_body = None
    if "max_body" in item:
        max_body = reader.size(f"{path}.max_body", item["max_body"])
    _check_rule_consistency(reader, path, item, effect, anonymous, claims, identity)
    return IngressRule(
        name=reader.identifier(f"{path}.name", item.get("name")),
        effect=effect,
        methods=frozenset(
            _read_methods(reader, f"{path}.methods", item.get("methods", ["*"]))
        ),
        paths=_read_paths(reader, f"{path}.paths", item.get("paths")),
        anonymous=anonymous,
        claims=claims,
        max_body=max_body,
        line=reader.document.line_of(path),
    )


def _check_rule_consistency(
    reader: FieldReader,
    path: str,
    item: dict[str, Any],
    effect: str,
    anonymous: bool,
    claims: tuple[ClaimCondition, ...],
    identity: IdentityConfig,
) -> None:
    if effect == "deny":
        for allow_only in ("anonymous", "max_body"):
            if allow_only in item:
                reader.problem(f"{path}.{allow_only}", "applies to allow rules only")
    if anonymous and claims:
        reader.problem(
            f"{path}.claims", "an anonymous rule cannot also require token claims"
        )
    if effect == "allow" and not anonymous and not identity.issuers:
        reader.problem(
            path,
            "this rule needs a verified token, but identity.issuers names no "
            "issuer (add one, or mark the rule 'anonymous: true')",
        )


def _read_methods(reader: FieldReader, path: str, value: Any) -> list[str]:
    methods = reader.strings(path, value)
    for index, method in enumerate(methods):
        if method == "*" or _METHOD.match(method):
            continue
        hint = f" (write {method.upper()!r})" if _METHOD.match(method.upper()) else ""
        reader.problem(
            f"{path}[{index}]",
            f"{method!r} is not a method: upper-case like 'GET', or '*'{hint}",
        )
    return methods


def _read_paths(reader: FieldReader, path: str, value: Any) -> tuple[PathPattern, ...]:
    patterns = []
    for index, text in enumerate(reader.strings(path, value)):
        try:
            patterns.append(compile_path_pattern(text))
        except ValueError as exc:
            reader.problem(f"{path}[{index}]", str(exc))
    return tuple(patterns)


def _read_claims(
    reader: FieldReader, path: str, value: Any
) -> tuple[ClaimCondition, ...]:
    if not isinstance(value, dict):
        reader.problem(path, "expected a mapping of claim name to condition")
        return ()
    return tuple(
        condition
        for name, spec in value.items()
        if (condition := _read_claim(reader, f"{path}.{name}", str(name), spec))
    )


def _read_claim(
    reader: FieldReader, path: str, name: str, spec: Any
) -> ClaimCondition | None:
    if isinstance(spec, dict):
        item = reader.mapping(path, spec, {"contains"}, {"contains"})
        if item is None or "contains" not in item:
            return None
        return ClaimCondition(
            name, contains=_claim_value(reader, f"{path}.contains", item["contains"])
        )
    if isinstance(spec, list) and spec:
        values = tuple(
            _claim_value(reader, f"{path}[{index}]", entry)
            for index, entry in enumerate(spec)
        )
        return ClaimCondition(name, equals_any=values)
    reader.problem(
        path,
        "expected a list of accepted values ([a, b]) or {contains: value}, "
        f"got {spec!r}",
    )
    return None


def _claim_value(reader: FieldReader, path: str, value: Any) -> ClaimValue:
    if isinstance(value, str | int | float | bool):
        return value
    reader.problem(path, f"expected a string, number or boolean, got {value!r}")
    return ""


def read_egress_rules(reader: FieldReader, value: Any) -> tuple[EgressRule, ...]:
    items = reader.sequence("egress.rules", value)
    rules = [
        _read_egress_rule(reader, f"egress.rules[{index}]", item)
        for index, item in enumerate(items)
    ]
    reader.unique("egress.rules", [r.name if r else None for r in rules], "rule name")
    return tuple(rule for rule in rules if rule is not None)


def _read_egress_rule(reader: FieldReader, path: str, value: Any) -> EgressRule | None:
    item = reader.mapping(path, value, _EGRESS_FIELDS, {"name", "hosts"})
    if item is None:
        return None
    effect = reader.choice(f"{path}.effect", item.get("effect", "allow"), EFFECTS)
    if effect == "allow" and "ports" not in item:
        reader.problem(path, "an allow rule must name its ports (e.g. ports: [443])")
    hosts = [
        _read_host(reader, f"{path}.hosts[{index}]", text)
        for index, text in enumerate(reader.strings(f"{path}.hosts", item.get("hosts")))
    ]
    return EgressRule(
        name=reader.identifier(f"{path}.name", item.get("name")),
        effect=effect,
        hosts=tuple(host for host in hosts if host),
        ports=_read_ports(reader, f"{path}.ports", item.get("ports", [])),
        line=reader.document.line_of(path),
    )


def _read_ports(reader: FieldReader, path: str, value: Any) -> tuple[int, ...]:
    ports = []
    for index, port in enumerate(reader.sequence(path, value)):
        if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            ports.append(port)
        else:
            reader.problem(f"{path}[{index}]", f"expected a port 1-65535, got {port!r}")
    return tuple(ports)


def _read_host(reader: FieldReader, path: str, text: str) -> str:
    """Canonical form: lower-case punycode without trailing dot."""
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    name = name.rstrip(".") if name.endswith(".") and not name.endswith("..") else name
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        if wildcard:
            reader.problem(path, f"{text!r}: a wildcard cannot prefix an IP address")
            return ""
        return str(ipaddress.ip_address(name.strip("[]")))
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        reader.problem(path, f"{text!r} is not a valid host name: {exc}")
        return ""
    if not all(_HOST_LABEL.match(label) for label in ascii_name.split(".")):
        reader.problem(
            path,
            f"{text!r} is not a valid host name: exact name or '*.suffix' expected",
        )
        return ""
    return f"*.{ascii_name}" if wildcard else ascii_name
