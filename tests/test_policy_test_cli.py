"""``sandbox policy test``: every example passes; a broken case fails with
what was expected and what came; OPA via the fake server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_opa import FakeOpa

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(path.parent for path in (ROOT / "policies").glob("*/policy.yaml"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", "policy", "test", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.parametrize("folder", EXAMPLES, ids=[folder.name for folder in EXAMPLES])
def test_every_example_ships_passing_cases(folder: Path) -> None:
    result = run_cli(str(folder))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "✗" not in result.stdout and ", 0 failed" in result.stdout


def test_a_broken_case_fails_saying_what_was_expected_and_what_came(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "p"
    shutil.copytree(ROOT / "policies/acme-clinical-notes-rego", folder)
    tests = folder / "tests.yaml"
    tests.write_text(
        tests.read_text().replace(
            "expect: {allow: false, rule: no-admin, status: 403}\n\n  - name: the adm",
            "expect: {allow: true, rule: no-admin}\n\n  - name: the adm",
        )
    )

    result = run_cli(str(folder))

    assert result.returncode == 1
    assert "✗ the admin area is denied even to clinicians" in result.stdout
    assert (
        "expected allow by rule 'no-admin', got deny 403 by rule 'no-admin': "
        "rule 'no-admin' denies GET /admin/users"
    ) in result.stdout
    assert "13 cases, 1 failed (engine rego+yaml)" in result.stdout


def test_an_invalid_case_file_names_file_line_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    shutil.copytree(ROOT / "policies/acme-clinical-notes", folder)
    (folder / "tests.yaml").write_text(
        "cases:\n  - name: x\n    request: {method: GET, path: /}\n"
        "    expect: {allow: maybe}\n"
    )

    result = run_cli(str(folder))

    assert result.returncode == 1
    assert "tests.yaml:4: cases[0].expect.allow: expected true or false" in (
        result.stderr
    )


def test_yaml_engine_is_refused_where_rego_decides() -> None:
    result = run_cli("--engine", "yaml", "policies/acme-clinical-notes-rego")

    assert result.returncode == 2
    assert "Rego decides ingress in this policy" in result.stderr


async def test_cases_pass_on_opa() -> None:
    opa = FakeOpa()
    await opa.start()
    try:
        result = await _run_cli_async(
            "--engine", "opa", "--opa-url", opa.url, "policies/acme-clinical-notes-rego"
        )
    finally:
        await opa.stop()

    assert result[0] == 0, result[1]
    assert "13 cases, 0 failed (engine opa+yaml)" in result[1]


async def _run_cli_async(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sandbox",
        "policy",
        "test",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()
