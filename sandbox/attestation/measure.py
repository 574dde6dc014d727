"""How a policy hash becomes part of an attestation measurement.

All values derive from the 32 raw bytes of the policy hash
(``sha256:<64 hex>``, see ``sandbox.policy.bundle``), written ``P`` below.

Nitro Enclaves
    ``PCR16 = SHA-384(48 zero bytes || P)``: the NSM extend rule
    ``new = SHA-384(old || data)`` applied once to a fresh PCR, which the
    sandbox then locks. The document's ``user_data`` is
    ``b"policy-sandbox/v1\\0" || P`` (18 + 32 = 50 bytes), a readable label
    of the same value; PCR16 is the binding that counts, because it is
    locked before the first document is produced.

AMD SEV-SNP
    ``HOST_DATA = P`` when the host sets it at launch (the scheme
    Confidential Containers and Azure use), and in every report::

        REPORT_DATA = SHA-512(
            b"policy-sandbox/report-data/v1\\0"   (30 bytes)
            || u32 big-endian len(nonce) || nonce
            || SHA-256(DER SubjectPublicKeyInfo of the TLS key)   (32 bytes)
            || P                                   (32 bytes)
        )                                          (64 bytes, all of REPORT_DATA)

    The length prefix keeps the variable-length nonce from sliding into the
    fixed-length fields that follow it.
"""

from __future__ import annotations

import hashlib
import re
import struct

POLICY_HASH_PREFIX = "sha256:"
NITRO_USER_DATA_LABEL = b"policy-sandbox/v1\0"
SNP_REPORT_DATA_LABEL = b"policy-sandbox/report-data/v1\0"
PCR_BYTES = 48
POLICY_PCR = 16

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def policy_digest(policy_hash: str) -> bytes:
    """The 32 raw bytes of a ``sha256:<hex>`` policy hash."""
    if not policy_hash.startswith(POLICY_HASH_PREFIX):
        raise ValueError(
            f"policy hash: expected 'sha256:' and 64 lowercase hex digits, "
            f"got {policy_hash!r}"
        )
    hex_digest = policy_hash.removeprefix(POLICY_HASH_PREFIX)
    if not _HEX_DIGEST.fullmatch(hex_digest):
        raise ValueError(
            f"policy hash: expected 64 lowercase hex digits after 'sha256:', "
            f"got {hex_digest!r}"
        )
    return bytes.fromhex(hex_digest)


def extend_pcr(value: bytes, data: bytes) -> bytes:
    """The NSM extend rule: the new register is SHA-384(old value || data)."""
    return hashlib.sha384(value + data).digest()


def expected_pcr16(policy_hash: str) -> bytes:
    """PCR16 after the sandbox extends a fresh register with the policy bytes."""
    return extend_pcr(bytes(PCR_BYTES), policy_digest(policy_hash))


def expected_host_data(policy_hash: str) -> bytes:
    """The SEV-SNP HOST_DATA a host sets to launch a VM bound to this policy."""
    return policy_digest(policy_hash)


def nitro_user_data(policy_hash: str) -> bytes:
    """The Nitro ``user_data`` that labels a document with its policy."""
    return NITRO_USER_DATA_LABEL + policy_digest(policy_hash)


def snp_report_data(nonce: bytes, tls_public_key_der: bytes, policy_hash: str) -> bytes:
    """The 64-byte SEV-SNP REPORT_DATA binding nonce, TLS key and policy."""
    message = b"".join(
        (
            SNP_REPORT_DATA_LABEL,
            struct.pack(">I", len(nonce)),
            nonce,
            hashlib.sha256(tls_public_key_der).digest(),
            policy_digest(policy_hash),
        )
    )
    return hashlib.sha512(message).digest()
