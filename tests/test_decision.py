"""Ingress decisions as a pure function: rule kinds, precedence, reasons."""

from __future__ import annotations

import pytest

from sandbox.policy.decision import decide_ingress
from sandbox.policy.inputs import Identity, IngressRequest
from sandbox.policy.model import ClaimCondition, IngressRule, IngressSection
from sandbox.policy.paths import compile_path_pattern


def rule(name: str, paths: list[str], **fields: object) -> IngressRule:
    return IngressRule(
        name=name,
        effect=fields.pop("effect", "allow"),  # type: ignore[arg-type]
        methods=frozenset(fields.pop("methods", ["*"])),  # type: ignore[arg-type]
        paths=tuple(compile_path_pattern(path) for path in paths),
        **fields,  # type: ignore[arg-type]
    )


SECTION = IngressSection(
    rules=(
        rule("open", ["/public/**"], anonymous=True, methods=["GET"]),
        rule(
            "staff", ["/staff"], claims=(ClaimCondition("role", equals_any=("staff",)),)
        ),
        rule("flagged", ["/x"], claims=(ClaimCondition("flags", contains=True),)),
        rule(
            "no-interns",
            ["/staff"],
            effect="deny",
            claims=(ClaimCondition("level", equals_any=("intern",)),),
        ),
        rule("locked", ["/public/secret"], effect="deny"),
    )
)


def ask(method: str, path: str, **claims: object) -> tuple[bool, str, bool]:
    identity = Identity("https://i", "s", claims) if claims else None
    decision = decide_ingress(SECTION, IngressRequest(method, path, identity))
    return decision.allow, decision.rule, decision.needs_identity


@pytest.mark.parametrize(
    ("request_", "outcome"),
    [
        (("GET", "/public/a"), (True, "open", False)),
        (("POST", "/public/a"), (False, "default", False)),
        (("GET", "/public/secret"), (False, "locked", False)),
        (("GET", "/staff"), (False, "staff", True)),
        (("GET", "/nowhere"), (False, "default", False)),
    ],
)
def test_anonymous_requests(
    request_: tuple[str, str], outcome: tuple[bool, str, bool]
) -> None:
    assert ask(*request_) == outcome


def test_claim_equal_to_an_accepted_value_allows() -> None:
    assert ask("GET", "/staff", role="staff") == (True, "staff", False)


def test_deny_rule_with_claims_applies_only_to_matching_callers() -> None:
    assert ask("GET", "/staff", role="staff", level="intern") == (
        False,
        "no-interns",
        False,
    )
    assert ask("GET", "/staff", role="staff", level="senior") == (True, "staff", False)


def test_claim_types_are_compared_strictly() -> None:
    # true and 1 are different JSON values; a policy saying true means true.
    assert ask("GET", "/x", flags=[1])[0] is False
    assert ask("GET", "/x", flags=[True])[0] is True


def test_default_allow_is_honoured_and_named() -> None:
    section = IngressSection(
        default="allow", rules=(rule("locked", ["/a"], effect="deny"),)
    )

    decision = decide_ingress(section, IngressRequest("GET", "/b"))

    assert (decision.allow, decision.rule) == (True, "default")
    assert decision.reason == "no rule matches GET /b; default allows"


def test_reason_names_the_claim_and_the_value_that_failed() -> None:
    decision = decide_ingress(
        SECTION, IngressRequest("GET", "/staff", Identity("i", "s", {"role": "guest"}))
    )

    assert decision.reason == (
        "rule 'staff' matches GET /staff but it needs claim 'role' to be one of "
        "['staff']; the token has 'guest'"
    )
