"""The YAML example and its Rego twin decide alike: allow, rule and status
agree on generated requests and identities (10,000 cases, reproducible)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.engines.base import read_decision
from sandbox.engines.embedded import CompiledRego
from sandbox.policy.decision import decide_ingress
from sandbox.policy.input_document import ingress_document
from sandbox.policy.inputs import Identity, IngressRequest
from sandbox.policy.loader import load_policy
from sandbox.policy.policy_tests import decision_status

ROOT = Path(__file__).resolve().parent.parent
YAML = load_policy(ROOT / "policies/acme-clinical-notes")
REGO = load_policy(ROOT / "policies/acme-clinical-notes-rego")
ENTRY = "data.sandbox.ingress.decision"

# The example's literals, near misses, and wildcards' edge cases: empty
# segments (trailing slash), look-alike prefixes, percent escapes.
SEGMENTS = st.sampled_from(
    [
        "v1",
        "summarize",
        "models",
        "predict",
        "m1",
        "admin",
        "users",
        "healthz",
        "admins",
        "v2",
        "summarize2",
        "%20",
        "a.b",
        "~x",
        "",
        "Admin",
        "HEALTHZ",
        "*",
        "**",
    ]
)
PREFIXES = st.sampled_from(
    [[], ["v1"], ["v1", "models"], ["admin"], ["v1", "models", "m1"]]
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "post"])
CLAIM_VALUES = st.one_of(
    st.sampled_from(["clinician", "researcher", "intern", "oncology", "Clinician"]),
    st.integers(-2, 2),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=16).filter(
        lambda x: not float(x).is_integer()
    ),
)
CLAIM_LISTS = st.lists(CLAIM_VALUES, max_size=3)


@st.composite
def paths(draw: st.DrawFn) -> str:
    segments = draw(PREFIXES) + draw(st.lists(SEGMENTS, max_size=4))
    # Interior empty segments never survive normalisation.
    inner = [s for s in segments[:-1] if s]
    return "/" + "/".join(inner + segments[-1:])


@st.composite
def identities(draw: st.DrawFn) -> Identity | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    claims: dict[str, Any] = {}
    for name in ("role", "groups"):
        kind = draw(st.sampled_from(["absent", "value", "list"]))
        if kind == "value":
            claims[name] = draw(CLAIM_VALUES)
        elif kind == "list":
            claims[name] = draw(CLAIM_LISTS)
    return Identity("https://login.acme-hospital.example", "s", claims)


@pytest.fixture(scope="module")
def twin() -> CompiledRego:
    assert REGO.rego is not None
    return CompiledRego(REGO.rego)


def rego_decides(twin: CompiledRego, request: IngressRequest) -> tuple[Any, ...]:
    value = twin.evaluate("ingress", json.dumps(ingress_document(request)))
    decision = read_decision(value, ENTRY)
    return decision.allow, decision.rule, decision_status(decision), decision.max_body


def yaml_decides(request: IngressRequest) -> tuple[Any, ...]:
    decision = decide_ingress(YAML.ingress, request)
    return decision.allow, decision.rule, decision_status(decision), decision.max_body


@settings(
    max_examples=10_000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(method=METHODS, path=paths(), identity=identities())
def test_yaml_and_rego_twin_decide_alike(
    twin: CompiledRego, method: str, path: str, identity: Identity | None
) -> None:
    request = IngressRequest(method, path, identity, "127.0.0.1")

    assert rego_decides(twin, request) == yaml_decides(request)


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/admin", "no-admin"),
        ("/admin/", "no-admin"),
        ("/admin/a/b/", "no-admin"),
        ("/adminx", "default"),
        ("/v1/models//predict", "default"),
        ("/v1/models/m/predict/", "default"),
    ],
)
def test_wildcard_edges_agree(twin: CompiledRego, path: str, rule: str) -> None:
    request = IngressRequest("POST", path)

    assert rego_decides(twin, request)[1] == yaml_decides(request)[1] == rule
