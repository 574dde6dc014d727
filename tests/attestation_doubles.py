"""Device doubles for the tests: an NSM and a configfs-tsm "kernel" with AMD keys.

They speak the real formats so the providers run unchanged against them:
``FakeNsm`` answers the NSM's CBOR requests and signs Nitro-format
documents with a development root; ``FakeConfigfs`` keeps a configfs-tsm
report directory in a real folder and, like the kernel, fills ``outblob``
when ``inblob`` is written, with a report signed by a development VCEK
whose ASK and ARK it also makes (RSA-PSS, as AMD's are). Evidence from
either verifies only with ``allow_simulated``.
"""

from __future__ import annotations

import shutil
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sandbox.attestation import measure
from sandbox.attestation.certs import der
from sandbox.attestation.nitro_document import NitroDocument
from sandbox.attestation.simulated import DevelopmentCA
from sandbox.attestation.snp_certs import (
    ARK_GUID,
    ASK_GUID,
    OID_BL_SPL,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_TEE_SPL,
    OID_UCODE_SPL,
    VCEK_GUID,
    AmdChain,
    build_cert_table,
)
from sandbox.attestation.snp_report import (
    REPORT_SIZE,
    SIGNATURE_OFFSET,
    SIGNED_SIZE,
    TcbVersion,
    signature_bytes,
)

PCR_COUNT = 32


@dataclass
class FakeNsm:
    """An NSM with 32 PCRs, 0..15 locked as at boot; records each request.

    PCR0-2 hold measurements, as in an enclave not in debug mode (which has
    them zeroed); the rest start at zero."""

    ca: DevelopmentCA = field(default_factory=DevelopmentCA.create)
    module_id: str = "i-0fake0000000000000-enc0000000000000000"
    pcrs: dict[int, bytes] = field(default_factory=dict)
    locked: set[int] = field(default_factory=lambda: set(range(16)))
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        for index in range(PCR_COUNT):
            booted = bytes([0xA0 + index]) * measure.PCR_BYTES if index < 3 else None
            self.pcrs.setdefault(index, booted or bytes(measure.PCR_BYTES))

    def exchange(self, request: bytes) -> bytes:
        self.requests.append(request)
        decoded = cbor2.loads(request)
        operation, body = next(iter(decoded.items()))
        handlers = {
            "DescribePCR": self._describe,
            "ExtendPCR": self._extend,
            "LockPCR": self._lock,
            "Attestation": self._attest,
        }
        handler = handlers.get(operation)
        if handler is None:
            return cbor2.dumps({"Error": "InvalidOperation"})
        response: Any = handler(body)
        return cbor2.dumps(response)

    def _describe(self, body: dict[str, Any]) -> Any:
        index = body["index"]
        if index not in self.pcrs:
            return {"Error": "InvalidIndex"}
        return {"DescribePCR": {"lock": index in self.locked, "data": self.pcrs[index]}}

    def _extend(self, body: dict[str, Any]) -> Any:
        index = body["index"]
        if index in self.locked:
            return {"Error": "ReadOnlyIndex"}
        self.pcrs[index] = measure.extend_pcr(self.pcrs[index], body["data"])
        return {"ExtendPCR": {"data": self.pcrs[index]}}

    def _lock(self, body: dict[str, Any]) -> Any:
        self.locked.add(body["index"])
        return "LockPCR"

    def _attest(self, body: dict[str, Any]) -> Any:
        document = NitroDocument(
            module_id=self.module_id,
            digest="SHA384",
            timestamp_ms=int(time.time() * 1000),
            pcrs={i: v for i, v in self.pcrs.items() if i in self.locked},
            certificate=b"",
            cabundle=(),
            public_key=body.get("public_key"),
            user_data=body.get("user_data"),
            nonce=body.get("nonce"),
        )
        return {"Attestation": {"document": self.ca.sign_document(document)}}


