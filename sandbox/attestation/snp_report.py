"""The AMD SEV-SNP attestation report (firmware ABI, ATTESTATION_REPORT).

1184 bytes, little-endian integers. Offsets used here (version 2 layout;
later versions keep every offset below and fill reserved bytes)::

    0x000 u32  version            0x004 u32  guest_svn
    0x008 u64  policy             0x010 16 B family_id
    0x020 16 B image_id           0x030 u32  vmpl
    0x034 u32  signature_algo (1 = ECDSA P-384 with SHA-384)
    0x038 u64  current_tcb        0x040 u64  platform_info
    0x048 u32  flags (bits 4:2 signing key: 0 VCEK, 1 VLEK, 7 none)
    0x050 64 B report_data        0x090 48 B measurement
    0x0C0 32 B host_data          0x0E0 48 B id_key_digest
    0x110 48 B author_key_digest  0x140 32 B report_id
    0x160 32 B report_id_ma       0x180 u64  reported_tcb
    0x1A0 64 B chip_id            0x1E0 u64  committed_tcb
    0x1E8 u8 current build, minor, major
    0x1EC u8 committed build, minor, major
    0x1F0 u64  launch_tcb
    0x2A0 signature: r (72 B) then s (72 B), little-endian, zero-padded

The signature covers bytes 0x000..0x29F. A TCB value (Milan and Genoa
layout) holds bootloader SPL in byte 0, TEE SPL in byte 1, SNP SPL in
byte 6 and microcode SPL in byte 7.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sandbox.errors import AttestationFormatError

REPORT_SIZE = 1184
SIGNED_SIZE = 0x2A0
SIGNATURE_OFFSET = 0x2A0
SIGNATURE_COMPONENT = 72
ECDSA_P384_SHA384 = 1
SIGNING_KEY_VCEK = 0
# Guest policy bit 19: the host may debug the guest, that is read its memory.
POLICY_DEBUG = 1 << 19
REPORT_DATA = slice(0x50, 0x90)
MEASUREMENT = slice(0x90, 0xC0)
HOST_DATA = slice(0xC0, 0xE0)
CHIP_ID = slice(0x1A0, 0x1E0)


@dataclass(frozen=True)
class TcbVersion:
    """Security patch levels, as the VCEK certificate's extensions name them."""

    bootloader: int
    tee: int
    snp: int
    microcode: int

    @classmethod
    def from_u64(cls, value: int) -> TcbVersion:
        raw = value.to_bytes(8, "little")
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def to_u64(self) -> int:
        raw = bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])
        return int.from_bytes(raw, "little")

    def __str__(self) -> str:
        return (
            f"bootloader {self.bootloader}, tee {self.tee}, snp {self.snp}, "
            f"microcode {self.microcode}"
        )


@dataclass(frozen=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    signing_key: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    chip_id: bytes
    committed_tcb: int
    current_version: tuple[int, int, int]
    committed_version: tuple[int, int, int]
    launch_tcb: int
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def firmware(self) -> str:
        major, minor, build = self.current_version
        return f"{major}.{minor}.{build}"


def parse_report(raw: bytes) -> SnpReport:
    """Read the fields listed in the module docstring; lengths are checked."""
    if len(raw) != REPORT_SIZE:
        raise AttestationFormatError(
            f"SEV-SNP report: expected {REPORT_SIZE} bytes, got {len(raw)}"
        )
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    vmpl, algo, current_tcb, platform_info, flags = struct.unpack_from(
        "<IIQQI", raw, 0x30
    )
    return SnpReport(
        raw=bytes(raw),
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signature_algo=algo,
        current_tcb=current_tcb,
        platform_info=platform_info,
        signing_key=(flags >> 2) & 0b111,
        report_data=raw[REPORT_DATA],
        measurement=raw[MEASUREMENT],
        host_data=raw[HOST_DATA],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=_u64(raw, 0x180),
        chip_id=raw[CHIP_ID],
        committed_tcb=_u64(raw, 0x1E0),
        current_version=_version(raw, 0x1E8),
        committed_version=_version(raw, 0x1EC),
        launch_tcb=_u64(raw, 0x1F0),
        signature_r=_component(raw, SIGNATURE_OFFSET),
        signature_s=_component(raw, SIGNATURE_OFFSET + SIGNATURE_COMPONENT),
    )


def signature_bytes(r: int, s: int) -> bytes:
    """The 144 signature bytes for ``r`` and ``s`` in the report's layout."""
    return r.to_bytes(SIGNATURE_COMPONENT, "little") + s.to_bytes(
        SIGNATURE_COMPONENT, "little"
    )


def _u64(raw: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<Q", raw, offset)[0]
    return value


def _version(raw: bytes, offset: int) -> tuple[int, int, int]:
    build, minor, major = raw[offset : offset + 3]
    return major, minor, build


def _component(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset : offset + SIGNATURE_COMPONENT], "little")
