"""The ingress TLS key: made at start, held in memory, bound to attestation.

Clients do not trust this certificate through a CA. They trust it because
the attestation document names its public key, so a fresh self-signed
certificate per process is all the channel needs. The private key never
touches a disk: Python's ``ssl`` loads keys only from paths, so the PEM goes
through an anonymous in-memory file (``memfd``) that is closed at once.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class ChannelKey:
    """The listener's TLS identity, and what an attestation binds."""

    certificate_der: bytes
    public_key_der: bytes  # SubjectPublicKeyInfo, DER
    context: ssl.SSLContext

    @property
    def public_key_sha256(self) -> str:
        return hashlib.sha256(self.public_key_der).hexdigest()


def ephemeral_channel_key(common_name: str = "policy-sandbox") -> ChannelKey:
    """A new key and certificate; blocking work, so call it in a thread."""
    key = ec.generate_private_key(ec.SECP384R1())
    certificate = _self_signed(key, common_name)
    context = _server_context(key, certificate)
    return ChannelKey(
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        public_key_der=key.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        ),
        context=context,
    )


def _self_signed(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .sign(key, hashes.SHA384())
    )


def _server_context(
    key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Encrypted even inside the memfd, with a password that lives only here.
    password = secrets.token_bytes(32)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    descriptor = os.memfd_create("sandbox-tls", os.MFD_CLOEXEC)
    try:
        os.write(descriptor, pem)
        path = f"/proc/self/fd/{descriptor}"
        context.load_cert_chain(certfile=path, keyfile=path, password=password)
    finally:
        os.close(descriptor)
    return context