@dataclass(frozen=True)
class DevelopmentAmdKeys:
    """An ARK -> ASK -> VCEK chain shaped like AMD's, made in memory."""

    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    chip_id: bytes
    tcb: TcbVersion

    @classmethod
    def create(
        cls, chip_id: bytes = bytes(range(64)), tcb: TcbVersion | None = None
    ) -> DevelopmentAmdKeys:
        tcb = tcb or TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
        ark_key = rsa.generate_private_key(65537, 2048)
        ask_key = rsa.generate_private_key(65537, 2048)
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark = _amd_cert("ARK-Dev", ark_key.public_key(), ark_key, "ARK-Dev", [])
        ask = _amd_cert("SEV-Dev", ask_key.public_key(), ark_key, "ARK-Dev", [])
        extensions = _vcek_extensions(chip_id, tcb)
        vcek = _amd_cert(
            "SEV-VCEK", vcek_key.public_key(), ask_key, "SEV-Dev", extensions
        )
        return cls(ark, ask, vcek, vcek_key, chip_id, tcb)

    @property
    def chain(self) -> AmdChain:
        return AmdChain(self.vcek, self.ask, self.ark)

    @property
    def certificate_table(self) -> bytes:
        return build_cert_table(
            {
                VCEK_GUID: der(self.vcek),
                ASK_GUID: der(self.ask),
                ARK_GUID: der(self.ark),
            }
        )

    def sign_report(
        self,
        report_data: bytes,
        *,
        measurement: bytes = bytes(48),
        host_data: bytes = bytes(32),
    ) -> bytes:
        """A version 2 report with these fields, signed by the VCEK."""
        report = bytearray(REPORT_SIZE)
        struct.pack_into("<IIQ", report, 0x00, 2, 0, 0x30000)
        struct.pack_into("<II", report, 0x30, 0, 1)
        report[0x50:0x90] = report_data
        report[0x90:0xC0] = measurement
        report[0xC0:0xE0] = host_data
        struct.pack_into("<Q", report, 0x180, self.tcb.to_u64())
        report[0x1A0:0x1E0] = self.chip_id
        signature = self.vcek_key.sign(
            bytes(report[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())
        )
        r, s = decode_dss_signature(signature)
        report[SIGNATURE_OFFSET : SIGNATURE_OFFSET + 144] = signature_bytes(r, s)
        return bytes(report)


def _amd_cert(
    name: str,
    public_key: Any,
    signer: rsa.RSAPrivateKey,
    issuer: str,
    extensions: list[x509.UnrecognizedExtension],
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    return builder.sign(signer, hashes.SHA384(), rsa_padding=pss)


def _vcek_extensions(
    chip_id: bytes, tcb: TcbVersion
) -> list[x509.UnrecognizedExtension]:
    def integer(value: int) -> bytes:
        return (
            bytes([0x02, 0x01, value])
            if value < 0x80
            else bytes([0x02, 0x02, 0, value])
        )

    return [
        x509.UnrecognizedExtension(OID_PRODUCT_NAME, b"\x16\x06Dev-B0"),
        x509.UnrecognizedExtension(OID_BL_SPL, integer(tcb.bootloader)),
        x509.UnrecognizedExtension(OID_TEE_SPL, integer(tcb.tee)),
        x509.UnrecognizedExtension(OID_SNP_SPL, integer(tcb.snp)),
        x509.UnrecognizedExtension(OID_UCODE_SPL, integer(tcb.microcode)),
        x509.UnrecognizedExtension(OID_HWID, chip_id),
    ]


@dataclass
class FakeConfigfs:
    """configfs-tsm in a real folder: ``<base>/<entry>/{inblob,outblob,...}``.

    ``base`` must exist, as ``/sys/kernel/config/tsm/report`` does.

    Writing ``inblob`` bumps ``generation`` and makes the "kernel" write a
    signed report with that REPORT_DATA to ``outblob`` and the certificate
    table to ``auxblob``. ``races`` is how many upcoming reads of
    ``outblob`` see another writer bump ``generation`` first.
    """

    base: Path
    keys: DevelopmentAmdKeys = field(default_factory=DevelopmentAmdKeys.create)
    host_data: bytes = bytes(32)
    measurement: bytes = bytes(48)
    races: int = 0
    provider: str = "sev_guest"

    def exists(self, path: Path) -> bool:
        return path.is_dir()

    def mkdir(self, path: Path) -> None:
        path.mkdir()
        for name, content in (
            ("provider", f"{self.provider}\n".encode()),
            ("generation", b"0\n"),
            ("privlevel_floor", b"0\n"),
            ("outblob", b""),
            ("auxblob", b""),
        ):
            (path / name).write_bytes(content)

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)

    def read(self, path: Path) -> bytes:
        if path.name == "outblob" and self.races > 0:
            self.races -= 1
            self._bump(path.parent)
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        self._bump(path.parent)
        if path.name == "inblob":
            report = self.keys.sign_report(
                data, measurement=self.measurement, host_data=self.host_data
            )
            (path.parent / "outblob").write_bytes(report)
            (path.parent / "auxblob").write_bytes(self.keys.certificate_table)

    def _bump(self, entry: Path) -> None:
        generation = int((entry / "generation").read_text()) + 1
        (entry / "generation").write_text(f"{generation}\n")
