"""``sandbox policy explain``: the examples in plain language, and each risk
flagged with the rule it sits in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.cli.main import main
from sandbox.policy.explain import Account, explain
from sandbox.policy.loader import load_policy
from tests.support import write_policy

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


def sentences(account: Account) -> list[str]:
    return [sentence for section in account.sections for sentence in section.sentences]


def risks(account: Account) -> set[tuple[str, str]]:
    return {(risk.kind, risk.where) for risk in account.risks}


def run_explain(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    status = main(["policy", "explain", *args])

    assert status == 0
    return capsys.readouterr().out


def test_the_acme_example_says_who_may_call_what() -> None:
    account = explain(load_policy(POLICIES / "acme-clinical-notes"))

    said = sentences(account)
    assert "Rule 'health' allows GET on /healthz to anyone, without a token." in said
    assert (
        "Rule 'clinicians-summarize' allows POST on /v1/summarize, "
        "/v1/models/*/predict to callers whose verified token has 'role' equal "
        "to 'clinician' or 'researcher' and 'groups' containing 'oncology', "
        "with bodies up to 1 MiB." in said
    )
    assert "Rule 'no-admin' denies any method on /admin/** to everyone." in said
    assert "Any other request is refused (default: deny)." in said
    assert "Clock leeway on exp, nbf and iat: 30s." in said
    assert "Decisions are recorded in audit/decisions.jsonl (fsync off)." in said
    assert risks(account) == {("wildcard-host", "egress rule 'model-weights'")}


def test_the_egress_example_says_where_the_app_may_connect() -> None:
    account = explain(load_policy(POLICIES / "egress-example"))

    said = sentences(account)
    assert (
        "Rule 'model-weights' allows connections to models.example.com, "
        "*.cdn.example.com on port 443; TLS passes through untouched." in said
    )
    assert (
        "Rule 'reports-api' allows connections to api.partner.example on port "
        "443; the sandbox looks inside TLS and allows https POST on "
        "/v1/reports/**; request bodies up to 1 MiB; at most 10 MiB per "
        "destination per 1h." in said
    )
    assert (
        "Rule 'no-pastebin' denies connections to *.pastebin.example on any port."
        in said
    )
    assert risks(account) == {
        ("wildcard-host", "egress rule 'model-weights'"),
        ("allow-cidrs", "egress rule 'internal-metrics'"),
    }


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        (
            "acme-clinical-notes-rego",
            "Rego decides inbound requests, with the modules ingress.rego, "
            "paths.rego (data: rules.json).",
        ),
        (
            "egress-example-rego",
            "Rego decides outbound connections, with the modules egress.rego "
            "(data: destinations.json).",
        ),
    ],
)
def test_a_rego_decided_direction_names_its_modules(folder: str, expected: str) -> None:
    account = explain(load_policy(POLICIES / folder))

    assert expected in sentences(account)


def test_the_terminal_rendering_lists_sections_and_risks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_explain(capsys, str(POLICIES / "acme-clinical-notes"))

    assert out.startswith("Policy acme-clinical-notes  sha256:")
    assert "\nIngress: who may call the app\n" in out
    assert "  ! egress rule 'model-weights': host '*.cdn.example.com'" in out


def test_the_markdown_rendering_has_headings_and_escapes_wildcards(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_explain(capsys, str(POLICIES / "egress-example"), "--format", "md")

    assert out.startswith("# Policy `egress-example`\n")
    assert "\n## Egress: where the app may connect\n" in out
    assert "- **egress rule 'model-weights'**: host '\\*.cdn.example.com'" in out


def test_an_invalid_policy_is_reported_not_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text("version: 1\nname: x\nmode: loud\n")

    status = main(["policy", "explain", str(tmp_path)])

    assert status == 1
    assert "mode: expected one of ['enforce', 'report']" in capsys.readouterr().err


RISKY = """\
mode: report
ingress:
  default: allow
  rules:
    - name: open-upload
      methods: [GET, POST]
      paths: [/upload]
      anonymous: true
    - name: open-everything
      methods: ["*"]
      paths: [/public/**]
      anonymous: true
    - name: public-page
      methods: [GET]
      paths: [/public/page, /public/a/*]
      claims:
        role: [reader]
    - name: admin-tools
      methods: [GET]
      paths: [/admin, /admin/tools/**]
    - name: no-admin
      effect: deny
      paths: [/admin/**]
egress:
  default: allow
  block_private_networks: false
  rules:
    - name: any-cdn
      hosts: ["*.cdn.example"]
      ports: [443]
    - name: lan
      hosts: [db.internal]
      ports: [5432]
      allow_cidrs: [192.168.0.0/16]
"""


@pytest.fixture
def risky(tmp_path: Path, tokens: Any) -> Account:
    return explain(write_policy(tmp_path, RISKY, tokens.jwks))


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("report-mode", "mode"),
        ("ingress-default-allow", "ingress.default"),
        ("egress-default-allow", "egress.default"),
        ("private-networks-open", "egress.block_private_networks"),
        ("anonymous-write", "ingress rule 'open-upload'"),
        ("anonymous-write", "ingress rule 'open-everything'"),
        ("redundant", "ingress rule 'public-page'"),
        ("shadowed", "ingress rule 'admin-tools'"),
        ("wildcard-host", "egress rule 'any-cdn'"),
        ("allow-cidrs", "egress rule 'lan'"),
    ],
)
def test_a_risky_setting_is_flagged_with_its_rule(
    risky: Account, kind: str, where: str
) -> None:
    assert (kind, where) in risks(risky)


def test_the_risky_policy_raises_no_other_flag(risky: Account) -> None:
    assert len(risky.risks) == 10


def test_a_long_leeway_is_flagged(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nname: lenient\nidentity:\n  leeway: 10m\n"
    )

    account = explain(load_policy(tmp_path))

    assert risks(account) == {("long-leeway", "identity.leeway")}
    assert account.risks[0].message.startswith("a leeway of 10m (over 5 minutes)")


UNSURE = """\
ingress:
  rules:
    - name: one-segment
      methods: [GET]
      paths: [/v1/*]
    - name: concrete
      methods: [GET]
      paths: [/v1/items]
    - name: token-only
      methods: [GET]
      paths: [/v2/**]
    - name: anonymous-below
      methods: [GET]
      paths: [/v2/x]
      anonymous: true
    - name: deny-for-some
      effect: deny
      paths: [/v3/**]
      claims:
        role: [guest]
    - name: v3
      methods: [GET]
      paths: [/v3/x]
    - name: limited
      methods: [GET]
      paths: [/v4/**]
      max_body: 1KiB
    - name: v4
      methods: [GET]
      paths: [/v4/x]
    - name: prefix-lookalike
      methods: [GET]
      paths: [/v4x]
"""


def test_coverage_is_flagged_only_when_sure(tmp_path: Path, tokens: Any) -> None:
    account = explain(write_policy(tmp_path, UNSURE, tokens.jwks))

    # '*' in one rule and a literal in another, a token rule over an anonymous
    # one, a deny rule with claims and a rule with a body limit: all unsure.
    assert risks(account) == set()
