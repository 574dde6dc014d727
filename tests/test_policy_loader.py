"""Loading policies: the examples, every validation error, the bundle hash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.errors import PolicyError
from sandbox.policy.loader import load_policy
from tests.support import TokenFactory, write_policy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(path.parent for path in (ROOT / "policies").glob("*/policy.yaml"))


@pytest.mark.parametrize("folder", EXAMPLES, ids=[folder.name for folder in EXAMPLES])
def test_every_example_policy_loads(folder: Path) -> None:
    policy = load_policy(folder)

    assert policy.hash.startswith("sha256:") and len(policy.hash) == 71
    # Ingress is decided by YAML rules, or by Rego modules.
    assert policy.ingress.rules or (policy.rego and "ingress" in policy.rego.decides)


def test_the_issue_example_loads_as_written() -> None:
    policy = load_policy(ROOT / "policies/acme-clinical-notes/policy.yaml")

    assert (policy.name, policy.mode, policy.identity.leeway) == (
        "acme-clinical-notes",
        "enforce",
        30.0,
    )
    rules = {rule.name: rule for rule in policy.ingress.rules}
    assert rules["health"].anonymous and rules["health"].methods == {"GET"}
    summarize = rules["clinicians-summarize"]
    assert summarize.max_body == 1024 * 1024
    assert [c.describe() for c in summarize.claims] == [
        "claim 'role' to be one of ['clinician', 'researcher']",
        "claim 'groups' to contain 'oncology'",
    ]
    assert rules["no-admin"].effect == "deny" and rules["no-admin"].methods == {"*"}
    assert policy.egress.rules[0].hosts == ("models.example.com", "*.cdn.example.com")
    assert policy.audit.path == "audit/decisions.jsonl"
    assert [file.path for file in policy.files] == [
        "keys/acme.jwks.json",
        "policy.yaml",
        "tests.yaml",
    ]


def test_hash_is_recomputable_with_coreutils() -> None:
    folder = ROOT / "policies/acme-clinical-notes"
    script = (
        "printf '%s\\n' policy.yaml keys/acme.jwks.json tests.yaml | LC_ALL=C sort "
        "| xargs sha256sum | sha256sum"
    )
    result = subprocess.run(
        ["/bin/bash", "-c", script],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )

    assert load_policy(folder).hash == "sha256:" + result.stdout.split()[0]


def test_hash_changes_with_any_byte_of_a_referenced_file(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    shutil.copytree(ROOT / "policies/acme-clinical-notes", folder)
    before = load_policy(folder).hash
    jwks = folder / "keys/acme.jwks.json"
    jwks.write_text(jwks.read_text() + " ")

    assert load_policy(folder).hash != before


def problems_of(policy_dir: Path, tokens: TokenFactory, body: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        write_policy(policy_dir, body, tokens.jwks)
    shown = str(policy_dir / "policy.yaml")
    return [str(problem).replace(shown, "P") for problem in caught.value.problems]


# The header written by write_policy takes lines 1-9; bodies start on line 10.
INVALID = [
    (
        "ingress:\n  rules:\n    - name: a\n      paths: [/v1/summarize, /v1/**x]\n",
        [
            "P:13: ingress.rules[0].paths[1]: '/v1/**x' is not a valid path pattern: "
            "'**' must be a whole segment"
        ],
    ),
    (
        "ingress:\n  rules:\n    - name: a\n      paths: [/x]\n      anonymus: true\n",
        [
            "P:14: ingress.rules[0].anonymus: unknown field 'anonymus' (expected "
            "one of: anonymous, claims, effect, max_body, methods, name, paths, quota, "
            "rate)"
        ],
    ),
    (
        "ingress:\n  rules:\n    - name: a\n      paths: [/x]\n      methods: [get]\n",
        [
            "P:14: ingress.rules[0].methods[0]: 'get' is not a method: upper-case like "
            "'GET', or '*' (write 'GET')"
        ],
    ),
    (
        "ingress:\n  default: maybe\n",
        ["P:11: ingress.default: expected one of ['allow', 'deny'], got 'maybe'"],
    ),
    (
        "mode: enforce\nmode: report\n",
        ["P:11: mode: duplicate key (first given on line 10)"],
    ),
    (
        "ingress:\n  rules:\n    - name: a\n      paths: [/x]\n      max_body: lots\n",
        [
            "P:14: ingress.rules[0].max_body: 'lots' is not a size: expected e.g. 1MiB "
            "(B, KB, MB, GB, KiB, MiB, GiB)"
        ],
    ),
    (
        "ingress:\n  rules:\n    - name: a\n      paths: [/x]\n    - name: a\n"
        "      paths: [/y]\n",
        ["P:14: ingress.rules[1]: rule name 'a' is given twice"],
    ),
    (
        "ingress:\n  rules:\n    - name: a\n      paths: [/x]\n      anonymous: true\n"
        "      claims: {role: [x]}\n",
        [
            "P:15: ingress.rules[0].claims: an anonymous rule cannot also require "
            "token claims"
        ],
    ),
    (
        "ingress:\n  rules:\n    - name: a\n      paths: [/x]\n"
        "      claims: {role: x}\n",
        [
            "P:14: ingress.rules[0].claims.role: expected a list of accepted values "
            "([a, b]) or {contains: value}, got 'x'"
        ],
    ),
    (
        "egress:\n  rules:\n    - name: e\n      hosts: [models.example.com]\n",
        [
            "P:12: egress.rules[0]: an allow rule must name its ports "
            "(e.g. ports: [443])"
        ],
    ),
    (
        "audit:\n  path: [x]\n",
        ["P:11: audit.path: expected a non-empty string, got a list"],
    ),
    (
        "surprise: 1\n",
        [
            "P:10: surprise: unknown field 'surprise' (expected one of: audit, egress, "
            "identity, ingress, mode, name, rego, version)"
        ],
    ),
]


@pytest.mark.parametrize(("body", "expected"), INVALID)
def test_invalid_policy_names_file_line_and_field(
    policy_dir: Path, tokens: TokenFactory, body: str, expected: list[str]
) -> None:
    assert problems_of(policy_dir, tokens, body) == expected


def test_all_problems_are_reported_at_once(
    policy_dir: Path, tokens: TokenFactory
) -> None:
    body = (
        "mode: loud\n"
        "ingress:\n  rules:\n    - name: a\n      paths: [x]\n      methods: [get]\n"
        "egress:\n  rules:\n    - name: e\n      hosts: ['bad host']\n"
        "      ports: [0]\n"
    )

    problems = problems_of(policy_dir, tokens, body)

    assert [problem.split(": ")[1] for problem in problems] == [
        "mode",
        "ingress.rules[0].paths[0]",
        "ingress.rules[0].methods[0]",
        "egress.rules[0].hosts[0]",
        "egress.rules[0].ports[0]",
    ]


@pytest.mark.parametrize("algorithm", ["none", "HS256", "HS512"])
def test_unsigned_and_hmac_algorithms_are_refused_at_load(
    tmp_path: Path, tokens: TokenFactory, algorithm: str
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/k.json").write_text(json.dumps(tokens.jwks))
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nname: p\nidentity:\n  issuers:\n    - issuer: https://i\n"
        f"      audiences: [a]\n      algorithms: [ES256, {algorithm}]\n"
        "      jwks: keys/k.json\n"
    )

    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path)

    assert f"algorithms[1]: '{algorithm}' is refused" in str(caught.value)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("../outside.json", "must be a path inside the policy folder"),
        ("/etc/passwd", "must be a path inside the policy folder"),
        ("keys/missing.json", "is not a file in the policy folder"),
        ("keys/has space.json", "may hold only letters"),
    ],
)
def test_referenced_files_stay_inside_the_bundle(
    tmp_path: Path, tokens: TokenFactory, reference: str, message: str
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nname: p\nidentity:\n  issuers:\n    - issuer: https://i\n"
        f"      audiences: [a]\n      algorithms: [ES256]\n      jwks: '{reference}'\n"
    )

    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path)

    assert f"policy.yaml:8: identity.issuers[0].jwks: '{reference}' {message}" in str(
        caught.value
    )


def test_a_link_out_of_the_bundle_is_refused(
    tmp_path: Path, tokens: TokenFactory
) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(tokens.jwks))
    folder = tmp_path / "p"
    (folder / "keys").mkdir(parents=True)
    (folder / "keys/k.json").symlink_to(outside)
    (folder / "policy.yaml").write_text(
        "version: 1\nname: p\nidentity:\n  issuers:\n    - issuer: https://i\n"
        "      audiences: [a]\n      algorithms: [ES256]\n      jwks: keys/k.json\n"
    )

    with pytest.raises(PolicyError, match="outside the policy folder"):
        load_policy(folder)


def test_a_rule_needing_a_token_without_any_issuer_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nname: p\ningress:\n  rules:\n    - name: r\n      paths: [/x]\n"
    )

    with pytest.raises(PolicyError, match=r"identity\.issuers names no issuer"):
        load_policy(tmp_path)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("version: 1\nname: [unclosed\n")

    with pytest.raises(PolicyError, match=r"policy\.yaml:3: not valid YAML"):
        load_policy(tmp_path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_policy_check_cli_exit_codes(policy_dir: Path, tokens: TokenFactory) -> None:
    good = run_cli("policy", "check", "policies/acme-clinical-notes")
    (policy_dir / "policy.yaml").write_text("version: 2\nname: x\n")
    bad = run_cli("policy", "check", str(policy_dir / "policy.yaml"))

    assert good.returncode == 0 and good.stdout.startswith("ok: acme-clinical-notes")
    assert bad.returncode == 1
    assert "policy.yaml:1: version: expected one of [1], got 2" in bad.stderr
    assert "1 problem found" in bad.stderr


def test_policy_hash_cli_prints_hash_and_manifest() -> None:
    result = run_cli("policy", "hash", "--manifest", "policies/acme-clinical-notes")
    expected = load_policy(ROOT / "policies/acme-clinical-notes").hash

    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[-1] == expected
    assert [line.split("  ")[1] for line in lines[:-1]] == [
        "keys/acme.jwks.json",
        "policy.yaml",
        "tests.yaml",
    ]
