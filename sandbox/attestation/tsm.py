"""The SEV-SNP provider: reports from configfs-tsm or ``/dev/sev-guest``.

configfs-tsm (Linux 6.7+): make a directory under
``/sys/kernel/config/tsm/report/``; the kernel fills it with attributes.
Write the 64 bytes of REPORT_DATA to ``inblob``, read the report from
``outblob`` and the certificate table from ``auxblob`` (may be empty).
Every write bumps ``generation``, so reading it before the write, after
the write and after the reads shows whether another writer touched the
entry in between; the read is then retried, and refused after a few tries.

``/dev/sev-guest`` (older kernels): the SNP_GET_REPORT ioctl,
``_IOWR('S', 0, struct snp_guest_request_ioctl)``; the request is the
REPORT_DATA, a u32 VMPL and 28 reserved bytes, and the 4000-byte response
holds a status (u32), the report size (u32), 24 reserved bytes, then the
report. No certificate table comes back this way.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sandbox.attestation import measure
from sandbox.attestation.nsm import iowr
from sandbox.attestation.snp_report import REPORT_SIZE, parse_report
from sandbox.errors import (
    AttestationDeviceError,
    AttestationFormatError,
    PolicyBindingError,
    ReportRaceError,
)

logger = logging.getLogger("sandbox.attestation")

CONFIGFS_TSM_REPORT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEVICE = "/dev/sev-guest"
SEV_GUEST_PROVIDER = "sev_guest"
REPORT_DATA_BYTES = 64
RACE_ATTEMPTS = 3
START_NONCE = b"policy-sandbox/start"

_GUEST_REQUEST = struct.Struct("=B7xQQQ")
SNP_GET_REPORT = iowr(ord("S"), 0, _GUEST_REQUEST.size)
_REPORT_REQUEST = struct.Struct("=64sI28x")
_RESPONSE_BYTES = 4000
_RESPONSE_HEADER = struct.Struct("<II24x")


@dataclass(frozen=True)
class Evidence:
    report: bytes
    certificate_table: bytes = b""


class ReportSource(Protocol):
    def get_report(self, report_data: bytes) -> Evidence:
        """A report carrying ``report_data`` (blocking)."""
        ...


class TsmFilesystem(Protocol):
    """The file operations configfs-tsm needs, so a double can stand in."""

    def exists(self, path: Path) -> bool: ...
    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> None: ...


class OsFilesystem:
    """The real thing. A configfs attribute must be written in one call."""

    def exists(self, path: Path) -> bool:
        return path.is_dir()

    def mkdir(self, path: Path) -> None:
        path.mkdir()

    def rmdir(self, path: Path) -> None:
        path.rmdir()

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"{path}: wrote {written} of {len(data)} bytes")


@dataclass
class ConfigfsTsm:
    base: Path = CONFIGFS_TSM_REPORT
    fs: TsmFilesystem = field(default_factory=OsFilesystem)
    attempts: int = RACE_ATTEMPTS

    def available(self) -> bool:
        return self.fs.exists(self.base)

    def get_report(self, report_data: bytes) -> Evidence:
        entry = self.base / f"policy-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.fs.mkdir(entry)
        except OSError as exc:
            raise AttestationDeviceError(f"{entry}: cannot create: {exc}") from exc
        try:
            self._check_provider(entry)
            return self._read_until_quiet(entry, report_data)
        except OSError as exc:
            if isinstance(exc, AttestationDeviceError):
                raise
            raise AttestationDeviceError(f"{entry}: {exc}") from exc
        finally:
            self.fs.rmdir(entry)

    def _check_provider(self, entry: Path) -> None:
        provider = self.fs.read(entry / "provider").decode(errors="replace").strip()
        if provider != SEV_GUEST_PROVIDER:
            raise AttestationDeviceError(
                f"{entry / 'provider'}: expected {SEV_GUEST_PROVIDER!r}, "
                f"got {provider!r}"
            )

    def _read_until_quiet(self, entry: Path, report_data: bytes) -> Evidence:
        seen: list[tuple[int, int, int]] = []
        for _ in range(self.attempts):
            before = self._generation(entry)
            self.fs.write(entry / "inblob", report_data)
            written = self._generation(entry)
            report = self.fs.read(entry / "outblob")
            table = self._auxblob(entry)
            after = self._generation(entry)
            if written == before + 1 and after == written:
                return Evidence(report, table)
            seen.append((before, written, after))
            logger.warning("configfs-tsm %s: another writer raced, retrying", entry)
        raise ReportRaceError(
            f"{entry / 'generation'}: expected one bump per write, saw "
            f"(before, after write, after read) = {seen} in {self.attempts} tries"
        )

    def _generation(self, entry: Path) -> int:
        text = self.fs.read(entry / "generation").decode(errors="replace").strip()
        try:
            return int(text)
        except ValueError as exc:
            raise AttestationDeviceError(
                f"{entry / 'generation'}: expected a number, got {text!r}"
            ) from exc

    def _auxblob(self, entry: Path) -> bytes:
        try:
            return self.fs.read(entry / "auxblob")
        except FileNotFoundError:
            return b""


@dataclass
class SevGuestDevice:
    path: str = SEV_GUEST_DEVICE
    vmpl: int = 0

    def get_report(self, report_data: bytes) -> Evidence:
        request = ctypes.create_string_buffer(
            _REPORT_REQUEST.pack(report_data, self.vmpl), _REPORT_REQUEST.size
        )
        response = ctypes.create_string_buffer(_RESPONSE_BYTES)
        message = bytearray(
            _GUEST_REQUEST.pack(
                1, ctypes.addressof(request), ctypes.addressof(response), 0
            )
        )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise AttestationDeviceError(f"{self.path}: cannot open: {exc}") from exc
        try:
            fcntl.ioctl(fd, SNP_GET_REPORT, message, True)
        except OSError as exc:
            firmware = _GUEST_REQUEST.unpack(message)[3]
            raise AttestationDeviceError(
                f"{self.path}: SNP_GET_REPORT failed: {exc} (exitinfo2 {firmware:#x})"
            ) from exc
        finally:
            os.close(fd)
        return Evidence(_report_from_response(response.raw, self.path))


def _report_from_response(raw: bytes, where: str) -> bytes:
    status, size = _RESPONSE_HEADER.unpack_from(raw)
    if status != 0 or size != REPORT_SIZE:
        raise AttestationDeviceError(
            f"{where}: expected status 0 and a {REPORT_SIZE}-byte report, "
            f"got status {status:#x} and size {size}"
        )
    start = _RESPONSE_HEADER.size
    return raw[start : start + REPORT_SIZE]


class SevSnpProvider:
    """Checks HOST_DATA at start; reports bind nonce, TLS key and policy."""

    name = "sev-snp"

    def __init__(
        self,
        source: ReportSource | None = None,
        *,
        configfs: Path = CONFIGFS_TSM_REPORT,
        device: str = SEV_GUEST_DEVICE,
    ) -> None:
        self._source = source
        self._configfs = configfs
        self._device = device
        self._policy_hash: str | None = None
        self.certificate_table = b""

    async def start(self, policy_hash: str) -> None:
        """Refuse to start when the host bound this VM to another policy."""
        await asyncio.to_thread(self._check_host_data, policy_hash)
        self._policy_hash = policy_hash

    async def attest(
        self, nonce: bytes, public_key: bytes, user_data: bytes | None = None
    ) -> bytes:
        """The raw report; its certificate table is kept in ``certificate_table``."""
        if self._policy_hash is None:
            raise RuntimeError("sev-snp provider: call start(policy_hash) first")
        report_data = user_data
        if report_data is None:
            report_data = measure.snp_report_data(nonce, public_key, self._policy_hash)
        evidence = await asyncio.to_thread(self._report, report_data)
        self.certificate_table = evidence.certificate_table
        return evidence.report

    def _check_host_data(self, policy_hash: str) -> None:
        report_data = measure.snp_report_data(START_NONCE, b"", policy_hash)
        host_data = parse_report(self._report(report_data).report).host_data
        expected = measure.expected_host_data(policy_hash)
        if host_data == bytes(len(host_data)):
            logger.warning(
                "SEV-SNP HOST_DATA is not set; the policy is bound by REPORT_DATA only"
            )
        elif host_data != expected:
            raise PolicyBindingError(
                f"SEV-SNP HOST_DATA: expected {expected.hex()} (policy {policy_hash}), "
                f"the host launched this VM with {host_data.hex()}"
            )

    def _report(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_BYTES:
            raise ValueError(
                f"REPORT_DATA: expected {REPORT_DATA_BYTES} bytes, "
                f"got {len(report_data)}"
            )
        evidence = self._resolved_source().get_report(report_data)
        try:
            echoed = parse_report(evidence.report).report_data
        except AttestationFormatError as exc:
            raise AttestationDeviceError(f"SEV-SNP report: {exc}") from exc
        if echoed != report_data:
            raise ReportRaceError(
                f"SEV-SNP report: expected REPORT_DATA {report_data.hex()}, "
                f"the report carries {echoed.hex()}"
            )
        return evidence

    def _resolved_source(self) -> ReportSource:
        if self._source is None:
            configfs = ConfigfsTsm(self._configfs)
            self._source = (
                configfs if configfs.available() else SevGuestDevice(self._device)
            )
        return self._source
