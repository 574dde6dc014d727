"""``sandbox token keygen`` and ``sandbox token issue``, end to end on files."""

from __future__ import annotations

import argparse
import json
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
import pytest

from sandbox.cli import token as token_cli
from sandbox.errors import AuthenticationError
from sandbox.identity.issue import key_id
from sandbox.identity.keys import parse_jwks
from sandbox.identity.verifier import TokenVerifier
from sandbox.policy.model import IdentityConfig, Issuer

ISSUER = "https://idp.example"


def run(argv: Sequence[str]) -> int:
    """Parse and dispatch as ``sandbox`` would, with only the token group."""
    parser = argparse.ArgumentParser(prog="sandbox")
    token_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["token", *argv])
    status: int = args.handler(args)
    return status


def keygen(tmp_path: Path, *extra: str, alg: str = "ES256") -> tuple[Path, Path]:
    private_key, jwks = tmp_path / "signing.pem", tmp_path / "jwks.json"
    paths = ["--private-key", str(private_key), "--jwks", str(jwks)]
    status = run(["keygen", "--alg", alg, *paths, *extra])
    assert status == 0
    return private_key, jwks


def verifier_for(
    jwks_path: Path, algorithm: str = "ES256", clock: Callable[[], float] = time.time
) -> TokenVerifier:
    keys = parse_jwks(json.loads(jwks_path.read_text()), (algorithm,))
    issuer = Issuer(ISSUER, ("sandbox", "reports"), (algorithm,), str(jwks_path), keys)
    return TokenVerifier(IdentityConfig(leeway=5, issuers=(issuer,)), clock=clock)


def issue(key: Path, *extra: str) -> list[str]:
    return [
        "issue",
        "--key",
        str(key),
        "--iss",
        ISSUER,
        "--aud",
        "sandbox",
        "--sub",
        "alice",
        *extra,
    ]


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
def test_keygen_writes_a_private_key_and_a_pinnable_jwks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alg: str
) -> None:
    private_key, jwks = keygen(tmp_path, alg=alg)

    kid = capsys.readouterr().out.strip()
    assert stat.S_IMODE(private_key.stat().st_mode) == 0o600
    assert key_id(private_key.read_bytes()) == kid
    assert list(parse_jwks(json.loads(jwks.read_text()), (alg,))) == [kid]
    assert "PRIVATE" not in jwks.read_text()


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_key, jwks = keygen(tmp_path)
    before = private_key.read_bytes(), jwks.read_bytes()
    capsys.readouterr()

    status = run(
        ["keygen", "--private-key", str(private_key), "--jwks", str(tmp_path / "new")]
    )

    err = capsys.readouterr().err
    assert status == 1
    assert err == (
        f"sandbox token keygen: {private_key} already exists; "
        "pass --force to overwrite\n"
    )
    assert (private_key.read_bytes(), jwks.read_bytes()) == before
    assert not (tmp_path / "new").exists()


def test_keygen_force_replaces_the_key_and_tightens_its_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_key, _ = keygen(tmp_path)
    old_kid = capsys.readouterr().out.strip()
    private_key.chmod(0o644)

    keygen(tmp_path, "--force")

    new_kid = capsys.readouterr().out.strip()
    assert new_kid != old_kid
    assert key_id(private_key.read_bytes()) == new_kid
    assert stat.S_IMODE(private_key.stat().st_mode) == 0o600


def test_issued_token_verifies_against_the_generated_jwks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_key, jwks = keygen(tmp_path)
    capsys.readouterr()

    status = run(
        issue(
            private_key,
            "--aud",
            "reports",
            "--claim",
            'groups=["oncology"]',
            "--claim",
            "role=admin",
            "--claim",
            "level=3",
            "--claim",
            "note=a=b",
            "--expires-in",
            "10m",
        )
    )

    token = capsys.readouterr().out.strip()
    assert status == 0
    identity = verifier_for(jwks).verify(token)
    assert identity.subject == "alice"
    claims: dict[str, Any] = dict(identity.claims)
    assert claims["groups"] == ["oncology"]
    assert claims["role"] == "admin"
    assert claims["level"] == 3
    assert claims["note"] == "a=b"
    assert claims["aud"] == ["sandbox", "reports"]
    assert claims["exp"] - claims["iat"] == 600


def test_issue_with_not_before_makes_a_token_valid_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_key, jwks = keygen(tmp_path, alg="EdDSA")
    capsys.readouterr()

    assert run(issue(private_key, "--not-before", "5m")) == 0

    token = capsys.readouterr().out.strip()
    with pytest.raises(AuthenticationError, match="not valid before"):
        verifier_for(jwks, "EdDSA").verify(token)
    later = time.time() + 300
    verifier = verifier_for(jwks, "EdDSA", clock=lambda: later)
    assert verifier.verify(token).subject == "alice"


def test_issue_signs_with_the_requested_algorithm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_key, _ = keygen(tmp_path, alg="RS256")
    capsys.readouterr()

    assert run(issue(private_key, "--alg", "PS384")) == 0

    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "PS384"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--expires-in", "soon"], "--expires-in: 'soon' is not a duration"),
        (["--not-before=-5s"], "--not-before: '-5s' is not a duration"),
        (["--claim", "novalue"], "--claim 'novalue': expected NAME=VALUE"),
        (["--claim", "a=1", "--claim", "a=2"], "--claim 'a' is given twice"),
        (["--claim", "exp=1"], "claims ['exp'] are set from"),
        (["--alg", "ES384"], "algorithm 'ES384' does not fit this key"),
    ],
)
def test_issue_reports_bad_input_on_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    private_key, _ = keygen(tmp_path)
    capsys.readouterr()

    status = run(issue(private_key, *extra))

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err.startswith("sandbox token issue: ")
    assert expected in captured.err
    assert captured.err.count("\n") == 1


def test_issue_reports_an_unreadable_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.pem"

    assert run(issue(missing)) == 1

    assert capsys.readouterr().err == (
        f"sandbox token issue: cannot read --key {missing}: No such file or directory\n"
    )


def test_issue_reports_a_file_that_is_not_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_key = tmp_path / "jwks.json"
    not_a_key.write_text('{"keys": []}')

    assert run(issue(not_a_key)) == 1

    err = capsys.readouterr().err
    assert err.startswith(f"sandbox token issue: --key {not_a_key}: not an unencrypted")


def test_issue_without_subject_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["issue", "--key", str(tmp_path / "k"), "--iss", ISSUER, "--aud", "a"])

    assert exited.value.code == 2
