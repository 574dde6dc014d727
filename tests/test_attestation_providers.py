"""Providers end to end: simulated, Nitro against an NSM double, SEV-SNP
against a configfs-tsm double; evidence from each goes through the verifier."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.attestation import measure
from sandbox.attestation.nitro_verify import NitroExpectations, verify_nitro_document
from sandbox.attestation.nsm import NSM_IOCTL_REQUEST, NitroProvider
from sandbox.attestation.provider import make_provider
from sandbox.attestation.simulated import SimulatedProvider, code_measurement
from sandbox.attestation.snp_certs import chain_from_table
from sandbox.attestation.snp_verify import SnpExpectations, verify_snp_report
from sandbox.attestation.tsm import SNP_GET_REPORT, ConfigfsTsm, SevSnpProvider
from sandbox.errors import (
    AttestationDeviceError,
    BindingMismatchError,
    MeasurementMismatchError,
    PolicyBindingError,
    ReportRaceError,
    SimulatedRootError,
)
from tests.attestation_doubles import FakeConfigfs, FakeNsm

POLICY = "sha256:" + "5a" * 32
OTHER_POLICY = "sha256:" + "a5" * 32
NONCE = b"client nonce 0123456789"


def _spki() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# Simulated --------------------------------------------------------------------


async def test_simulated_document_verifies_with_its_root_and_opt_in() -> None:
    provider = SimulatedProvider()
    await provider.start(POLICY)
    spki = _spki()

    document = await provider.attest(NONCE, spki)

    root = _root(provider.root_pem)
    result = verify_nitro_document(
        document,
        root=root,
        allow_simulated=True,
        expect=NitroExpectations(nonce=NONCE, public_key=spki, policy_hash=POLICY),
    )
    assert result.simulated is True
    assert result.document.pcrs[16] == measure.expected_pcr16(POLICY)
    assert result.document.pcrs[0] == await asyncio.to_thread(code_measurement)


async def test_simulated_document_is_refused_without_the_opt_in() -> None:
    provider = SimulatedProvider()
    await provider.start(POLICY)
    document = await provider.attest(NONCE, _spki())

    with pytest.raises(SimulatedRootError, match="development root"):
        verify_nitro_document(document)
    with pytest.raises(SimulatedRootError, match="not the AWS Nitro root"):
        verify_nitro_document(document, root=_root(provider.root_pem))


async def test_simulated_document_fails_for_another_policy() -> None:
    provider = SimulatedProvider()
    await provider.start(POLICY)
    document = await provider.attest(NONCE, _spki())

    with pytest.raises(BindingMismatchError, match="policy: user_data"):
        verify_nitro_document(
            document,
            root=_root(provider.root_pem),
            allow_simulated=True,
            expect=NitroExpectations(policy_hash=OTHER_POLICY),
        )


async def test_simulated_pcr16_holds_even_when_user_data_is_overridden() -> None:
    provider = SimulatedProvider()
    await provider.start(POLICY)
    forged = measure.nitro_user_data(OTHER_POLICY)
    document = await provider.attest(NONCE, _spki(), forged)

    with pytest.raises(MeasurementMismatchError, match="policy: PCR16"):
        verify_nitro_document(
            document,
            root=_root(provider.root_pem),
            allow_simulated=True,
            expect=NitroExpectations(policy_hash=OTHER_POLICY),
        )


def _root(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# Nitro against the NSM double -------------------------------------------------


async def test_nitro_extends_and_locks_pcr16_before_the_first_document() -> None:
    nsm = FakeNsm()
    provider = NitroProvider(nsm)

    await provider.start(POLICY)
    await provider.attest(NONCE, b"spki")

    digest = measure.policy_digest(POLICY)
    assert nsm.requests[:3] == [
        cbor2.dumps({"DescribePCR": {"index": 16}}),
        cbor2.dumps({"ExtendPCR": {"index": 16, "data": digest}}),
        cbor2.dumps({"LockPCR": {"index": 16}}),
    ]
    assert nsm.requests[3] == cbor2.dumps(
        {
            "Attestation": {
                "user_data": measure.nitro_user_data(POLICY),
                "nonce": NONCE,
                "public_key": b"spki",
            }
        }
    )
    assert 16 in nsm.locked


async def test_nitro_document_from_the_double_verifies_with_the_policy() -> None:
    nsm = FakeNsm()
    provider = NitroProvider(nsm)
    await provider.start(POLICY)
    spki = _spki()

    document = await provider.attest(NONCE, spki)

    result = verify_nitro_document(
        document,
        root=nsm.ca.root,
        allow_simulated=True,
        expect=NitroExpectations(nonce=NONCE, public_key=spki, policy_hash=POLICY),
    )
    assert sorted(result.document.pcrs) == list(range(17))


async def test_nitro_restart_with_the_same_policy_is_accepted() -> None:
    nsm = FakeNsm()
    await NitroProvider(nsm).start(POLICY)

    await NitroProvider(nsm).start(POLICY)

    assert sum(b"ExtendPCR" in r for r in nsm.requests) == 1


async def test_nitro_refuses_a_pcr16_locked_with_another_policy() -> None:
    nsm = FakeNsm()
    await NitroProvider(nsm).start(POLICY)

    with pytest.raises(PolicyBindingError, match="PCR16 is already locked"):
        await NitroProvider(nsm).start(OTHER_POLICY)


async def test_nitro_refuses_a_pcr16_extended_by_someone_else() -> None:
    nsm = FakeNsm()
    nsm.pcrs[16] = measure.extend_pcr(bytes(48), b"other")

    with pytest.raises(PolicyBindingError, match="was extended before start"):
        await NitroProvider(nsm).start(POLICY)


async def test_nitro_device_error_is_translated() -> None:
    nsm = FakeNsm()
    nsm.locked.add(16)

    with pytest.raises(PolicyBindingError):
        await NitroProvider(nsm).start(POLICY)
    nsm.locked.discard(16)
    nsm.pcrs.pop(16)
    with pytest.raises(AttestationDeviceError, match="DescribePCR: device answered"):
        await NitroProvider(nsm).start(POLICY)


async def test_attest_before_start_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        await NitroProvider(FakeNsm()).attest(NONCE, b"k")


def test_ioctl_request_codes_match_the_kernel_headers() -> None:
    assert NSM_IOCTL_REQUEST == 0xC0200A00
    assert SNP_GET_REPORT == 0xC0205300


# SEV-SNP against the configfs-tsm double --------------------------------------


def _snp(tmp_path: Path, **options: object) -> tuple[FakeConfigfs, SevSnpProvider]:
    base = tmp_path / "tsm" / "report"
    base.mkdir(parents=True)
    configfs = FakeConfigfs(base, **options)  # type: ignore[arg-type]
    source = ConfigfsTsm(configfs.base, configfs)
    return configfs, SevSnpProvider(source)


async def test_snp_report_binds_nonce_key_and_policy(tmp_path: Path) -> None:
    configfs, provider = _snp(tmp_path)
    await provider.start(POLICY)
    spki = _spki()

    report = await provider.attest(NONCE, spki)

    result = verify_snp_report(
        report,
        chain_from_table(provider.certificate_table),
        allow_simulated=True,
        expect=SnpExpectations(policy_hash=POLICY, nonce=NONCE, public_key=spki),
    )
    assert result.report.report_data == measure.snp_report_data(NONCE, spki, POLICY)
    assert list(configfs.base.iterdir()) == []


async def test_snp_report_for_another_nonce_fails(tmp_path: Path) -> None:
    configfs, provider = _snp(tmp_path)
    await provider.start(POLICY)
    spki = _spki()
    report = await provider.attest(NONCE, spki)

    with pytest.raises(BindingMismatchError, match="policy: REPORT_DATA"):
        verify_snp_report(
            report,
            configfs.keys.chain,
            allow_simulated=True,
            expect=SnpExpectations(policy_hash=POLICY, nonce=b"other", public_key=spki),
        )


async def test_snp_host_data_of_this_policy_starts(tmp_path: Path) -> None:
    configfs, provider = _snp(tmp_path, host_data=measure.expected_host_data(POLICY))
    await provider.start(POLICY)

    report = await provider.attest(NONCE, b"k")

    verify_snp_report(
        report,
        configfs.keys.chain,
        allow_simulated=True,
        expect=SnpExpectations(policy_hash=POLICY),
    )


async def test_snp_host_data_of_another_policy_refuses_start(tmp_path: Path) -> None:
    _, provider = _snp(tmp_path, host_data=measure.expected_host_data(OTHER_POLICY))

    with pytest.raises(PolicyBindingError, match="HOST_DATA: expected 5a5a"):
        await provider.start(POLICY)


async def test_snp_generation_race_is_retried(tmp_path: Path) -> None:
    configfs, provider = _snp(tmp_path)
    await provider.start(POLICY)
    configfs.races = 1

    await provider.attest(NONCE, b"k")

    assert configfs.races == 0


async def test_snp_persistent_race_is_refused(tmp_path: Path) -> None:
    configfs, provider = _snp(tmp_path)
    await provider.start(POLICY)
    configfs.races = 10

    with pytest.raises(ReportRaceError, match="generation"):
        await provider.attest(NONCE, b"k")
    assert list(configfs.base.iterdir()) == []


async def test_snp_refuses_another_tsm_provider(tmp_path: Path) -> None:
    _, provider = _snp(tmp_path, provider="tdx_guest")

    with pytest.raises(AttestationDeviceError, match="expected 'sev_guest'"):
        await provider.start(POLICY)


async def test_snp_user_data_must_be_64_bytes(tmp_path: Path) -> None:
    _, provider = _snp(tmp_path)
    await provider.start(POLICY)

    with pytest.raises(ValueError, match="expected 64 bytes"):
        await provider.attest(NONCE, b"k", b"short")


# Factory ----------------------------------------------------------------------


def test_make_provider_knows_three_names() -> None:
    assert make_provider("simulated").name == "simulated"
    assert make_provider("nitro", transport=FakeNsm()).name == "nitro"
    assert make_provider("sev-snp").name == "sev-snp"
    with pytest.raises(ValueError, match="expected one of simulated, nitro, sev-snp"):
        make_provider("tdx")
