"""Reading of ingress rules into their compiled, validated form.

Egress rules are read by :mod:`sandbox.policy.egress_rules`.
"""

from __future__ import annotations

from typing import Any

from sandbox.policy.fields import FieldReader
from sandbox.policy.limits import read_quota, read_rate
from sandbox.policy.model import (
    EFFECTS,
    ClaimCondition,
    ClaimValue,
    IdentityConfig,
    IngressRule,
)

_INGRESS_FIELDS = {
    "name",
    "effect",
    "methods",
    "paths",
    "anonymous",
    "claims",
    "max_body",
    "rate",
    "quota",
}


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
    rate = quota = None
    if "rate" in item:
        rate = read_rate(reader, f"{path}.rate", item["rate"], anonymous)
    if "quota" in item:
        quota = read_quota(reader, f"{path}.quota", item["quota"], anonymous)
    return IngressRule(
        name=reader.identifier(f"{path}.name", item.get("name")),
        effect=effect,
        methods=frozenset(
            reader.methods(
                f"{path}.methods", item.get("methods", ["*"]), allow_any=True
            )
        ),
        paths=reader.path_patterns(f"{path}.paths", item.get("paths")),
        anonymous=anonymous,
        claims=claims,
        max_body=max_body,
        rate=rate,
        quota=quota,
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
        for allow_only in ("anonymous", "max_body", "rate", "quota"):
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
