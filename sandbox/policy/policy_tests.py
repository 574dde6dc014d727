"""A policy's own test cases (``tests.yaml`` in its folder), and their run.

::

    cases:
      - name: a clinician in oncology may summarise
        request: {method: POST, path: /v1/summarize, headers: {x-trace: t1}}
        identity: {subject: dr-alice, claims: {role: clinician, groups: [oncology]}}
        expect: {allow: true, rule: clinicians-summarize}
      - name: the model CDN is reachable
        direction: egress
        destination: {host: eu.cdn.example.com, port: 443, addresses: [203.0.113.7]}
        expect: {allow: true, rule: model-weights}

``identity`` absent or null means no verified token. ``expect`` names
``allow`` and, optionally, ``rule``, ``status`` (401 or 403 for a denial,
503 when the engine failed) and ``max_body``. The file is validated like the
policy, with ``file:line: field`` errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandbox.engines.base import DecisionEngine
from sandbox.errors import PolicyError, PolicyProblem, RequestPathError
from sandbox.policy.decision import Decision
from sandbox.policy.fields import FieldReader
from sandbox.policy.input_document import (
    DIRECTIONS,
    EGRESS,
    INGRESS,
    egress_document,
    header_fields,
    ingress_document,
    ingress_request,
)
from sandbox.policy.inputs import Identity, IngressRequest
from sandbox.policy.model import Policy
from sandbox.policy.normalize import normalize_target
from sandbox.policy.source import compose_located

TESTS_FILE = "tests.yaml"
_CASE_FIELDS = {"name", "direction", "request", "identity", "destination", "expect"}
_REQUEST_FIELDS = {"method", "path", "headers", "body_length", "source"}
_DESTINATION_FIELDS = {"scheme", "host", "port", "addresses", "declared"}
_IDENTITY_FIELDS = {"issuer", "subject", "claims"}
_EXPECT_FIELDS = {"allow", "rule", "status", "max_body"}
_STATUSES = (401, 403, 503)


@dataclass(frozen=True, slots=True)
class Expected:
    allow: bool
    rule: str | None = None
    status: int | None = None
    max_body: int | None = None

    def describe(self) -> str:
        return _describe(self.allow, self.rule, self.status)


@dataclass(frozen=True, slots=True)
class TestCase:
    name: str
    line: int | None
    direction: str
    # The input document, or the reason the request is refused before any
    # rule is asked (a path the sandbox cannot normalise).
    document: dict[str, Any] | None
    refused: str
    expected: Expected


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: TestCase
    decision: Decision

    @property
    def status(self) -> int | None:
        return decision_status(self.decision)

    @property
    def mismatch(self) -> str:
        """What differs from the expected decision; empty when it passed."""
        expected, got = self.case.expected, self.decision
        differs = (
            expected.allow != got.allow
            or (expected.rule is not None and expected.rule != got.rule)
            or (expected.status is not None and expected.status != self.status)
            or (expected.max_body is not None and expected.max_body != got.max_body)
        )
        if not differs:
            return ""
        came = _describe(got.allow, got.rule, self.status)
        if expected.max_body is not None:
            came += f" with max_body {got.max_body!r}"
        return f"expected {expected.describe()}, got {came}: {got.reason}"


def decision_status(decision: Decision) -> int | None:
    """The HTTP status a refusal is sent with; None for an allow."""
    if decision.unavailable:
        return 503
    if decision.allow:
        return None
    return 401 if decision.needs_identity else 403


def load_cases(policy: Policy) -> list[TestCase]:
    """The cases in the policy folder's tests.yaml; PolicyError when invalid."""
    path = Path(policy.root) / TESTS_FILE
    shown = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = PolicyProblem(shown, None, "", f"cannot read: {exc.strerror or exc}")
        raise PolicyError([problem]) from exc
    reader = _reader(raw, shown)
    cases = _read_cases(reader, policy)
    if reader.problems:
        raise PolicyError(sorted(reader.problems, key=lambda p: p.line or 0))
    return cases


async def run_cases(
    engine: DecisionEngine, cases: Sequence[TestCase]
) -> list[CaseResult]:
    return [CaseResult(case, await _decide(engine, case)) for case in cases]


async def _decide(engine: DecisionEngine, case: TestCase) -> Decision:
    if case.document is None:
        return Decision(False, "-", case.refused)
    if case.direction == EGRESS:
        return await engine.decide_egress(case.document)
    return await engine.decide_ingress(ingress_request(case.document))


def _describe(allow: bool, rule: str | None, status: int | None) -> str:
    text = "allow" if allow else "deny"
    if status is not None and not allow:
        text += f" {status}"
    return f"{text} by rule {rule!r}" if rule is not None else text


