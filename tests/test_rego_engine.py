"""Rego policies: the rego section, the input document, and the embedded
engine failing closed on every kind of wrong answer."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sandbox.engines.base import read_decision
from sandbox.engines.embedded import EmbeddedRegoEngine
from sandbox.errors import PolicyError
from sandbox.policy.input_document import (
    egress_document,
    header_fields,
    ingress_document,
)
from sandbox.policy.inputs import Identity, IngressRequest
from sandbox.policy.loader import load_policy
from sandbox.policy.model import Policy

ROOT = Path(__file__).resolve().parent.parent
TWIN = ROOT / "policies/acme-clinical-notes-rego"
HEADER = """\
version: 1
name: rego-test
rego:
  modules: [policy.rego]
  decides: [ingress]
"""


def rego_policy(folder: Path, module: str, header: str = HEADER) -> Policy:
    (folder / "policy.rego").write_text(textwrap.dedent(module))
    (folder / "policy.yaml").write_text(header)
    return load_policy(folder)


async def decide(policy: Policy, request: IngressRequest | None = None) -> Any:
    assert policy.rego is not None
    engine = EmbeddedRegoEngine(policy.rego, workers=1)
    await engine.start()
    try:
        return await engine.decide_ingress(request or IngressRequest("GET", "/a"))
    finally:
        await engine.close()


def test_ingress_document_is_version_1_with_segments_and_no_credentials() -> None:
    request = IngressRequest(
        "POST",
        "/v1/notes/",
        Identity("https://i", "alice", {"role": "clinician"}),
        "10.0.0.1",
        query="x=1",
        headers=header_fields(
            [("Accept", "a"), ("accept", "b"), ("Authorization", "Bearer t")]
        ),
        body_length=12,
    )

    assert ingress_document(request) == {
        "version": 1,
        "direction": "ingress",
        "request": {
            "method": "POST",
            "path": "/v1/notes/",
            "segments": ["v1", "notes", ""],
            "query": "x=1",
            "headers": {"accept": "a, b"},
            "body_length": 12,
        },
        "identity": {
            "issuer": "https://i",
            "subject": "alice",
            "claims": {"role": "clinician"},
        },
        "source": {"address": "10.0.0.1"},
    }


def test_egress_document_has_no_request_until_one_is_seen() -> None:
    connect = egress_document(host="a.example", port=443, addresses=["192.0.2.1"])
    request = egress_document(
        host="a.example",
        port=443,
        addresses=["192.0.2.1"],
        scheme="https",
        method="GET",
        path="/",
        headers=[("Proxy-Authorization", "x"), ("X-A", "1")],
    )

    assert connect["request"] is None and connect["destination"]["port"] == 443
    assert request["request"] == {
        "method": "GET",
        "path": "/",
        "segments": [""],
        "query": "",
        "headers": {"x-a": "1"},
    }


def test_rego_files_and_tests_join_the_bundle_hash() -> None:
    policy = load_policy(TWIN)

    assert [file.path for file in policy.files] == [
        "ingress.rego",
        "keys/acme.jwks.json",
        "paths.rego",
        "policy.yaml",
        "rules.json",
        "tests.yaml",
    ]


def test_hash_changes_with_a_byte_of_a_module(tmp_path: Path) -> None:
    folder = tmp_path / "twin"
    shutil.copytree(TWIN, folder)
    before = load_policy(folder).hash
    module = folder / "paths.rego"
    module.write_text(module.read_text() + "\n")

    assert load_policy(folder).hash != before


def test_syntax_error_names_module_and_line(policy_dir: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        rego_policy(policy_dir, "package sandbox.ingress\n\ndecision if {\n  1 ==\n}\n")

    problem = caught.value.problems[0]
    assert problem.file.endswith("policy.rego") and problem.line == 4
    assert problem.message.startswith("Rego: ")


def test_policy_check_shows_a_rego_syntax_error_with_file_and_line(
    policy_dir: Path,
) -> None:
    (policy_dir / "policy.rego").write_text("package sandbox.ingress\n\nx := [\n")
    (policy_dir / "policy.yaml").write_text(HEADER)

    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "policy", "check", str(policy_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )

    assert result.returncode == 1
    assert f"{policy_dir}/policy.rego:3: Rego: " in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "rego:\n  modules: [policy.rego]\n  decides: [ingress]\n"
            "ingress:\n  rules: []\n",
            "ingress: ingress is decided by Rego",
        ),
        ("rego:\n  modules: [policy.rego]\n  decides: [sideways]\n", "sideways"),
        ("rego:\n  modules: [policy.yaml]\n  decides: [ingress]\n", "ending in .rego"),
        ("rego:\n  modules: [../x.rego]\n  decides: [ingress]\n", "inside the policy"),
        (
            "rego:\n  modules: [policy.rego]\n  data: [d.json]\n  decides: [ingress]\n",
            "d.json:2: not valid JSON",
        ),
        ("rego:\n  modules: [policy.rego]\n  decide: [ingress]\n", "unknown field"),
    ],
)
def test_rego_section_errors_name_the_field(
    policy_dir: Path, section: str, expected: str
) -> None:
    (policy_dir / "policy.rego").write_text("package sandbox.ingress\n")
    (policy_dir / "d.json").write_text("{\n  oops\n}\n")
    (policy_dir / "policy.yaml").write_text("version: 1\nname: t\n" + section)

    with pytest.raises(PolicyError) as caught:
        load_policy(policy_dir)

    assert expected in str(caught.value)


RUNTIME_FAILURES = [
    (
        """\
        package sandbox.ingress
        decision := {"allow": true, "reason": "a"}
        decision := {"allow": false, "reason": "b"}
        """,
        "failed to evaluate",
        True,
    ),
    (
        """\
        package sandbox.ingress
        decision := {"allow": true, "reason": sprintf("%v", [to_number("x")])}
        """,
        "failed to evaluate",
        True,
    ),
    ("package sandbox.ingress\nother := 1\n", "is undefined", False),
    (
        'package sandbox.ingress\ndecision := {"allow": "yes", "reason": "r"}\n',
        "gave allow 'yes'",
        False,
    ),
    ('package sandbox.ingress\ndecision := {"allow": true}\n', "gave reason", False),
    ("package sandbox.ingress\ndecision := [true]\n", "expected an object", False),
    (
        'package sandbox.ingress\ndecision := {"allow": true, "reason": "r", '
        '"max_bdy": 1}\n',
        "unknown fields",
        False,
    ),
    (
        'package sandbox.ingress\ndecision := {"allow": false, "reason": "r", '
        '"status": 500}\n',
        "expected 401 or 403",
        False,
    ),
]


@pytest.mark.parametrize(("module", "reason_part", "unavailable"), RUNTIME_FAILURES)
async def test_every_wrong_answer_is_a_deny_with_its_reason(
    policy_dir: Path, module: str, reason_part: str, unavailable: bool
) -> None:
    policy = await asyncio.to_thread(rego_policy, policy_dir, module)

    decision = await decide(policy)

    assert decision.allow is False and decision.rule == "engine"
    assert reason_part in decision.reason
    assert decision.unavailable is unavailable


async def test_a_valid_answer_keeps_rule_status_and_body_limit(
    policy_dir: Path,
) -> None:
    module = """\
        package sandbox.ingress
        decision := {"allow": false, "reason": "no token", "rule": "r", "status": 401}
        """

    policy = await asyncio.to_thread(rego_policy, policy_dir, module)

    decision = await decide(policy)

    assert (decision.allow, decision.rule, decision.needs_identity) == (
        False,
        "r",
        True,
    )


def test_read_decision_defaults_the_rule_to_the_entry_point() -> None:
    decision = read_decision({"allow": True, "reason": "ok", "max_body": 5}, "here")

    assert (decision.rule, decision.max_body) == ("here", 5)


async def test_twin_gives_the_reasons_the_yaml_engine_gives() -> None:
    policy = await asyncio.to_thread(load_policy, TWIN)
    identity = Identity("i", "s", {"role": "intern", "groups": ["oncology"]})

    decision = await decide(policy, IngressRequest("POST", "/v1/summarize", identity))

    assert decision.reason == (
        "rule 'clinicians-summarize' matches POST /v1/summarize but it needs claim "
        "'role' to be one of ['clinician', 'researcher']; the token has 'intern'"
    )


def test_input_schema_is_valid_json() -> None:
    schema = json.loads((ROOT / "docs/input-document.schema.json").read_text())

    assert schema["properties"]["version"]["const"] == 1
