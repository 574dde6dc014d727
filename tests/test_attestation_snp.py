"""Offline SEV-SNP verification against real reports, and tampered copies."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from sandbox.attestation.certs import der
from sandbox.attestation.snp_certs import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    AmdChain,
    build_cert_table,
    chain_from_files,
    chain_from_table,
    parse_cert_table,
)
from sandbox.attestation.snp_report import TcbVersion, parse_report
from sandbox.attestation.snp_verify import SnpExpectations, verify_snp_report
from sandbox.errors import (
    AttestationFormatError,
    BindingMismatchError,
    CertificateChainError,
    CertificateExpiredError,
    DebugModeError,
    MeasurementMismatchError,
    SignatureError,
    SimulatedRootError,
)
from tests.attestation_doubles import DevelopmentAmdKeys
from tests.support import VECTORS, needs_vectors

SNP = VECTORS / "snp"
pytestmark = needs_vectors


def _files(*names: str) -> dict[str, bytes]:
    return {name: (SNP / name).read_bytes() for name in names}


def _case(name: str) -> tuple[bytes, AmdChain]:
    if name == "go-sev-guest":
        report = (SNP / "go-sev-guest/attestation.bin").read_bytes()
        files = _files("go-sev-guest/vcek.testcer", "go-sev-guest/milan.testcer")
    elif name == "virtee-sev":
        report = bytes.fromhex((SNP / "virtee-sev/report_milan.hex").read_text())
        files = _files("virtee-sev/vcek_milan.der", "virtee-sev/cert_chain_milan")
    else:
        azure = "azure-aci-confidential-sidecar"
        report = (SNP / f"{azure}/snp_report.bin").read_bytes()
        files = _files(f"{azure}/uvm_host_amd_certificate.pem")
    return report, chain_from_files(files)


@pytest.mark.parametrize(
    ("name", "measurement", "tcb", "firmware"),
    [
        ("go-sev-guest", "b07af962", TcbVersion(2, 0, 5, 68), "1.49.3"),
        ("virtee-sev", "7a1e5c26", TcbVersion(3, 0, 8, 115), "1.52.4"),
        ("azure", "51068107", TcbVersion(3, 0, 8, 115), "1.52.4"),
    ],
)
def test_real_report_verifies_with_its_chain(
    name: str, measurement: str, tcb: TcbVersion, firmware: str
) -> None:
    report, chain = _case(name)

    result = verify_snp_report(report, chain, allow_debug=name in DEBUG_REPORTS)

    assert result.simulated is False
    assert result.report.measurement.hex().startswith(measurement)
    assert TcbVersion.from_u64(result.report.reported_tcb) == tcb
    assert result.report.firmware == firmware
    assert [c.name for c in result.checks][-2:] == ["signature", "debug mode"]


# go-sev-guest's report comes from a guest whose policy allows debugging.
DEBUG_REPORTS = {"go-sev-guest"}


def test_a_debug_guests_report_is_refused_unless_allowed() -> None:
    report, chain = _case("go-sev-guest")

    with pytest.raises(DebugModeError) as raised:
        verify_snp_report(report, chain)

    assert "guest policy 0xb0000 allows debugging (bit 19)" in str(raised.value)
    assert all(check.passed for check in raised.value.checks[:-1])


@pytest.mark.parametrize("name", ["virtee-sev", "azure"])
def test_a_guest_without_debugging_passes_the_debug_check(name: str) -> None:
    report, chain = _case(name)

    result = verify_snp_report(report, chain)

    (mode,) = [check.detail for check in result.checks if check.name == "debug mode"]
    assert mode.startswith("off (guest policy 0x")


def test_go_sev_guest_report_data_is_its_known_prefix() -> None:
    report, chain = _case("go-sev-guest")
    expected = bytes([1, 2, 3, 4, 5]) + bytes(59)

    verify_snp_report(
        report,
        chain,
        expect=SnpExpectations(report_data=expected),
        allow_debug=True,
    )


def test_azure_host_data_is_the_hash_of_its_security_policy() -> None:
    encoded = SNP / "azure-aci-confidential-sidecar/uvm_security_policy.base64"
    policy = base64.b64decode(encoded.read_bytes())
    report, chain = _case("azure")

    result = verify_snp_report(
        report, chain, expect=SnpExpectations(host_data=hashlib.sha256(policy).digest())
    )

    assert result.report.host_data.hex().startswith("cadd74f7")


def test_azure_chain_from_a_certificate_table() -> None:
    report, chain = _case("azure")
    assert chain.vcek and chain.ask and chain.ark
    table = build_cert_table(
        {VCEK_GUID: der(chain.vcek), ASK_GUID: der(chain.ask), ARK_GUID: der(chain.ark)}
    )

    assert set(parse_cert_table(table)) == {VCEK_GUID, ASK_GUID, ARK_GUID}
    verify_snp_report(report, chain_from_table(table))


def test_flipped_measurement_bit_breaks_the_signature() -> None:
    report, chain = _case("virtee-sev")
    tampered = bytearray(report)
    tampered[0x90] ^= 0x01

    with pytest.raises(SignatureError, match="does not verify with the VCEK"):
        verify_snp_report(bytes(tampered), chain)


def test_genoa_ark_for_a_milan_report_breaks_the_chain() -> None:
    report, _ = _case("go-sev-guest")
    files = _files(
        "go-sev-guest/vcek.testcer",
        "go-sev-guest/milan.testcer",
        "virtee-sev/genoa_ark.pem",
    )
    chain = chain_from_files(files, {"ark": "virtee-sev/genoa_ark.pem"})

    with pytest.raises(CertificateChainError, match="ASK <- ARK") as caught:
        verify_snp_report(report, chain)

    assert "'SEV-Milan'" in str(caught.value) and "'ARK-Genoa'" in str(caught.value)


def test_host_data_mismatch_is_named() -> None:
    report, chain = _case("azure")

    with pytest.raises(MeasurementMismatchError, match="HOST_DATA: expected 00"):
        verify_snp_report(report, chain, expect=SnpExpectations(host_data=bytes(32)))


def test_policy_hash_against_host_data_set_by_the_host() -> None:
    report, chain = _case("azure")
    host_data = parse_report(report).host_data.hex()

    verify_snp_report(
        report, chain, expect=SnpExpectations(policy_hash=f"sha256:{host_data}")
    )
    with pytest.raises(MeasurementMismatchError, match="policy: HOST_DATA"):
        verify_snp_report(
            report, chain, expect=SnpExpectations(policy_hash="sha256:" + "00" * 32)
        )


def test_policy_with_zero_host_data_needs_nonce_and_key() -> None:
    report, chain = _case("go-sev-guest")

    with pytest.raises(BindingMismatchError, match="cannot show which policy"):
        verify_snp_report(
            report,
            chain,
            expect=SnpExpectations(policy_hash="sha256:" + "00" * 32),
            allow_debug=True,
        )


def test_vcek_of_another_chip_is_refused() -> None:
    report, _ = _case("go-sev-guest")
    _, other = _case("virtee-sev")

    with pytest.raises(CertificateChainError, match="TCB: VCEK was issued for"):
        verify_snp_report(report, other)


def test_expired_vcek_is_refused() -> None:
    report, chain = _case("go-sev-guest")

    with pytest.raises(CertificateExpiredError, match="VCEK"):
        verify_snp_report(report, chain, at=datetime(2031, 1, 1, tzinfo=UTC))


def test_missing_ark_is_named() -> None:
    report, chain = _case("go-sev-guest")

    with pytest.raises(CertificateChainError, match="missing ARK"):
        verify_snp_report(report, AmdChain(chain.vcek, chain.ask, None))


def test_short_report_is_a_format_error() -> None:
    report, chain = _case("go-sev-guest")

    with pytest.raises(AttestationFormatError, match="expected 1184 bytes, got 1183"):
        verify_snp_report(report[:-1], chain)


def test_development_ark_needs_the_opt_in() -> None:
    keys = DevelopmentAmdKeys.create()
    report = keys.sign_report(bytes(64))

    with pytest.raises(SimulatedRootError, match="not a pinned AMD ARK"):
        verify_snp_report(report, keys.chain)
    assert verify_snp_report(report, keys.chain, allow_simulated=True).simulated
