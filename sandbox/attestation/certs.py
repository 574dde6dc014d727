"""X.509 steps shared by the Nitro and SEV-SNP verifiers.

Chains are checked link by link here rather than with a generic path
builder: both vendors publish fixed, short chains whose shape the verifiers
know, and the AMD certificates (RSA-PSS, VCEK serial number 0) fall outside
what a strict RFC 5280 path builder accepts.
"""

from __future__ import annotations

import hashlib
import warnings
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from sandbox.attestation.checks import CheckLog
from sandbox.errors import (
    AttestationFormatError,
    CertificateChainError,
    CertificateExpiredError,
)

PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


def load_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in ``data``: one DER certificate or a run of PEM blocks."""
    try:
        if PEM_MARKER in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise AttestationFormatError(
            f"{what}: expected a DER or PEM certificate: {exc}"
        ) from exc


def load_zero_serial_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Like ``load_certificates``, for AMD files that may hold a VCEK.

    AMD issues every VCEK with serial number 0, which RFC 5280 forbids and
    ``cryptography`` reports with a deprecation warning (an error under our
    test settings). The warning says nothing about the report's authenticity,
    so it is silenced for exactly this call and this message. Callers must
    not read ``serial_number`` afterwards: that re-emits it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Parsed a serial number which wasn't positive",
            category=CryptographyDeprecationWarning,
        )
        return load_certificates(data, what)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, in hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def check_issued_by(
    log: CheckLog,
    name: str,
    cert: x509.Certificate,
    issuer: x509.Certificate,
) -> None:
    """Record that ``issuer`` signed ``cert``, or fail with what went wrong."""
    subject, signer = common_name(cert), common_name(issuer)
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        log.fail(
            CertificateChainError,
            name,
            f"signature on {subject!r} does not verify with the key of {signer!r}",
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        log.fail(
            CertificateChainError,
            name,
            f"{subject!r} (issuer {cert.issuer.rfc4514_string()!r}) is not issued "
            f"by {signer!r}: {exc}",
        )
    log.passed(name, f"{subject!r} signed by {signer!r}")


def check_valid_at(
    log: CheckLog, name: str, cert: x509.Certificate, at: datetime
) -> None:
    """Record that ``cert`` is within its validity period at ``at``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    period = f"{iso(start)} to {iso(end)}"
    if not start <= at <= end:
        log.fail(
            CertificateExpiredError,
            name,
            f"{common_name(cert)!r} is valid {period}, not at {iso(at)}",
        )
    log.passed(name, f"{common_name(cert)!r} valid {period}")


def iso(moment: datetime) -> str:
    """A UTC time as ``2024-08-07T06:38:09Z``."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