def _reader(raw: bytes, shown: str) -> FieldReader:
    try:
        document = compose_located(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = PolicyProblem(shown, line, "", f"not valid YAML: {exc}")
        raise PolicyError([problem]) from exc
    return FieldReader(shown, document, raw)


def _read_cases(reader: FieldReader, policy: Policy) -> list[TestCase]:
    top = reader.mapping("", reader.document.value, {"cases"}, {"cases"})
    if top is None:
        return []
    items = reader.sequence("cases", top.get("cases"))
    cases = [
        _read_case(reader, f"cases[{index}]", item, policy)
        for index, item in enumerate(items)
    ]
    reader.unique("cases", [case.name if case else None for case in cases], "name")
    return [case for case in cases if case is not None]


def _read_case(
    reader: FieldReader, path: str, value: Any, policy: Policy
) -> TestCase | None:
    item = reader.mapping(path, value, _CASE_FIELDS, {"name", "expect"})
    if item is None:
        return None
    direction = reader.choice(
        f"{path}.direction", item.get("direction", INGRESS), DIRECTIONS
    )
    expected = _read_expected(reader, f"{path}.expect", item.get("expect"))
    if direction == EGRESS:
        document, refused = _egress_case(reader, path, item), ""
    else:
        document, refused = _ingress_case(reader, path, item, policy)
    return TestCase(
        name=reader.string(f"{path}.name", item.get("name")),
        line=reader.document.line_of(path),
        direction=direction,
        document=document,
        refused=refused,
        expected=expected,
    )


def _ingress_case(
    reader: FieldReader, path: str, item: dict[str, Any], policy: Policy
) -> tuple[dict[str, Any] | None, str]:
    where = f"{path}.request"
    request = reader.mapping(
        where, item.get("request"), _REQUEST_FIELDS, {"method", "path"}
    )
    if request is None:
        return None, ""
    raw_path = reader.string(f"{where}.path", request.get("path"))
    try:
        target = normalize_target(raw_path)
    except RequestPathError as exc:
        return None, f"the request path is refused before any rule: {exc}"
    asked = IngressRequest(
        method=reader.string(f"{where}.method", request.get("method")),
        path=target.path,
        identity=_read_identity(reader, f"{path}.identity", item, policy),
        source=str(request.get("source", "127.0.0.1")),
        query=target.query,
        headers=_read_headers(reader, f"{where}.headers", request.get("headers", {})),
        body_length=_optional_int(reader, f"{where}.body_length", request),
    )
    return ingress_document(asked), ""


def _egress_case(
    reader: FieldReader, path: str, item: dict[str, Any]
) -> dict[str, Any] | None:
    where = f"{path}.destination"
    destination = reader.mapping(
        where, item.get("destination"), _DESTINATION_FIELDS, {"host", "port"}
    )
    request = item.get("request")
    if destination is None:
        return None
    if request is not None:
        request = reader.mapping(
            f"{path}.request", request, _REQUEST_FIELDS - {"source"}, {"method"}
        )
    port = destination.get("port")
    if type(port) is not int:
        reader.problem(f"{where}.port", f"expected a port number, got {port!r}")
    return egress_document(
        host=reader.string(f"{where}.host", destination.get("host")),
        port=port if type(port) is int else 0,
        addresses=reader.strings(
            f"{where}.addresses", destination.get("addresses", ["203.0.113.1"])
        ),
        scheme=destination.get("scheme"),
        method=(request or {}).get("method"),
        path=(request or {}).get("path"),
        headers=_read_headers(
            reader, f"{path}.request.headers", (request or {}).get("headers", {})
        ).items(),
        declared=reader.boolean(
            f"{where}.declared", destination.get("declared", False)
        ),
    )


def _read_identity(
    reader: FieldReader, path: str, item: dict[str, Any], policy: Policy
) -> Identity | None:
    value = item.get("identity")
    if value is None:
        return None
    identity = reader.mapping(path, value, _IDENTITY_FIELDS, {"subject"})
    if identity is None:
        return None
    claims = identity.get("claims", {})
    if not isinstance(claims, dict):
        reader.problem(f"{path}.claims", "expected a mapping of claim to value")
        claims = {}
    issuers = policy.identity.issuers
    issuer = identity.get("issuer", issuers[0].issuer if issuers else "test")
    subject = reader.string(f"{path}.subject", identity.get("subject"))
    return Identity(str(issuer), subject, claims)


def _read_headers(reader: FieldReader, path: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        reader.problem(path, "expected a mapping of header name to value")
        return {}
    return header_fields((str(name), str(text)) for name, text in value.items())


def _read_expected(reader: FieldReader, path: str, value: Any) -> Expected:
    expect = reader.mapping(path, value, _EXPECT_FIELDS, {"allow"})
    if expect is None:
        return Expected(False)
    allow = reader.boolean(f"{path}.allow", expect.get("allow"))
    status = None
    if "status" in expect:
        status = reader.choice(f"{path}.status", expect["status"], _STATUSES)
        if allow:
            reader.problem(f"{path}.status", "a status applies to denials only")
    rule = expect.get("rule")
    if rule is not None:
        rule = reader.string(f"{path}.rule", rule)
    return Expected(
        allow, rule, status, _optional_int(reader, f"{path}.max_body", expect)
    )


def _optional_int(reader: FieldReader, path: str, item: dict[str, Any]) -> int | None:
    key = path.rsplit(".", 1)[-1]
    if key not in item or item[key] is None:
        return None
    value = item[key]
    if type(value) is not int or value < 0:
        reader.problem(path, f"expected a whole number of bytes, got {value!r}")
        return None
    return value
