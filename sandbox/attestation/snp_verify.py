"""Offline verification of an AMD SEV-SNP attestation report.

Steps, in order, each recorded as a check:

1. the report is 1184 bytes, version 2 or later, signed with ECDSA P-384
   (algorithm 1) by a VCEK (VLEK-signed reports are refused);
2. the ARK is a pinned AMD root (Milan, Genoa, Turin) or, only when the
   caller allows simulated evidence, a development root;
3. the chain: the ARK signs itself, the ARK signs the ASK, the ASK signs
   the VCEK (RSA-PSS with SHA-384), each valid at the verification time;
4. the VCEK belongs to this report: its TCB extensions equal REPORTED_TCB
   and its hwID equals CHIP_ID;
5. the report signature verifies with the VCEK over bytes 0x000..0x29F;
6. the guest policy forbids debugging (bit 19), with which the host could
   read the guest's memory, unless the caller passes ``allow_debug``;
7. what the caller expects: MEASUREMENT, HOST_DATA, REPORT_DATA, and the
   policy hash (HOST_DATA when the host set it, REPORT_DATA recomputed from
   nonce, TLS key and policy when those are given; see ``measure``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sandbox.attestation import measure
from sandbox.attestation.certs import check_issued_by, check_valid_at, common_name, iso
from sandbox.attestation.checks import CheckLog, Verification
from sandbox.attestation.roots import amd_ark_name
from sandbox.attestation.snp_certs import AmdChain, vcek_hwid, vcek_product, vcek_tcb
from sandbox.attestation.snp_report import (
    ECDSA_P384_SHA384,
    POLICY_DEBUG,
    SIGNING_KEY_VCEK,
    SnpReport,
    TcbVersion,
    parse_report,
)
from sandbox.errors import (
    AttestationFormatError,
    BindingMismatchError,
    CertificateChainError,
    DebugModeError,
    MeasurementMismatchError,
    SignatureError,
    SimulatedRootError,
)


@dataclass(frozen=True)
class SnpExpectations:
    """Values the report must carry; ``None`` means not checked.

    ``nonce`` and ``public_key`` (the TLS key's DER SubjectPublicKeyInfo)
    are only meaningful with ``policy_hash``: together they recompute
    REPORT_DATA.
    """

    measurement: bytes | None = None
    host_data: bytes | None = None
    report_data: bytes | None = None
    policy_hash: str | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None


@dataclass(frozen=True)
class SnpVerification(Verification):
    report: SnpReport


def verify_snp_report(
    data: bytes,
    chain: AmdChain,
    *,
    at: datetime | None = None,
    expect: SnpExpectations | None = None,
    allow_simulated: bool = False,
    allow_debug: bool = False,
) -> SnpVerification:
    """Verify a raw report against ``chain``; raise the first check that fails."""
    log = CheckLog()
    report = _report(log, data)
    vcek, simulated = _chain(log, chain, at or datetime.now(UTC), allow_simulated)
    _vcek_matches(log, report, vcek)
    _signature(log, report, vcek)
    _debug_policy(log, report, allow_debug)
    _expectations(log, report, expect or SnpExpectations())
    return SnpVerification("sev-snp", log.checks, simulated, report)


def _report(log: CheckLog, data: bytes) -> SnpReport:
    try:
        report = parse_report(data)
    except AttestationFormatError as exc:
        log.fail(AttestationFormatError, "report format", str(exc))
    problem = _format_problem(report)
    if problem:
        log.fail(AttestationFormatError, "report format", problem)
    log.passed(
        "report format",
        f"version {report.version}, VMPL {report.vmpl}, policy {report.policy:#x}, "
        f"firmware {report.firmware}",
    )
    return report


def _format_problem(report: SnpReport) -> str:
    if report.version < 2:
        return f"expected report version 2 or later, got {report.version}"
    if report.signature_algo != ECDSA_P384_SHA384:
        return (
            f"expected signature algorithm 1 (ECDSA P-384), got {report.signature_algo}"
        )
    if report.signing_key != SIGNING_KEY_VCEK:
        return (
            "expected a VCEK-signed report (key 0), "
            f"got signing key {report.signing_key}"
        )
    return ""


def _chain(
    log: CheckLog, chain: AmdChain, when: datetime, allow_simulated: bool
) -> tuple[x509.Certificate, bool]:
    vcek, ask, ark = _present(log, chain)
    simulated = _check_ark(log, ark, allow_simulated)
    check_issued_by(log, "chain: ARK self-signed", ark, ark)
    check_issued_by(log, "chain: ASK <- ARK", ask, ark)
    check_issued_by(log, "chain: VCEK <- ASK", vcek, ask)
    for label, cert in (("ARK", ark), ("ASK", ask), ("VCEK", vcek)):
        check_valid_at(log, f"validity: {label} at {iso(when)}", cert, when)
    return vcek, simulated


def _present(
    log: CheckLog, chain: AmdChain
) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    missing = [name for name in ("vcek", "ask", "ark") if getattr(chain, name) is None]
    if missing or chain.vcek is None or chain.ask is None or chain.ark is None:
        log.fail(
            CertificateChainError,
            "certificates",
            f"expected VCEK, ASK and ARK; missing "
            f"{', '.join(m.upper() for m in missing)} "
            "(give them as files or a certificate table)",
        )
    log.passed("certificates", "VCEK, ASK and ARK present")
    return chain.vcek, chain.ask, chain.ark


def _check_ark(log: CheckLog, ark: x509.Certificate, allow_simulated: bool) -> bool:
    pinned = amd_ark_name(ark)
    if pinned is not None:
        log.passed("root", f"{pinned} (pinned AMD root)")
        return False
    if not allow_simulated:
        log.fail(
            SimulatedRootError,
            "root",
            f"{common_name(ark)!r} is not a pinned AMD ARK (Milan, Genoa, Turin); "
            "development roots are accepted only when simulated evidence is allowed",
        )
    log.passed("root", f"{common_name(ark)!r} (NOT AMD: development root)")
    return True


def _vcek_matches(log: CheckLog, report: SnpReport, vcek: x509.Certificate) -> None:
    product = vcek_product(vcek)
    if product.startswith("Turin"):
        log.fail(
            AttestationFormatError,
            "TCB",
            f"VCEK for {product!r}: the Turin TCB layout is not supported",
        )
    try:
        issued, hwid = vcek_tcb(vcek), vcek_hwid(vcek)
    except AttestationFormatError as exc:
        log.fail(CertificateChainError, "TCB", str(exc))
    reported = TcbVersion.from_u64(report.reported_tcb)
    if issued != reported:
        log.fail(
            CertificateChainError,
            "TCB",
            f"VCEK was issued for ({issued}), REPORTED_TCB is ({reported})",
        )
    log.passed("TCB", f"REPORTED_TCB ({reported}) matches the VCEK")
    log.expect_equal(
        CertificateChainError, "chip ID", report.chip_id, hwid, "VCEK hwID is"
    )


def _signature(log: CheckLog, report: SnpReport, vcek: x509.Certificate) -> None:
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        log.fail(
            SignatureError,
            "signature",
            f"expected a P-384 VCEK, got {type(key).__name__}",
        )
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        log.fail(
            SignatureError,
            "signature",
            "ECDSA P-384 signature over bytes 0x000..0x29F does not verify "
            "with the VCEK",
        )
    log.passed("signature", "ECDSA P-384 SHA-384 by the VCEK")


def _debug_policy(log: CheckLog, report: SnpReport, allow_debug: bool) -> None:
    if not report.policy & POLICY_DEBUG:
        log.passed("debug mode", f"off (guest policy {report.policy:#x})")
        return
    if not allow_debug:
        log.fail(
            DebugModeError,
            "debug mode",
            f"guest policy {report.policy:#x} allows debugging (bit 19): the host "
            "can read the guest's memory; debug evidence is accepted only when "
            "the caller allows it",
        )
    log.passed("debug mode", "ON (allowed by the caller): the host can read it")


def _expectations(log: CheckLog, report: SnpReport, expect: SnpExpectations) -> None:
    for name, value, actual, error in (
        (
            "MEASUREMENT",
            expect.measurement,
            report.measurement,
            MeasurementMismatchError,
        ),
        ("HOST_DATA", expect.host_data, report.host_data, MeasurementMismatchError),
        ("REPORT_DATA", expect.report_data, report.report_data, BindingMismatchError),
    ):
        if value is not None:
            log.expect_equal(error, name, value, actual, "report has")
    if expect.policy_hash is not None:
        _policy(log, report, expect)


def _policy(log: CheckLog, report: SnpReport, expect: SnpExpectations) -> None:
    assert expect.policy_hash is not None
    bound = False
    if report.host_data != bytes(32):
        host_data = measure.expected_host_data(expect.policy_hash)
        log.expect_equal(
            MeasurementMismatchError,
            "policy: HOST_DATA",
            host_data,
            report.host_data,
            "report has",
        )
        bound = True
    if expect.nonce is not None and expect.public_key is not None:
        report_data = measure.snp_report_data(
            expect.nonce, expect.public_key, expect.policy_hash
        )
        log.expect_equal(
            BindingMismatchError,
            "policy: REPORT_DATA",
            report_data,
            report.report_data,
            "report has",
        )
        bound = True
    if not bound:
        log.fail(
            BindingMismatchError,
            "policy",
            "HOST_DATA is zero and no nonce and public key were given to recompute "
            "REPORT_DATA, so the report cannot show which policy it runs",
        )
