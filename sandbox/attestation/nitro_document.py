"""The Nitro attestation document: the CBOR map inside the COSE_Sign1 payload.

Fields (AWS NSM API): ``module_id`` text, ``digest`` text (``"SHA384"``),
``timestamp`` unsigned milliseconds since the Unix epoch, ``pcrs`` map of
index to 32/48/64-byte values, ``certificate`` DER leaf, ``cabundle`` array
of DER certificates from the root to the one that signed the leaf, and
``public_key``, ``user_data``, ``nonce``: byte strings or null. Real NSM
documents write absent optional fields as null rather than leaving them out;
both are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cbor2

from sandbox.attestation.cose import strict_loads
from sandbox.errors import AttestationFormatError

REQUIRED_FIELDS = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
)
OPTIONAL_FIELDS = ("public_key", "user_data", "nonce")
PCR_LENGTHS = (32, 48, 64)


@dataclass(frozen=True)
class NitroDocument:
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)

    def to_cbor(self) -> bytes:
        """The payload bytes, keys in the order the NSM writes them."""
        return cbor2.dumps(
            {
                "module_id": self.module_id,
                "digest": self.digest,
                "timestamp": self.timestamp_ms,
                "pcrs": dict(sorted(self.pcrs.items())),
                "certificate": self.certificate,
                "cabundle": list(self.cabundle),
                "public_key": self.public_key,
                "user_data": self.user_data,
                "nonce": self.nonce,
            }
        )


def parse_document(payload: bytes) -> NitroDocument:
    """Read and type-check every field of a document payload."""
    item = strict_loads(payload, "attestation document")
    if not isinstance(item, dict):
        raise AttestationFormatError(
            f"attestation document: expected a CBOR map, got {type(item).__name__}"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in item]
    if missing:
        raise AttestationFormatError(
            f"attestation document: missing field(s) {', '.join(missing)}"
        )
    return NitroDocument(
        module_id=_typed(item, "module_id", str),
        digest=_typed(item, "digest", str),
        timestamp_ms=_timestamp(item),
        pcrs=_pcrs(item["pcrs"]),
        certificate=_typed(item, "certificate", bytes),
        cabundle=_cabundle(item["cabundle"]),
        public_key=_optional(item, "public_key"),
        user_data=_optional(item, "user_data"),
        nonce=_optional(item, "nonce"),
        extra={
            k: v for k, v in item.items() if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS
        },
    )


def _typed[T](item: dict[Any, Any], name: str, kind: type[T]) -> T:
    value = item[name]
    if not isinstance(value, kind):
        raise AttestationFormatError(
            f"attestation document field {name!r}: expected {kind.__name__}, "
            f"got {type(value).__name__}"
        )
    return value


def _timestamp(item: dict[Any, Any]) -> int:
    value = _typed(item, "timestamp", int)
    if value <= 0 or isinstance(value, bool):
        raise AttestationFormatError(
            f"attestation document field 'timestamp': expected milliseconds since "
            f"1970, got {value!r}"
        )
    return value


def _optional(item: dict[Any, Any], name: str) -> bytes | None:
    value = item.get(name)
    if value is not None and not isinstance(value, bytes):
        raise AttestationFormatError(
            f"attestation document field {name!r}: expected bytes or null, "
            f"got {type(value).__name__}"
        )
    return value


def _pcrs(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict):
        raise AttestationFormatError(
            f"attestation document field 'pcrs': expected a map, "
            f"got {type(value).__name__}"
        )
    for index, pcr in value.items():
        if not isinstance(index, int) or not 0 <= index < 32:
            raise AttestationFormatError(
                f"attestation document pcrs: expected indexes 0..31, got {index!r}"
            )
        if not isinstance(pcr, bytes) or len(pcr) not in PCR_LENGTHS:
            raise AttestationFormatError(
                f"attestation document PCR{index}: expected 32, 48 or 64 bytes, "
                f"got {pcr!r:.40}"
            )
    return dict(value)


def _cabundle(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not value:
        raise AttestationFormatError(
            "attestation document field 'cabundle': expected a non-empty array "
            "of DER certificates"
        )
    for position, cert in enumerate(value):
        if not isinstance(cert, bytes):
            raise AttestationFormatError(
                f"attestation document cabundle[{position}]: expected bytes, "
                f"got {type(cert).__name__}"
            )
    return tuple(value)
