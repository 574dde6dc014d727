"""COSE_Sign1 with ES384 (RFC 9052), the envelope of a Nitro document.

A COSE_Sign1 is the CBOR array ``[protected, unprotected, payload,
signature]``, optionally wrapped in CBOR tag 18. ``protected`` is a byte
string holding the CBOR map of protected headers; ES384 is algorithm -35
(header label 1). The signature is raw ``r || s`` (48 bytes each for P-384)
over the CBOR encoding of ``["Signature1", protected, b"", payload]``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from sandbox.errors import AttestationFormatError

COSE_SIGN1_TAG = 18
HEADER_ALGORITHM = 1
ES384 = -35
ES384_COORDINATE_BYTES = 48
ES384_SIGNATURE_BYTES = 2 * ES384_COORDINATE_BYTES


@dataclass(frozen=True)
class CoseSign1:
    """A decoded COSE_Sign1; ``protected`` keeps the exact signed bytes."""

    protected: bytes
    protected_headers: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool

    def to_be_signed(self) -> bytes:
        return sig_structure(self.protected, self.payload)


def strict_loads(data: bytes, what: str) -> Any:
    """Decode one CBOR item; trailing bytes and duplicate map keys are refused."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream, allow_duplicate_keys=False).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
        raise AttestationFormatError(f"{what}: not valid CBOR: {exc}") from exc
    if stream.tell() != len(data):
        raise AttestationFormatError(
            f"{what}: expected one CBOR item of {len(data)} bytes, "
            f"it ends at byte {stream.tell()}"
        )
    return item


def decode_sign1(data: bytes) -> CoseSign1:
    """Split a tagged or untagged COSE_Sign1 into its four parts."""
    item = strict_loads(data, "COSE_Sign1")
    tagged = isinstance(item, cbor2.CBORTag)
    if tagged:
        if item.tag != COSE_SIGN1_TAG:
            raise AttestationFormatError(
                f"COSE_Sign1: expected CBOR tag 18 or none, got tag {item.tag}"
            )
        item = item.value
    # cbor2 hands back the array inside a tag as a tuple.
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise AttestationFormatError(
            f"COSE_Sign1: expected an array of 4 items, got {_shape(item)}"
        )
    return _parts(list(item), tagged)


def _parts(item: list[Any], tagged: bool) -> CoseSign1:
    protected, unprotected, payload, signature = item
    for name, value in (
        ("protected", protected),
        ("payload", payload),
        ("signature", signature),
    ):
        if not isinstance(value, bytes):
            raise AttestationFormatError(
                f"COSE_Sign1 {name}: expected a byte string, got {_shape(value)}"
            )
    if not isinstance(unprotected, Mapping):
        raise AttestationFormatError(
            f"COSE_Sign1 unprotected: expected a map, got {_shape(unprotected)}"
        )
    headers = (
        strict_loads(protected, "COSE_Sign1 protected header") if protected else {}
    )
    if not isinstance(headers, dict):
        raise AttestationFormatError(
            f"COSE_Sign1 protected header: expected a map, got {_shape(headers)}"
        )
    return CoseSign1(protected, headers, dict(unprotected), payload, signature, tagged)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes a COSE_Sign1 signature covers (no external AAD)."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def verify_es384(public_key: ec.EllipticCurvePublicKey, sign1: CoseSign1) -> None:
    """Raise ``InvalidSignature`` unless ``sign1`` verifies with ``public_key``."""
    if len(sign1.signature) != ES384_SIGNATURE_BYTES:
        raise InvalidSignature("wrong signature length")
    r = int.from_bytes(sign1.signature[:ES384_COORDINATE_BYTES], "big")
    s = int.from_bytes(sign1.signature[ES384_COORDINATE_BYTES:], "big")
    public_key.verify(
        encode_dss_signature(r, s), sign1.to_be_signed(), ec.ECDSA(hashes.SHA384())
    )


def sign_es384(private_key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    """An untagged COSE_Sign1 over ``payload``, as the NSM produces it."""
    protected = cbor2.dumps({HEADER_ALGORITHM: ES384})
    der = private_key.sign(sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(ES384_COORDINATE_BYTES, "big") + s.to_bytes(
        ES384_COORDINATE_BYTES, "big"
    )
    return cbor2.dumps([protected, {}, payload, signature])


def _shape(value: Any) -> str:
    if isinstance(value, bytes | list | tuple | Mapping | str):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__
