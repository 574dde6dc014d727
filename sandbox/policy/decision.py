"""Ingress decisions: pure functions of the policy and one request.

Deny rules override allow rules; without a matching allow rule the
section's default applies. Every decision names the rule that made it (or
``default``) and a reason a person can read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox.policy.inputs import Identity, IngressRequest
from sandbox.policy.model import ClaimCondition, IngressRule, IngressSection

DEFAULT_RULE = "default"


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    rule: str
    reason: str
    # Refused only because no verified token came with the request (HTTP 401).
    needs_identity: bool = False
    max_body: int | None = None
    # The decision engine failed or did not answer (HTTP 503): never allow.
    unavailable: bool = False


def decide_ingress(section: IngressSection, request: IngressRequest) -> Decision:
    route = f"{request.method} {request.path}"
    for rule in section.rules:
        if rule.effect == "deny" and _applies(rule, request):
            return Decision(False, rule.name, f"rule {rule.name!r} denies {route}")
    first_refusal: Decision | None = None
    for rule in section.rules:
        if rule.effect != "allow" or not _route_matches(rule, request):
            continue
        refusal = _identity_refusal(rule, request.identity)
        if refusal is None:
            return Decision(
                True,
                rule.name,
                f"rule {rule.name!r} allows {route}",
                max_body=rule.max_body,
            )
        first_refusal = first_refusal or Decision(
            False,
            rule.name,
            f"rule {rule.name!r} matches {route} but {refusal}",
            needs_identity=request.identity is None,
        )
    return first_refusal or _default(section, route)


def _default(section: IngressSection, route: str) -> Decision:
    if section.default == "allow":
        return Decision(True, DEFAULT_RULE, f"no rule matches {route}; default allows")
    return Decision(False, DEFAULT_RULE, f"no rule allows {route}")


def _route_matches(rule: IngressRule, request: IngressRequest) -> bool:
    if "*" not in rule.methods and request.method not in rule.methods:
        return False
    return any(pattern.matches(request.path) for pattern in rule.paths)


def _applies(rule: IngressRule, request: IngressRequest) -> bool:
    if not _route_matches(rule, request):
        return False
    if not rule.claims:
        return True
    return (
        request.identity is not None
        and _identity_refusal(rule, request.identity) is None
    )


def _identity_refusal(rule: IngressRule, identity: Identity | None) -> str | None:
    """Why ``identity`` does not satisfy ``rule``, or None when it does."""
    if rule.anonymous:
        return None
    if identity is None:
        return "it needs a verified bearer token"
    for condition in rule.claims:
        failure = _claim_failure(condition, identity.claims)
        if failure:
            return failure
    return None


def _claim_failure(condition: ClaimCondition, claims: Any) -> str | None:
    if condition.claim not in claims:
        return f"it needs {condition.describe()} and the token has no such claim"
    value = claims[condition.claim]
    if condition.contains is not None:
        if isinstance(value, list) and any(
            _same(item, condition.contains) for item in value
        ):
            return None
    elif any(_same(value, accepted) for accepted in condition.equals_any):
        return None
    return f"it needs {condition.describe()}; the token has {_shown(value)}"


def _same(left: Any, right: Any) -> bool:
    # YAML and JSON both distinguish true from 1; so do we.
    return type(left) is type(right) and bool(left == right)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
