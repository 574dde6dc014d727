"""Pinned vendor roots.

``aws-nitro-root-g1.pem`` is the root certificate AWS publishes for Nitro
Enclaves attestation; it is checked against its SHA-256 fingerprint every
time it is loaded, so an edited file fails loudly instead of widening trust.

AMD's ARKs are pinned by fingerprint only: a verifier is handed the ARK
(from a file or the report's certificate table) and accepts it as an AMD
root only when its fingerprint is listed here.
"""

from __future__ import annotations

from importlib import resources

from cryptography import x509

from sandbox.attestation.certs import fingerprint

AWS_NITRO_ROOT_FILE = "aws-nitro-root-g1.pem"
AWS_NITRO_ROOT_SHA256 = (
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
)

AMD_ARK_SHA256 = {
    "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd": "ARK-Milan",
    "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1": "ARK-Genoa",
    "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a": "ARK-Turin",
}


def _load_aws_nitro_root() -> x509.Certificate:
    pem = resources.files(__name__).joinpath(AWS_NITRO_ROOT_FILE).read_bytes()
    root = x509.load_pem_x509_certificate(pem)
    if fingerprint(root) != AWS_NITRO_ROOT_SHA256:
        raise RuntimeError(
            f"{AWS_NITRO_ROOT_FILE}: expected SHA-256 {AWS_NITRO_ROOT_SHA256}, "
            f"the packaged file has {fingerprint(root)}"
        )
    return root


def is_aws_nitro_root(cert: x509.Certificate) -> bool:
    return fingerprint(cert) == AWS_NITRO_ROOT_SHA256


def amd_ark_name(cert: x509.Certificate) -> str | None:
    """``ARK-Milan``, ``ARK-Genoa`` or ``ARK-Turin`` for a pinned AMD root."""
    return AMD_ARK_SHA256.get(fingerprint(cert))


# Loaded at import, so verifying in an event loop never touches the disk.
_AWS_NITRO_ROOT = _load_aws_nitro_root()


def aws_nitro_root() -> x509.Certificate:
    """The AWS Nitro Enclaves root G1, its fingerprint checked at import."""
    return _AWS_NITRO_ROOT
