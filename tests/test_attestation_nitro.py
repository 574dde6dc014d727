"""Offline Nitro verification against real NSM documents, and tampered copies."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from sandbox.attestation.certs import fingerprint
from sandbox.attestation.cose import sig_structure
from sandbox.attestation.nitro_verify import NitroExpectations, verify_nitro_document
from sandbox.attestation.roots import AWS_NITRO_ROOT_SHA256, aws_nitro_root
from sandbox.attestation.simulated import DevelopmentCA
from sandbox.errors import (
    AttestationFormatError,
    BindingMismatchError,
    CertificateChainError,
    CertificateExpiredError,
    DebugModeError,
    MeasurementMismatchError,
    SignatureError,
)
from tests.support import VECTORS, needs_vectors

NITRO = VECTORS / "nitro"
pytestmark = needs_vectors
SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def _san_document(name: str) -> bytes:
    """Evervault cage certificates carry the document hex as the first label."""
    cert = x509.load_pem_x509_certificate((NITRO / "evervault" / name).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    longest = max(san.value.get_values_for_type(x509.DNSName), key=len)
    return bytes.fromhex(longest.split(".")[0])


def _document(name: str) -> bytes:
    loaders = {
        "base64": lambda: base64.b64decode(
            (NITRO / "evervault/test-data_valid-attestation-doc-base64").read_bytes()
        ),
        "beta": lambda: (
            NITRO / "evervault/test-data_beta_valid-attestation-doc-bytes"
        ).read_bytes(),
        "debug": lambda: (
            NITRO / "evervault/test-data_beta_debug-mode-attestation-doc-bytes"
        ).read_bytes(),
        "san-non-debug": lambda: _san_document(
            "test-data_beta_non-debug-cert-containing-attestation-document-18-1-23.pem"
        ),
        "san-debug": lambda: _san_document(
            "test-data_beta_debug-mode-cert-containing-attestation-doc-18-1-23.pem"
        ),
        "marlin-bin": lambda: (NITRO / "marlin/attestation.bin").read_bytes(),
        "marlin-hex": lambda: bytes.fromhex(
            (NITRO / "marlin/attestation.hex").read_text().strip()
        ),
    }
    return loaders[name]()


# PCR prefixes and suffixes as the vectors' README lists them.
README_PCRS: dict[str, dict[int, tuple[str, str]]] = {
    "base64": {3: ("4a9329d6", "25aa"), 4: ("d0531b14", "5065")},
    "beta": {
        0: ("f4d48b81", "2d8b"),
        1: ("bcdf05fe", "e63f"),
        2: ("d8f114da", "469a"),
        3: ("4a9329d6", "25aa"),
        4: ("1f442c86", "37c6"),
        8: ("8790eb3c", "01cb"),
    },
    "debug": {4: ("615fa5b1", "a6a7")},
    "san-non-debug": {
        0: ("d265a83f", "19af"),
        3: ("ae9d5fad", "fcb0"),
        4: ("bb223827", "7b93"),
    },
    "san-debug": {},
    "marlin-bin": {
        0: ("5fec1b73", "6ae6"),
        1: ("bcdf05fe", "e63f"),
        2: ("ae41ca22", "92e7"),
        4: ("4b41d8e9", "e595"),
    },
    "marlin-hex": {0: ("5fec1b73", "6ae6"), 4: ("4b41d8e9", "e595")},
}


# Documents from enclaves in debug mode: PCR0-2 are zeros there.
DEBUG_DOCUMENTS = {"base64", "debug", "san-debug"}


@pytest.mark.parametrize("name", sorted(README_PCRS))
def test_real_document_verifies_at_its_own_time(name: str) -> None:
    debug = name in DEBUG_DOCUMENTS

    result = verify_nitro_document(_document(name), at="document", allow_debug=debug)

    assert result.simulated is False
    assert all(check.passed for check in result.checks)
    (mode,) = [check.detail for check in result.checks if check.name == "debug mode"]
    assert mode.startswith("ON" if debug else "off")
    for index, (prefix, suffix) in README_PCRS[name].items():
        value = result.document.pcrs[index].hex()
        assert value.startswith(prefix) and value.endswith(suffix), (index, value)


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("base64", "test-specs_ga_valid_attestation_doc_ga.json"),
        (
            "san-non-debug",
            "test-specs_beta_valid_attestation_doc_in_non_debug_mode_with_correct"
            "_pcrs_time_sensitive.json",
        ),
    ],
)
def test_real_document_matches_the_published_pcr_spec(name: str, spec: str) -> None:
    pcrs = json.loads((NITRO / "evervault" / spec).read_text())["pcrs"]
    expected = {int(key[3:]): bytes.fromhex(value) for key, value in pcrs.items()}

    result = verify_nitro_document(
        _document(name),
        at="document",
        expect=NitroExpectations(pcrs=expected),
        allow_debug=name in DEBUG_DOCUMENTS,
    )

    assert {c.name for c in result.checks} >= {f"PCR{i}" for i in expected}


@pytest.mark.parametrize("name", sorted(DEBUG_DOCUMENTS))
def test_a_debug_enclaves_document_is_refused_unless_allowed(name: str) -> None:
    with pytest.raises(DebugModeError) as raised:
        verify_nitro_document(_document(name), at="document")

    assert "PCR0 is all zeros: the enclave runs in debug mode" in str(raised.value)
    # Everything before it held: the refusal is about debug mode alone.
    assert [check.passed for check in raised.value.checks][-1] is False
    assert all(check.passed for check in raised.value.checks[:-1])


def test_debug_document_carries_its_public_key_and_user_data() -> None:
    expect = NitroExpectations(
        public_key=b"my super secret key", user_data=b"hello, world!"
    )

    verify_nitro_document(
        _document("debug"), at="document", expect=expect, allow_debug=True
    )


def test_evervault_user_data_is_the_tls_certificate_key() -> None:
    der = (NITRO / "evervault/test-data_valid-certificate.der").read_bytes()
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(*SPKI)

    result = verify_nitro_document(
        _document("base64"),
        at="document",
        expect=NitroExpectations(user_data=spki),
        allow_debug=True,
    )

    assert result.document.user_data == spki


def test_cage_certificate_binds_its_own_key_through_user_data() -> None:
    name = "test-data_beta_non-debug-cert-containing-attestation-document-18-1-23.pem"
    cert = x509.load_pem_x509_certificate((NITRO / "evervault" / name).read_bytes())
    spki = cert.public_key().public_bytes(*SPKI)

    verify_nitro_document(
        _document("san-non-debug"),
        at="document",
        expect=NitroExpectations(user_data=spki),
    )


def test_packaged_root_is_the_one_the_vectors_pin() -> None:
    pem = (NITRO / "evervault/attestation-doc-validation_src_nitro.pem").read_bytes()

    assert fingerprint(aws_nitro_root()) == AWS_NITRO_ROOT_SHA256
    assert fingerprint(x509.load_pem_x509_certificate(pem)) == AWS_NITRO_ROOT_SHA256


def test_tagged_envelope_is_accepted() -> None:
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(_document("marlin-bin"))))

    result = verify_nitro_document(tagged, at="document")

    assert "tagged (18)" in result.checks[0].detail


# Tampered copies -----------------------------------------------------------


def _parts(data: bytes) -> list[Any]:
    parts: list[Any] = cbor2.loads(data)
    return parts


def _with_payload(data: bytes, edit: Any) -> bytes:
    parts = _parts(data)
    payload = cbor2.loads(parts[2])
    edit(payload)
    parts[2] = cbor2.dumps(payload)
    return cbor2.dumps(parts)


def test_flipped_pcr_bit_breaks_the_signature() -> None:
    def flip(payload: dict[str, Any]) -> None:
        pcr = bytearray(payload["pcrs"][0])
        pcr[0] ^= 0x01
        payload["pcrs"][0] = bytes(pcr)

    with pytest.raises(SignatureError, match="does not verify") as caught:
        verify_nitro_document(_with_payload(_document("beta"), flip), at="document")

    assert caught.value.checks[-1].name == "signature"
    assert not caught.value.checks[-1].passed


def test_swapped_cabundle_entries_break_the_chain() -> None:
    def swap(payload: dict[str, Any]) -> None:
        bundle = payload["cabundle"]
        bundle[1], bundle[2] = bundle[2], bundle[1]

    with pytest.raises(CertificateChainError, match=r"cabundle\[1\]"):
        verify_nitro_document(_with_payload(_document("beta"), swap), at="document")


def test_payload_resigned_with_another_key_is_refused() -> None:
    parts = _parts(_document("marlin-bin"))
    key = ec.generate_private_key(ec.SECP384R1())
    r, s = decode_dss_signature(
        key.sign(sig_structure(parts[0], parts[2]), ec.ECDSA(hashes.SHA384()))
    )
    parts[3] = r.to_bytes(48, "big") + s.to_bytes(48, "big")

    with pytest.raises(SignatureError, match="does not verify with the key"):
        verify_nitro_document(cbor2.dumps(parts), at="document")


def test_self_made_leaf_for_another_key_is_not_in_the_chain() -> None:
    ca = DevelopmentCA.create()
    leaf_der = ca.leaf.public_bytes(serialization.Encoding.DER)

    def replace_leaf(payload: dict[str, Any]) -> None:
        payload["certificate"] = leaf_der

    with pytest.raises(CertificateChainError, match=r"certificate <- cabundle\[3\]"):
        verify_nitro_document(
            _with_payload(_document("marlin-bin"), replace_leaf), at="document"
        )


def test_truncated_signature_is_refused_with_its_length() -> None:
    parts = _parts(_document("marlin-bin"))
    parts[3] = parts[3][:95]

    with pytest.raises(SignatureError, match=r"expected 96 bytes.*has 95"):
        verify_nitro_document(cbor2.dumps(parts), at="document")


def test_document_checked_four_hours_later_has_an_expired_leaf() -> None:
    data = _document("marlin-bin")
    stamp = verify_nitro_document(data, at="document").document.timestamp

    with pytest.raises(CertificateExpiredError, match="certificate") as caught:
        verify_nitro_document(data, at=stamp + timedelta(hours=4))

    assert caught.value.checks[-1].name.startswith("validity: certificate")


def test_wrong_nonce_is_a_binding_mismatch() -> None:
    data = _document("beta")
    nonce = verify_nitro_document(data, at="document").document.nonce
    assert nonce is not None

    with pytest.raises(BindingMismatchError, match="nonce: expected 00ff, document"):
        verify_nitro_document(
            data, at="document", expect=NitroExpectations(nonce=b"\x00\xff")
        )


def test_missing_nonce_is_named() -> None:
    with pytest.raises(BindingMismatchError, match="document has nothing"):
        verify_nitro_document(
            _document("marlin-bin"),
            at="document",
            expect=NitroExpectations(nonce=b"\x01"),
        )


def test_wrong_pcr_expectation_names_both_values() -> None:
    data = _document("marlin-bin")
    actual = verify_nitro_document(data, at="document").document.pcrs[0]

    with pytest.raises(MeasurementMismatchError) as caught:
        verify_nitro_document(
            data, at="document", expect=NitroExpectations(pcrs={0: bytes(48)})
        )

    assert str(caught.value) == (
        f"PCR0: expected {bytes(48).hex()}, document has {actual.hex()}"
    )


def test_real_document_does_not_carry_a_sandbox_policy() -> None:
    with pytest.raises(BindingMismatchError, match="policy: user_data"):
        verify_nitro_document(
            _document("marlin-bin"),
            at="document",
            expect=NitroExpectations(policy_hash="sha256:" + "00" * 32),
        )


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(AttestationFormatError, match="ends at byte"):
        verify_nitro_document(_document("marlin-bin") + b"\x00", at="document")


def test_other_root_is_refused_for_a_real_document() -> None:
    root = DevelopmentCA.create().root

    with pytest.raises(CertificateChainError, match="expected cabundle\\[0\\]"):
        verify_nitro_document(
            _document("marlin-bin"), root=root, at="document", allow_simulated=True
        )
