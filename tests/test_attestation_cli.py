"""``sandbox attestation verify``: exit codes, ✓/✗ lines and the JSON shape."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from sandbox.attestation.simulated import SimulatedProvider
from sandbox.cli.main import main
from tests.support import VECTORS, needs_vectors

MARLIN = VECTORS / "nitro/marlin"
GO_SEV = VECTORS / "snp/go-sev-guest"
# The go-sev-guest report with its VCEK and ASK (the ARK is AMD's, pinned).
GO_SEV_REPORT = (
    str(GO_SEV / "attestation.bin"),
    *("--vcek", str(GO_SEV / "vcek.testcer")),
    *("--ask", str(GO_SEV / "milan.testcer")),
)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["attestation", "verify", *argv])
    return status, capsys.readouterr().out


@needs_vectors
def test_real_document_at_its_time_passes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = _run(capsys, str(MARLIN / "attestation.bin"), "--at", "document")

    assert status == 0
    assert out.splitlines()[-1] == "verdict: VERIFIED (nitro)"
    assert "✗" not in out and "✓ signature: ES384" in out


@needs_vectors
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_text_encodings_are_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str
) -> None:
    raw = (MARLIN / "attestation.bin").read_bytes()
    text = raw.hex() if encoding == "hex" else base64.b64encode(raw).decode()
    (tmp_path / "doc.txt").write_text(text + "\n")

    status, _ = _run(capsys, str(tmp_path / "doc.txt"), "--at", "document")

    assert status == 0


@needs_vectors
def test_expired_document_now_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = _run(capsys, str(MARLIN / "attestation.hex"))

    assert status == 1
    assert out.splitlines()[-2].startswith("✗ validity: cabundle[1]")
    assert out.splitlines()[-1] == "verdict: REFUSED (CertificateExpiredError)"


@needs_vectors
def test_wrong_pcr_is_refused_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = _run(
        capsys,
        str(MARLIN / "attestation.bin"),
        "--at",
        "document",
        "--pcr",
        f"3={'11' * 48}",
        "--json",
    )

    result = json.loads(out)
    assert status == 1
    assert set(result) == {"format", "verified", "simulated", "checks", "error"}
    assert result["format"] == "nitro" and result["verified"] is False
    assert result["checks"][-1] == {
        "name": "PCR3",
        "passed": False,
        "detail": f"expected {'11' * 48}, document has {'00' * 48}",
    }
    assert result["error"]["type"] == "MeasurementMismatchError"


@needs_vectors
def test_snp_report_with_chain_files(capsys: pytest.CaptureFixture[str]) -> None:
    # The go-sev-guest report comes from a guest that allows debugging.
    status, out = _run(capsys, *GO_SEV_REPORT, "--allow-debug", "--json")

    result = json.loads(out)
    assert status == 0
    assert result["format"] == "sev-snp" and result["verified"] is True
    assert all(check["passed"] for check in result["checks"])
    assert result["error"] is None


@needs_vectors
def test_a_debug_guests_report_is_refused_without_allow_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out = _run(capsys, *GO_SEV_REPORT, "--json")

    result = json.loads(out)
    assert status == 1 and result["verified"] is False
    assert result["error"]["type"] == "DebugModeError"


@needs_vectors
def test_snp_report_with_a_foreign_ark_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out = _run(
        capsys, *GO_SEV_REPORT, "--ark", str(VECTORS / "snp/virtee-sev/genoa_ark.pem")
    )

    assert status == 1
    assert "✗ chain: ASK <- ARK" in out


@needs_vectors
def test_snp_has_no_document_time(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["attestation", "verify", str(GO_SEV / "attestation.bin"), "--at", "document"]
    )

    assert status == 2
    assert "SEV-SNP reports carry no timestamp" in capsys.readouterr().err


def test_unreadable_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["attestation", "verify", str(tmp_path / "absent")])

    assert status == 2
    assert "cannot read" in capsys.readouterr().err


def test_unknown_bytes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk").write_bytes(b"\x00\x01\x02 not evidence")

    status, out = _run(capsys, str(tmp_path / "junk"))

    assert status == 1
    assert "✗ evidence: expected a 1184-byte SEV-SNP report" in out


def _simulated(tmp_path: Path, policy_hash: str) -> tuple[Path, Path]:
    async def attest() -> tuple[bytes, bytes]:
        provider = SimulatedProvider()
        await provider.start(policy_hash)
        return await provider.attest(b"\x01\x02", b"key"), provider.root_pem

    document, root = asyncio.run(attest())
    (tmp_path / "doc.cbor").write_bytes(document)
    (tmp_path / "root.pem").write_bytes(root)
    return tmp_path / "doc.cbor", tmp_path / "root.pem"


def test_simulated_document_needs_allow_simulated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_hash = "sha256:" + "42" * 32
    document, root = _simulated(tmp_path, policy_hash)

    refused, out = _run(capsys, str(document), "--root", str(root))
    assert refused == 1 and "SimulatedRootError" in out

    status = main(
        [
            "attestation",
            "verify",
            str(document),
            "--root",
            str(root),
            "--allow-simulated",
            "--policy",
            policy_hash,
            "--nonce",
            "0102",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0
    assert "✓ policy: PCR16" in captured.out
    assert "WARNING: SIMULATED EVIDENCE" in captured.out
    assert "WARNING: SIMULATED EVIDENCE" in captured.err
