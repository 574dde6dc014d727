"""Recognise evidence as it arrives: raw CBOR, base64 or hex; Nitro or SNP.

Input made only of hex digits (and white space) is hex; input made only of
base64 characters is base64; anything else is raw bytes (binary evidence
always holds bytes outside those alphabets). Then
the bytes are classified: exactly 1184 bytes is an SEV-SNP report; a CBOR
array of four (0x84) or tag 18 (0xD2) is a Nitro COSE_Sign1.
"""

from __future__ import annotations

import base64
import binascii
import re

from sandbox.attestation.snp_report import REPORT_SIZE
from sandbox.errors import AttestationFormatError

NITRO = "nitro"
SNP = "snp"
_HEX = re.compile(rb"[0-9a-fA-F]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/=_-]+")
_COSE_FIRST_BYTES = (0x84, 0xD2)


def decode_input(data: bytes) -> bytes:
    """The raw evidence bytes, whether given raw, as hex or as base64."""
    text = b"".join(data.split())
    if _HEX.fullmatch(text) and len(text) % 2 == 0:
        return bytes.fromhex(text.decode())
    if _BASE64.fullmatch(text):
        try:
            return base64.b64decode(_pad(text), altchars=_altchars(text), validate=True)
        except binascii.Error as exc:
            raise AttestationFormatError(f"evidence: not valid base64: {exc}") from exc
    return data


def detect_format(raw: bytes) -> str:
    """``nitro`` or ``snp``; raise when the bytes are neither."""
    if len(raw) == REPORT_SIZE:
        return SNP
    if raw and raw[0] in _COSE_FIRST_BYTES:
        return NITRO
    raise AttestationFormatError(
        f"evidence: expected a {REPORT_SIZE}-byte SEV-SNP report or a CBOR "
        f"COSE_Sign1 (first byte 0x84 or 0xd2), got {len(raw)} bytes starting "
        f"{raw[:4].hex() or 'with nothing'}"
    )


def _pad(text: bytes) -> bytes:
    return text + b"=" * (-len(text) % 4)


def _altchars(text: bytes) -> bytes | None:
    return b"-_" if b"-" in text or b"_" in text else None
