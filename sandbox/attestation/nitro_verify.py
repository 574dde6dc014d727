"""Offline verification of a Nitro Enclaves attestation document.

Steps, in order, each recorded as a check:

1. the envelope is a COSE_Sign1 (tag 18 or none) with ES384 in its
   protected header, and its payload is a well-formed document whose
   digest is SHA384;
2. the certificate chain: ``cabundle[0]`` is the pinned root (AWS Nitro
   root G1 unless another root is given), each later ``cabundle`` entry is
   signed by the one before it, and the leaf ``certificate`` by the last;
   every certificate is valid at the verification time;
3. the COSE signature verifies with the leaf's P-384 key; the chain comes
   first so that a signature is only ever checked with a trusted key;
4. the enclave is not in debug mode, where the parent instance can read
   its memory and AWS zeroes PCR0-2 (PCR0 of zeros tells it), unless the
   caller passes ``allow_debug``;
5. what the caller expects: PCR values, nonce, public key, user data and
   the policy hash (the ``user_data`` label and PCR16, see ``measure``).

A document that chains to any root other than the AWS one is treated as
development evidence: refused unless the caller passes ``allow_simulated``,
and marked ``simulated`` in the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.attestation import measure
from sandbox.attestation.certs import (
    check_issued_by,
    check_valid_at,
    common_name,
    fingerprint,
    iso,
    load_certificates,
)
from sandbox.attestation.checks import CheckLog, Verification
from sandbox.attestation.cose import (
    ES384,
    ES384_SIGNATURE_BYTES,
    HEADER_ALGORITHM,
    CoseSign1,
    decode_sign1,
    verify_es384,
)
from sandbox.attestation.nitro_document import NitroDocument, parse_document
from sandbox.attestation.roots import aws_nitro_root, is_aws_nitro_root
from sandbox.errors import (
    AttestationFormatError,
    BindingMismatchError,
    CertificateChainError,
    DebugModeError,
    MeasurementMismatchError,
    SignatureError,
    SimulatedRootError,
)

AT_DOCUMENT = "document"
SIMULATED_ROOT_MARK = "policy-sandbox simulated"
NITRO_DIGEST = "SHA384"


@dataclass(frozen=True)
class NitroExpectations:
    """Values the document must carry; ``None`` or empty means not checked."""

    pcrs: Mapping[int, bytes] = field(default_factory=dict)
    nonce: bytes | None = None
    public_key: bytes | None = None
    user_data: bytes | None = None
    policy_hash: str | None = None


@dataclass(frozen=True)
class NitroVerification(Verification):
    document: NitroDocument


def verify_nitro_document(
    data: bytes,
    *,
    root: x509.Certificate | None = None,
    at: datetime | Literal["document"] | None = None,
    expect: NitroExpectations | None = None,
    allow_simulated: bool = False,
    allow_debug: bool = False,
) -> NitroVerification:
    """Verify ``data`` (COSE_Sign1 bytes); raise the first check that fails.

    ``at`` is the time certificates must be valid at: now by default, or
    ``"document"`` for the document's own timestamp (for stored evidence
    whose short-lived leaf has since expired).
    """
    log = CheckLog()
    sign1 = _envelope(log, data)
    document = _document(log, sign1)
    when = _verification_time(at, document)
    leaf, simulated = _chain(log, document, root, when, allow_simulated)
    _signature(log, sign1, leaf)
    _debug_mode(log, document, allow_debug)
    _expectations(log, document, expect or NitroExpectations())
    return NitroVerification("nitro", log.checks, simulated, document)


def _debug_mode(log: CheckLog, document: NitroDocument, allow_debug: bool) -> None:
    pcr0 = document.pcrs.get(0, b"")
    if any(pcr0):
        log.passed("debug mode", "off (PCR0 is a measurement)")
        return
    if not allow_debug:
        log.fail(
            DebugModeError,
            "debug mode",
            "PCR0 is all zeros: the enclave runs in debug mode, where its parent "
            "instance can read its memory; debug evidence is accepted only when "
            "the caller allows it",
        )
    log.passed("debug mode", "ON (allowed by the caller): the parent can read it")


def _verification_time(
    at: datetime | Literal["document"] | None, document: NitroDocument
) -> datetime:
    if at == AT_DOCUMENT:
        return document.timestamp
    if isinstance(at, datetime):
        return at
    return datetime.now(UTC)


def _envelope(log: CheckLog, data: bytes) -> CoseSign1:
    try:
        sign1 = decode_sign1(data)
    except AttestationFormatError as exc:
        log.fail(AttestationFormatError, "envelope", str(exc))
    shape = "tagged (18)" if sign1.tagged else "untagged"
    log.passed("envelope", f"COSE_Sign1 {shape}, payload {len(sign1.payload)} bytes")
    algorithm = sign1.protected_headers.get(HEADER_ALGORITHM)
    if algorithm != ES384:
        log.fail(
            AttestationFormatError,
            "algorithm",
            f"expected ES384 (-35) in the protected header, got {algorithm!r}",
        )
    log.passed("algorithm", "ES384 (-35)")
    return sign1


def _document(log: CheckLog, sign1: CoseSign1) -> NitroDocument:
    try:
        document = parse_document(sign1.payload)
    except AttestationFormatError as exc:
        log.fail(AttestationFormatError, "document fields", str(exc))
    log.passed(
        "document fields",
        f"module {document.module_id!r}, {len(document.pcrs)} PCRs, "
        f"timestamp {iso(document.timestamp)}",
    )
    wrong = [i for i, v in document.pcrs.items() if len(v) != 48]
    if document.digest != NITRO_DIGEST or wrong:
        log.fail(
            AttestationFormatError,
            "digest",
            f"expected SHA384 with 48-byte PCRs, got {document.digest!r}"
            + (
                f" and PCR{wrong[0]} of {len(document.pcrs[wrong[0]])} bytes"
                if wrong
                else ""
            ),
        )
    log.passed("digest", NITRO_DIGEST)
    return document


def _chain(
    log: CheckLog,
    document: NitroDocument,
    root: x509.Certificate | None,
    when: datetime,
    allow_simulated: bool,
) -> tuple[x509.Certificate, bool]:
    bundle = _parse_bundle(log, document)
    trusted = root or aws_nitro_root()
    simulated = _check_anchor(log, bundle[0], trusted, root is None, allow_simulated)
    leaf = bundle[-1]
    for position in range(1, len(bundle)):
        label = (
            "certificate" if position == len(bundle) - 1 else f"cabundle[{position}]"
        )
        issuer = "cabundle[0]" if position == 1 else f"cabundle[{position - 1}]"
        _check_ca(log, bundle[position - 1], issuer)
        check_issued_by(
            log, f"chain: {label} <- {issuer}", bundle[position], bundle[position - 1]
        )
    for position, cert in enumerate(bundle):
        label = "certificate" if cert is leaf else f"cabundle[{position}]"
        check_valid_at(log, f"validity: {label} at {iso(when)}", cert, when)
    return leaf, simulated


def _parse_bundle(log: CheckLog, document: NitroDocument) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for position, blob in enumerate((*document.cabundle, document.certificate)):
        name = (
            "certificate"
            if position == len(document.cabundle)
            else f"cabundle[{position}]"
        )
        try:
            certs.extend(load_certificates(blob, name)[:1])
        except AttestationFormatError as exc:
            log.fail(AttestationFormatError, "certificates", str(exc))
    log.passed(
        "certificates", f"leaf and {len(document.cabundle)} CA certificates parse"
    )
    return certs


def _check_anchor(
    log: CheckLog,
    first: x509.Certificate,
    trusted: x509.Certificate,
    pinned_default: bool,
    allow_simulated: bool,
) -> bool:
    name = "root"
    if fingerprint(first) != fingerprint(trusted):
        if pinned_default and SIMULATED_ROOT_MARK in common_name(first):
            log.fail(
                SimulatedRootError,
                name,
                f"cabundle[0] is the development root {common_name(first)!r}, not "
                "AWS; pass its PEM as the root and allow simulated evidence",
            )
        log.fail(
            CertificateChainError,
            name,
            f"expected cabundle[0] to be the pinned root {common_name(trusted)!r} "
            f"(SHA-256 {fingerprint(trusted)}), got {common_name(first)!r} "
            f"(SHA-256 {fingerprint(first)})",
        )
    simulated = not is_aws_nitro_root(trusted)
    if simulated and not allow_simulated:
        log.fail(
            SimulatedRootError,
            name,
            f"{common_name(trusted)!r} is not the AWS Nitro root; development "
            "evidence is accepted only when simulated evidence is allowed",
        )
    kind = "NOT AWS: development root" if simulated else "pinned AWS Nitro root G1"
    log.passed(
        name, f"{common_name(trusted)!r} ({kind}, SHA-256 {fingerprint(trusted)})"
    )
    return simulated


def _check_ca(log: CheckLog, cert: x509.Certificate, label: str) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.value.ca:
        log.fail(
            CertificateChainError,
            f"CA: {label}",
            f"expected {common_name(cert)!r} to be a CA certificate "
            "(basicConstraints cA=TRUE), it is not",
        )


def _signature(log: CheckLog, sign1: CoseSign1, leaf: x509.Certificate) -> None:
    name = "signature"
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        log.fail(
            SignatureError, name, f"expected a P-384 leaf key, got {type(key).__name__}"
        )
    if len(sign1.signature) != ES384_SIGNATURE_BYTES:
        log.fail(
            SignatureError,
            name,
            f"expected 96 bytes (r || s), the document has {len(sign1.signature)}",
        )
    try:
        verify_es384(key, sign1)
    except InvalidSignature:
        log.fail(
            SignatureError,
            name,
            f"ES384 signature does not verify with the key of {common_name(leaf)!r}",
        )
    log.passed(name, f"ES384 by {common_name(leaf)!r}")


def _expectations(
    log: CheckLog, document: NitroDocument, expect: NitroExpectations
) -> None:
    for index, pcr in sorted(expect.pcrs.items()):
        log.expect_equal(
            MeasurementMismatchError, f"PCR{index}", pcr, document.pcrs.get(index)
        )
    optional: tuple[tuple[str, bytes | None, bytes | None], ...] = (
        ("nonce", expect.nonce, document.nonce),
        ("public_key", expect.public_key, document.public_key),
        ("user_data", expect.user_data, document.user_data),
    )
    for name, value, actual in optional:
        if value is not None:
            log.expect_equal(BindingMismatchError, name, value, actual)
    if expect.policy_hash is not None:
        _policy(log, document, expect.policy_hash)


def _policy(log: CheckLog, document: NitroDocument, policy_hash: str) -> None:
    log.expect_equal(
        BindingMismatchError,
        "policy: user_data",
        measure.nitro_user_data(policy_hash),
        document.user_data,
    )
    log.expect_equal(
        MeasurementMismatchError,
        f"policy: PCR{measure.POLICY_PCR}",
        measure.expected_pcr16(policy_hash),
        document.pcrs.get(measure.POLICY_PCR),
    )
