"""The JSON Schema of the policy format agrees with the loader.

Every example policy is valid for both, and each deliberately broken policy
is refused by both. The loader stays the authority; the schema only has to
never accept what the loader refuses in these cases, nor refuse an example.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sandbox.cli.main import main
from sandbox.cli.policy_schema import schema_text
from sandbox.errors import PolicyError
from sandbox.policy.loader import load_policy
from tests.support import AUDIENCE, ISSUER, TokenFactory

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(path.parent for path in (ROOT / "policies").glob("*/policy.yaml"))
SCHEMA_FILE = ROOT / "sandbox/policy/schema/policy-v1.schema.json"
SCHEMA_COMMENT = (
    "# yaml-language-server: $schema=../../sandbox/policy/schema/policy-v1.schema.json"
)
REMOVE = object()

VALID: dict[str, Any] = {
    "version": 1,
    "name": "schema-test",
    "mode": "enforce",
    "identity": {
        "leeway": "30s",
        "forward_token": False,
        "issuers": [
            {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["ES256"],
                "jwks": "keys/test.jwks.json",
            }
        ],
    },
    "ingress": {
        "default": "deny",
        "rules": [
            {"name": "health", "methods": ["GET"], "paths": ["/healthz"]},
            {
                "name": "summarize",
                "methods": ["POST"],
                "paths": ["/v1/summarize", "/v1/models/*/predict"],
                "claims": {"role": ["clinician", 1], "groups": {"contains": "onc"}},
                "max_body": "1MiB",
            },
            {"name": "no-admin", "effect": "deny", "paths": ["/admin/**"]},
        ],
    },
    "egress": {
        "default": "deny",
        "block_private_networks": True,
        "rules": [
            {
                "name": "reports",
                "hosts": ["api.partner.example"],
                "ports": [443],
                "schemes": ["https"],
                "methods": ["POST"],
                "paths": ["/v1/reports/**"],
                "max_request_body": 1024,
                "max_bytes_out": "10MiB/1h",
            },
            {
                "name": "metrics",
                "hosts": ["metrics.internal"],
                "ports": [8080],
                "allow_cidrs": ["10.20.0.0/16"],
            },
            {"name": "no-paste", "effect": "deny", "hosts": ["*.pastebin.example"]},
        ],
    },
    "audit": {"path": "audit/decisions.jsonl", "fsync": False},
}

# (case id, where in VALID, what to put there or REMOVE)
INVALID: list[tuple[str, tuple[str | int, ...], Any]] = [
    ("unknown-top-field", ("owner",), "acme"),
    ("unknown-identity-field", ("identity", "leway"), "30s"),
    ("unknown-issuer-field", ("identity", "issuers", 0, "audience"), "x"),
    ("unknown-ingress-rule-field", ("ingress", "rules", 0, "anonymus"), True),
    ("unknown-egress-rule-field", ("egress", "rules", 0, "method"), ["GET"]),
    ("unknown-audit-field", ("audit", "rotate"), "daily"),
    (
        "unknown-contains-form",
        ("ingress", "rules", 1, "claims", "groups"),
        {"contain": "onc"},
    ),
    ("hs256-algorithm", ("identity", "issuers", 0, "algorithms"), ["HS256"]),
    ("none-algorithm", ("identity", "issuers", 0, "algorithms"), ["none"]),
    ("bad-effect", ("ingress", "rules", 2, "effect"), "permit"),
    ("bad-egress-default", ("egress", "default"), "maybe"),
    ("bad-mode", ("mode",), "audit"),
    ("version-2", ("version",), 2),
    ("missing-rule-name", ("ingress", "rules", 0, "name"), REMOVE),
    ("missing-paths", ("ingress", "rules", 0, "paths"), REMOVE),
    ("missing-policy-name", ("name",), REMOVE),
    ("bad-name", ("name",), "acme notes"),
    ("bad-size", ("ingress", "rules", 1, "max_body"), "ten megabytes"),
    ("bad-duration", ("identity", "leeway"), "30"),
    ("budget-without-window", ("egress", "rules", 0, "max_bytes_out"), "10MiB"),
    ("anonymous-not-boolean", ("ingress", "rules", 0, "anonymous"), "yes"),
    ("port-as-string", ("egress", "rules", 1, "ports"), ["8080"]),
    ("port-out-of-range", ("egress", "rules", 1, "ports"), [70000]),
    ("lower-case-method", ("ingress", "rules", 0, "methods"), ["get"]),
    ("paths-not-a-list", ("ingress", "rules", 0, "paths"), "/healthz"),
    ("allow-rule-without-ports", ("egress", "rules", 1, "ports"), REMOVE),
    ("deny-rule-with-body-limit", ("egress", "rules", 2, "max_request_body"), 1),
    ("ws-scheme", ("egress", "rules", 0, "schemes"), ["wss"]),
    ("claim-value-a-mapping", ("ingress", "rules", 1, "claims", "role"), [{}]),
    ("anonymous-with-claims", ("ingress", "rules", 1, "anonymous"), True),
]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def jwks() -> dict[str, Any]:
    return TokenFactory().jwks


def schema_problems(
    validator: jsonschema.Draft202012Validator, document: Any
) -> list[str]:
    return [error.message for error in validator.iter_errors(document)]


def write(folder: Path, document: dict[str, Any], jwks: dict[str, Any]) -> Path:
    (folder / "keys").mkdir(parents=True, exist_ok=True)
    (folder / "keys" / "test.jwks.json").write_text(json.dumps(jwks))
    (folder / "policy.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


def mutated(where: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    parent: Any = document
    for key in where[:-1]:
        parent = parent[key]
    if value is REMOVE:
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    return document


@pytest.mark.parametrize("folder", EXAMPLES, ids=[folder.name for folder in EXAMPLES])
def test_every_example_is_valid_for_the_loader_and_the_schema(
    folder: Path, validator: jsonschema.Draft202012Validator
) -> None:
    text = (folder / "policy.yaml").read_text()

    load_policy(folder)

    assert schema_problems(validator, yaml.safe_load(text)) == []
    assert text.splitlines()[0] == SCHEMA_COMMENT


def test_the_reference_policy_of_these_cases_is_valid_for_both(
    tmp_path: Path, validator: jsonschema.Draft202012Validator, jwks: dict[str, Any]
) -> None:
    load_policy(write(tmp_path, VALID, jwks))

    assert schema_problems(validator, VALID) == []


@pytest.mark.parametrize(
    ("where", "value"),
    [(where, value) for _, where, value in INVALID],
    ids=[case for case, _, _ in INVALID],
)
def test_a_broken_policy_is_refused_by_the_loader_and_the_schema(
    tmp_path: Path,
    validator: jsonschema.Draft202012Validator,
    jwks: dict[str, Any],
    where: tuple[str | int, ...],
    value: Any,
) -> None:
    document = mutated(where, value)

    with pytest.raises(PolicyError):
        load_policy(write(tmp_path, document, jwks))
    assert schema_problems(validator, document) != []


def test_rego_deciding_ingress_leaves_no_ingress_section(
    validator: jsonschema.Draft202012Validator,
) -> None:
    document = mutated(("rego",), {"modules": ["ingress.rego"], "decides": ["ingress"]})

    assert schema_problems(validator, document) != []
    del document["ingress"]
    assert schema_problems(validator, document) == []


def test_the_schema_command_prints_the_shipped_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["policy", "schema"])

    printed = capsys.readouterr().out
    assert status == 0
    assert printed == schema_text() == SCHEMA_FILE.read_text()
    assert json.loads(printed)["$schema"].endswith("/draft/2020-12/schema")
