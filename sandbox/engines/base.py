"""The decision engine interface, and how a Rego answer becomes a Decision.

An engine takes an input document (:mod:`sandbox.policy.input_document`)
and returns a :class:`~sandbox.policy.decision.Decision`. It never raises
for a request: whatever goes wrong becomes a deny whose reason says what.

A Rego entry point (``data.sandbox.<direction>.decision``) must give an
object ``{"allow": bool, "reason": str, "rule"?: str, "status"?: 401|403,
"max_body"?: int}`` for ingress, ``{"allow": bool, "reason": str,
"rule"?: str, "intercept"?: bool}`` for egress; anything else is a deny.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.policy.decision import Decision
from sandbox.policy.input_document import EGRESS, INGRESS
from sandbox.policy.inputs import IngressRequest

# The rule named by denials that no policy rule made.
ENGINE_RULE = "engine"
_FIELDS = {
    INGRESS: frozenset({"allow", "reason", "rule", "status", "max_body"}),
    EGRESS: frozenset({"allow", "reason", "rule", "intercept"}),
}
_DENY_STATUSES = (401, 403)


class EngineStartError(RuntimeError):
    """An engine cannot start, e.g. OPA refused the bundle or holds others."""


@dataclass(frozen=True, slots=True)
class EgressAnswer(Decision):
    """An egress decision that may ask to see the requests inside a tunnel."""

    # An allowed CONNECT whose requests are each decided again (TLS intercepted).
    intercept: bool = False


class DecisionEngine(Protocol):
    """Decides on input documents; ``start`` before use, ``close`` after."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def decide_ingress(self, request: IngressRequest) -> Decision: ...

    async def decide_egress(self, document: dict[str, Any]) -> Decision: ...


def unavailable(reason: str) -> Decision:
    """The engine failed or did not answer: refuse with 503, never allow."""
    return Decision(False, ENGINE_RULE, reason, unavailable=True)


def invalid(where: str, problem: str) -> Decision:
    return Decision(False, ENGINE_RULE, f"{where} {problem}, so the request is denied")


def read_decision(value: object, where: str, direction: str = INGRESS) -> Decision:
    """The Decision ``value`` (a Rego result) stands for, or a deny saying why.

    ``where`` names the entry point, for reasons: ``data.sandbox.ingress.decision``.
    An egress answer is an :class:`EgressAnswer`.
    """
    if value is None:
        return invalid(where, "is undefined")
    if not isinstance(value, Mapping):
        return invalid(where, f"gave {_kind(value)}, expected an object")
    problem = _decision_problem(value, _FIELDS[direction])
    if problem:
        return invalid(where, problem)
    allow: bool = value["allow"]
    if direction == EGRESS:
        return EgressAnswer(
            allow=allow,
            rule=value.get("rule", where),
            reason=value["reason"],
            intercept=value.get("intercept", False),
        )
    return Decision(
        allow=allow,
        rule=value.get("rule", where),
        reason=value["reason"],
        needs_identity=value.get("status") == 401,
        max_body=value.get("max_body"),
    )


def _decision_problem(value: Mapping[str, Any], fields: frozenset[str]) -> str:
    unknown = sorted(set(value) - fields)
    if unknown:
        return (
            f"gave unknown fields {unknown!r} (expected: {', '.join(sorted(fields))})"
        )
    if not isinstance(value.get("allow"), bool):
        return f"gave allow {_shown(value, 'allow')}, expected true or false"
    if not isinstance(value.get("reason"), str) or not value["reason"]:
        return f"gave reason {_shown(value, 'reason')}, expected a non-empty string"
    if "rule" in value and (not isinstance(value["rule"], str) or not value["rule"]):
        return f"gave rule {value['rule']!r}, expected a non-empty string"
    return (
        _status_problem(value) or _max_body_problem(value) or _intercept_problem(value)
    )


def _status_problem(value: Mapping[str, Any]) -> str:
    if "status" not in value:
        return ""
    status = value["status"]
    if value["allow"]:
        return f"gave status {status!r} with allow true; status is for denials"
    if type(status) is not int or status not in _DENY_STATUSES:
        return f"gave status {status!r}, expected 401 or 403"
    return ""


def _max_body_problem(value: Mapping[str, Any]) -> str:
    if "max_body" not in value:
        return ""
    limit = value["max_body"]
    if type(limit) is not int or limit < 0:
        return f"gave max_body {limit!r}, expected a whole number of bytes"
    return ""


def _intercept_problem(value: Mapping[str, Any]) -> str:
    if "intercept" not in value:
        return ""
    intercept = value["intercept"]
    if not isinstance(intercept, bool):
        return f"gave intercept {intercept!r}, expected true or false"
    if intercept and not value["allow"]:
        return "gave intercept true with allow false; intercept is for allows"
    return ""


def _shown(value: Mapping[str, Any], key: str) -> str:
    return repr(value[key]) if key in value else "nothing"


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]
