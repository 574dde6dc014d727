"""``sandbox policy diff``: what a new policy allows or refuses that the old
one did not, probe by probe, with both hashes and a diff-like exit status."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from sandbox.cli.main import main
from sandbox.policy.diff import PolicyDiff, diff_policies
from sandbox.policy.loader import load_policy
from tests.support import write_policy

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

INGRESS = """\
ingress:
  rules:
    - name: summarize
      methods: [POST]
      paths: [/v1/x]
      claims:
        role: [clinician]
        groups: {contains: oncology}
"""

EGRESS = """\
egress:
  rules:
    - name: weights
      hosts: [models.example.com]
      ports: [443]
    - name: metrics
      hosts: [metrics.internal]
      ports: [8080]
"""


def policies(tmp_path: Path, tokens: Any, old: str, new: str) -> tuple[Path, Path]:
    folders = tmp_path / "old", tmp_path / "new"
    for folder, body in zip(folders, (old, new), strict=True):
        folder.mkdir()
        write_policy(folder, body, tokens.jwks)
    return folders


def compare(tmp_path: Path, tokens: Any, old: str, new: str) -> PolicyDiff:
    old_path, new_path = policies(tmp_path, tokens, old, new)
    return diff_policies(load_policy(old_path), load_policy(new_path))


def lines(changes: Any) -> list[str]:
    return [change.describe() for change in changes]


def run_diff(
    capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, str, str]:
    status = main(["policy", "diff", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_identical_policies_have_no_differences(
    capsys: pytest.CaptureFixture[str],
) -> None:
    acme = POLICIES / "acme-clinical-notes"

    status, out, _ = run_diff(capsys, acme, acme)

    assert status == 0
    assert "No differences (" in out
    assert "NEW allows what OLD refused:\n  none\n" in out


def test_both_hashes_and_the_caveat_head_the_output(
    tmp_path: Path, tokens: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = policies(tmp_path, tokens, INGRESS, INGRESS + EGRESS)

    status, out, _ = run_diff(capsys, old, new)

    first, second, caveat = out.splitlines()[:3]
    assert status == 1
    assert first == f"OLD {load_policy(old).hash}"
    assert second == f"NEW {load_policy(new).hash}"
    assert first != second.replace("NEW", "OLD")
    assert "not a proof of equivalence" in caveat


def test_widening_a_claim_list_shows_exactly_the_new_allowance(
    tmp_path: Path, tokens: Any
) -> None:
    wider = INGRESS.replace("[clinician]", "[clinician, intern]")

    diff = compare(tmp_path, tokens, INGRESS, wider)

    assert lines(diff.widened) == [
        "POST /v1/x, token with role='intern', groups=['oncology']: "
        "OLD deny (summarize) -> NEW allow (summarize)"
    ]
    assert diff.narrowed == ()


def test_a_new_deny_rule_shows_the_new_refusals(tmp_path: Path, tokens: Any) -> None:
    denied = INGRESS + ("    - name: no-x\n      effect: deny\n      paths: [/v1/**]\n")

    diff = compare(tmp_path, tokens, INGRESS, denied)

    assert lines(diff.narrowed) == [
        "POST /v1/x, token with role='clinician', groups=['oncology']: "
        "OLD allow (summarize) -> NEW deny (no-x)"
    ]
    assert diff.widened == ()


def test_a_wildcard_path_shows_the_new_routes(tmp_path: Path, tokens: Any) -> None:
    wider = INGRESS.replace("[/v1/x]", "[/v1/**]")

    diff = compare(tmp_path, tokens, INGRESS, wider)

    routes = {change.where for change in diff.widened}
    who = {change.who for change in diff.widened}
    assert routes == {"POST /v1/** (/v1)", "POST /v1/** (/v1/x/y)"}
    assert who == {"token with role='clinician', groups=['oncology']"}
    assert diff.narrowed == ()


def test_a_changed_body_limit_is_listed_apart(tmp_path: Path, tokens: Any) -> None:
    limited = INGRESS + "      max_body: 1KiB\n"

    diff = compare(tmp_path, tokens, INGRESS, limited)

    assert diff.widened == diff.narrowed == ()
    assert lines(diff.limits_changed) == [
        "POST /v1/x, token with role='clinician', groups=['oncology']: "
        "OLD allow (summarize) -> NEW allow (summarize, max_body 1024)"
    ]


def test_a_new_host_is_allowed_destination_by_destination(
    tmp_path: Path, tokens: Any
) -> None:
    more = EGRESS.replace("[models.example.com]", '[models.example.com, "*.cdn.x"]')

    diff = compare(tmp_path, tokens, EGRESS, more)

    assert lines(diff.widened) == [
        "a connection to a.cdn.x:443 at 203.0.113.10: "
        "OLD deny (default) -> NEW allow (weights)"
    ]


def test_an_opened_port_is_allowed(tmp_path: Path, tokens: Any) -> None:
    more = EGRESS.replace("[443]", "[443, 8443]")

    diff = compare(tmp_path, tokens, EGRESS, more)

    assert lines(diff.widened) == [
        "a connection to models.example.com:8443 at 203.0.113.10: "
        "OLD deny (default) -> NEW allow (weights)"
    ]


def test_allow_cidrs_open_an_address_inside_the_range(
    tmp_path: Path, tokens: Any
) -> None:
    opened = EGRESS + "      allow_cidrs: [10.20.0.0/16]\n"

    diff = compare(tmp_path, tokens, EGRESS, opened)

    assert lines(diff.widened) == [
        "a connection to metrics.internal:8080 at 10.20.0.1: "
        "OLD deny (metrics) -> NEW allow (metrics)"
    ]
    assert diff.narrowed == ()


def test_requests_inside_a_tunnel_are_compared(tmp_path: Path, tokens: Any) -> None:
    looking = EGRESS.replace("ports: [443]", "ports: [443]\n      methods: [GET]")
    wider = looking.replace("[GET]", "[GET, POST]")

    diff = compare(tmp_path, tokens, looking, wider)

    assert lines(diff.widened) == [
        "POST https://models.example.com:443/unnamed-by-any-rule at 203.0.113.10: "
        "OLD deny (default) -> NEW allow (weights)"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "acme-clinical-notes",
            "acme-clinical-notes-rego",
            "inbound requests: Rego decides in NEW; not compared "
            "(Rego is not analysed)",
        ),
        (
            "egress-example-rego",
            "egress-example",
            "outbound connections: Rego decides in OLD; not compared "
            "(Rego is not analysed)",
        ),
    ],
)
def test_a_rego_decided_direction_is_not_compared(
    capsys: pytest.CaptureFixture[str], old: str, new: str, expected: str
) -> None:
    status, out, _ = run_diff(capsys, POLICIES / old, POLICIES / new)

    assert f"Not probed:\n  {expected}\n" in out
    assert status == 1


def test_the_same_rego_in_both_is_unchanged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rego = POLICIES / "acme-clinical-notes-rego"

    status, out, _ = run_diff(capsys, rego, rego)

    assert status == 0
    assert "inbound requests: the same Rego modules and data in both" in out


def test_the_markdown_rendering_escapes_wildcards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "acme"
    shutil.copytree(POLICIES / "acme-clinical-notes", new)
    text = (new / "policy.yaml").read_text()
    (new / "policy.yaml").write_text(text.replace("researcher]", "researcher, intern]"))

    status, out, _ = run_diff(
        capsys, POLICIES / "acme-clinical-notes", new, "--format", "md"
    )

    assert status == 1
    assert out.startswith("# Policy diff\n")
    assert "\n## NEW allows what OLD refused\n" in out
    assert "- POST /v1/models/\\*/predict (/v1/models/x/predict), token" in out


def test_a_broken_policy_exits_2_with_the_loaders_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text("version: 1\nname: x\nmode: loud\n")

    status, out, err = run_diff(capsys, POLICIES / "acme-clinical-notes", tmp_path)

    assert status == 2
    assert out == ""
    assert f"NEW policy {tmp_path} does not load:" in err
    assert "mode: expected one of ['enforce', 'report']" in err
