"""AMD certificates for SEV-SNP: the VCEK -> ASK -> ARK chain and its sources.

Sources: files (any mix of DER and PEM; certificates are told apart by their
common names ``SEV-VCEK``, ``SEV-<product>`` for the ASK and
``ARK-<product>``), or the certificate table that configfs-tsm returns as
``auxblob`` (GHCB specification): 24-byte entries of a GUID (16 bytes, RFC
4122 byte order), a u32 offset and a u32 length (little-endian, offsets
from the start of the table), closed by an all-zero entry.

The VCEK carries the TCB it was issued for and the chip it belongs to as
extensions under AMD's arc 1.3.6.1.4.1.3704.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509

from sandbox.attestation.certs import common_name, load_zero_serial_certificates
from sandbox.attestation.snp_report import TcbVersion
from sandbox.errors import AttestationFormatError

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
ROLE_GUIDS = {"vcek": VCEK_GUID, "ask": ASK_GUID, "ark": ARK_GUID}
_ENTRY = struct.Struct("<16sII")

OID_BL_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
OID_TEE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
OID_SNP_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
OID_UCODE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
OID_PRODUCT_NAME = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")


@dataclass(frozen=True)
class AmdChain:
    vcek: x509.Certificate | None = None
    ask: x509.Certificate | None = None
    ark: x509.Certificate | None = None


def role_of(cert: x509.Certificate) -> str | None:
    """``vcek``, ``ask`` or ``ark`` from the common name AMD gives each."""
    name = common_name(cert)
    if name == "SEV-VCEK":
        return "vcek"
    if name.startswith("ARK-"):
        return "ark"
    if name.startswith("SEV-") and name != "SEV-VLEK":
        return "ask"
    return None


def chain_from_files(
    files: Mapping[str, bytes], preferred: Mapping[str, str] | None = None
) -> AmdChain:
    """Sort the certificates in ``files`` (name -> bytes) into a chain.

    ``preferred`` maps a role to the file that must supply it (the file named
    by ``--ark``, say); other roles come from whichever file holds them.
    """
    found: dict[str, x509.Certificate] = {}
    for role, name in (preferred or {}).items():
        found[role] = _take(
            role, name, load_zero_serial_certificates(files[name], name)
        )
    for name, data in files.items():
        for cert in load_zero_serial_certificates(data, name):
            kind = role_of(cert)
            if kind is not None:
                found.setdefault(kind, cert)
    return AmdChain(found.get("vcek"), found.get("ask"), found.get("ark"))


def _take(role: str, name: str, certs: Iterable[x509.Certificate]) -> x509.Certificate:
    certs = list(certs)
    for cert in certs:
        if role_of(cert) == role:
            return cert
    if len(certs) == 1:
        return certs[0]
    raise AttestationFormatError(
        f"{name}: expected an {role.upper()} certificate, found "
        f"{', '.join(repr(common_name(c)) for c in certs) or 'none'}"
    )


def parse_cert_table(table: bytes) -> dict[uuid.UUID, bytes]:
    """GUID -> certificate bytes from a GHCB certificate table."""
    entries: dict[uuid.UUID, bytes] = {}
    for position in range(0, len(table) - _ENTRY.size + 1, _ENTRY.size):
        raw_guid, offset, length = _ENTRY.unpack_from(table, position)
        if raw_guid == bytes(16) and offset == 0 and length == 0:
            return entries
        if offset + length > len(table):
            raise AttestationFormatError(
                f"certificate table entry {position // _ENTRY.size}: expected "
                f"bytes {offset}..{offset + length} within {len(table)}"
            )
        entries[uuid.UUID(bytes=raw_guid)] = table[offset : offset + length]
    raise AttestationFormatError(
        f"certificate table: expected an all-zero closing entry in {len(table)} bytes"
    )


def chain_from_table(table: bytes) -> AmdChain:
    entries = parse_cert_table(table)
    found: dict[str, x509.Certificate] = {}
    for role, guid in ROLE_GUIDS.items():
        if guid in entries:
            certs = load_zero_serial_certificates(entries[guid], f"{role} in table")
            found[role] = certs[0]
    return AmdChain(found.get("vcek"), found.get("ask"), found.get("ark"))


def build_cert_table(certs: Mapping[uuid.UUID, bytes]) -> bytes:
    """A GHCB certificate table holding ``certs`` (the inverse of parsing)."""
    header_size = _ENTRY.size * (len(certs) + 1)
    header, body = b"", b""
    for guid, data in certs.items():
        header += _ENTRY.pack(guid.bytes, header_size + len(body), len(data))
        body += data
    return header + bytes(_ENTRY.size) + body


def vcek_tcb(vcek: x509.Certificate) -> TcbVersion:
    """The TCB a VCEK was issued for, from its SPL extensions."""
    return TcbVersion(
        bootloader=_spl(vcek, OID_BL_SPL, "blSPL"),
        tee=_spl(vcek, OID_TEE_SPL, "teeSPL"),
        snp=_spl(vcek, OID_SNP_SPL, "snpSPL"),
        microcode=_spl(vcek, OID_UCODE_SPL, "ucodeSPL"),
    )


def vcek_hwid(vcek: x509.Certificate) -> bytes:
    """The chip ID a VCEK belongs to (raw, or wrapped in an OCTET STRING)."""
    value = _extension(vcek, OID_HWID, "hwID")
    if len(value) == 66 and value[:2] == b"\x04\x40":
        return value[2:]
    return value


def vcek_product(vcek: x509.Certificate) -> str:
    """``Milan-B0`` and the like; empty when the extension is absent."""
    try:
        value = _extension(vcek, OID_PRODUCT_NAME, "productName")
    except AttestationFormatError:
        return ""
    return value[2:].decode("ascii", "replace") if len(value) > 2 else ""


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> bytes:
    try:
        extension = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound as exc:
        raise AttestationFormatError(
            f"VCEK {common_name(cert)!r}: expected the {label} extension "
            f"({oid.dotted_string}), it is absent"
        ) from exc
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AttestationFormatError(
            f"VCEK extension {label}: expected raw bytes, got {type(value).__name__}"
        )
    return value.value


def _spl(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> int:
    value = _extension(cert, oid, label)
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2:
        raise AttestationFormatError(
            f"VCEK extension {label}: expected a DER INTEGER, got {value.hex()}"
        )
    return int.from_bytes(value[2:], "big")
