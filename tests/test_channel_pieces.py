"""The pieces the attested channel is built from: TLS key, rate limit, bundle."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sandbox.errors import PolicyError
from sandbox.ingress.tls import ephemeral_channel_key
from sandbox.policy.bundle import manifest
from sandbox.policy.loader import load_policy
from sandbox.policy.served import read_bundle
from sandbox.ratelimit import TokenBucket

ROOT = Path(__file__).resolve().parent.parent


async def test_channel_key_serves_tls_with_the_key_it_reports() -> None:
    channel = await asyncio.to_thread(ephemeral_channel_key)

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=channel.context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    server.close()
    await server.wait_closed()

    certificate = x509.load_der_x509_certificate(peer)
    spki = certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    assert peer == channel.certificate_der
    assert spki == channel.public_key_der
    assert channel.public_key_sha256 == hashlib.sha256(spki).hexdigest()


def test_each_channel_key_is_new() -> None:
    assert (
        ephemeral_channel_key().public_key_der != ephemeral_channel_key().public_key_der
    )


def test_token_bucket_spends_its_burst_then_refills_at_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])

    taken = [bucket.take() for _ in range(4)]
    now[0] += 0.5
    after_half_a_second = bucket.take()

    assert taken[:3] == [0.0, 0.0, 0.0]
    assert taken[3] == pytest.approx(0.5)
    assert after_half_a_second == 0.0


def test_served_bundle_is_the_hashed_bytes() -> None:
    policy = load_policy(ROOT / "policies/acme-clinical-notes")

    served = read_bundle(policy)

    contents = {f["path"]: base64.b64decode(f["content"]) for f in served["files"]}
    recomputed = "".join(
        f"{hashlib.sha256(contents[path]).hexdigest()}  {path}\n"
        for path in sorted(contents, key=str.encode)
    )
    assert recomputed == manifest(policy.files)
    assert served["hash"] == policy.hash
    assert "sha256:" + hashlib.sha256(recomputed.encode()).hexdigest() == policy.hash


def test_a_bundle_file_changed_after_loading_is_not_served(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    shutil.copytree(ROOT / "policies/acme-clinical-notes", folder)
    policy = load_policy(folder)
    (folder / "policy.yaml").write_text((folder / "policy.yaml").read_text() + "\n")

    with pytest.raises(PolicyError, match="changed since the policy was loaded"):
        read_bundle(policy)
