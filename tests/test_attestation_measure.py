"""How a policy hash becomes PCR16, HOST_DATA, user_data and REPORT_DATA."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from sandbox.attestation import measure
from sandbox.cli.main import main

POLICY_HASH = "sha256:" + "ab" * 32
POLICY_BYTES = bytes([0xAB]) * 32


def test_policy_digest_is_the_32_raw_bytes_of_the_hash() -> None:
    assert measure.policy_digest(POLICY_HASH) == POLICY_BYTES


@pytest.mark.parametrize(
    "bad", ["ab" * 32, "sha256:" + "AB" * 32, "sha256:abc", "sha512:" + "ab" * 32]
)
def test_policy_digest_refuses_anything_but_sha256_lower_hex(bad: str) -> None:
    with pytest.raises(ValueError, match="policy hash: expected"):
        measure.policy_digest(bad)


def test_pcr16_is_one_nsm_extend_of_a_fresh_register() -> None:
    expected = hashlib.sha384(bytes(48) + POLICY_BYTES).digest()

    assert measure.expected_pcr16(POLICY_HASH) == expected


def test_host_data_is_the_policy_bytes() -> None:
    assert measure.expected_host_data(POLICY_HASH) == POLICY_BYTES


def test_nitro_user_data_is_label_then_policy_bytes() -> None:
    user_data = measure.nitro_user_data(POLICY_HASH)

    assert user_data == b"policy-sandbox/v1\x00" + POLICY_BYTES
    assert len(user_data) == 50


def test_report_data_follows_the_documented_encoding() -> None:
    nonce, spki = b"\x01\x02\x03", b"spki-der"
    message = (
        b"policy-sandbox/report-data/v1\x00"
        + struct.pack(">I", 3)
        + nonce
        + hashlib.sha256(spki).digest()
        + POLICY_BYTES
    )

    assert measure.snp_report_data(nonce, spki, POLICY_HASH) == (
        hashlib.sha512(message).digest()
    )


def test_report_data_length_prefix_separates_nonce_from_key() -> None:
    first = measure.snp_report_data(b"ab", b"k", POLICY_HASH)
    second = measure.snp_report_data(b"a", b"k", POLICY_HASH)

    assert first != second
    assert len(first) == 64


def _policy(folder: Path) -> Path:
    folder.mkdir()
    (folder / "policy.yaml").write_text("version: 1\nname: measured\n")
    return folder


def test_policy_measure_prints_labelled_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _policy(tmp_path / "policy")

    status = main(["policy", "measure", str(folder)])

    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines())
    policy_hash = lines["policy hash"].strip()
    assert status == 0
    assert lines["Nitro PCR16"].strip() == measure.expected_pcr16(policy_hash).hex()
    assert lines["SEV-SNP HOST_DATA"].strip() == policy_hash.removeprefix("sha256:")


def test_policy_measure_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _policy(tmp_path / "policy")

    status = main(["policy", "measure", "--json", str(folder)])

    values = json.loads(capsys.readouterr().out)
    assert status == 0
    assert set(values) == {"policy_hash", "nitro_pcr16", "snp_host_data"}
    assert values["nitro_pcr16"] == measure.expected_pcr16(values["policy_hash"]).hex()


def test_policy_measure_reports_an_invalid_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text("version: 9\nname: x\n")

    status = main(["policy", "measure", str(tmp_path / "policy.yaml")])

    assert status == 1
    assert "version" in capsys.readouterr().err
