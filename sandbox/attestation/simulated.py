"""The simulated provider: Nitro-format documents signed by a development root.

For development and tests, never for production: a client accepts these
documents only when told to in so many words (``--allow-simulated``), and
the verifier marks them ``simulated``.

Documents have exactly the Nitro shape (untagged COSE_Sign1, ES384, the
same payload fields), so one verifier serves both. The signing chain is a
P-384 root and leaf made in memory at start; ``root_pem`` is what a client
pins with ``--root``.

PCR0 measures the installed sandbox code::

    manifest = for each .py file under the sandbox package, sorted by its
                   path relative to the package's parent, in byte order:
                   "<sha256 hex of its bytes>  <path, e.g. sandbox/errors.py>\\n"
    PCR0 = SHA-384(manifest)

i.e. ``find sandbox -name '*.py' | LC_ALL=C sort | xargs sha256sum |
sha384sum`` run in the folder that holds the installed package. PCR1..15
are zero; PCR16 is extended with the policy bytes as on Nitro.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sandbox.attestation import measure
from sandbox.attestation.cose import sign_es384
from sandbox.attestation.nitro_document import NitroDocument

SIMULATED_ROOT_CN = "policy-sandbox simulated root"
SIMULATED_LEAF_CN = "policy-sandbox simulated enclave"
SIMULATED_MODULE_ID = "policy-sandbox-simulated"
ROOT_LIFETIME = timedelta(days=365)
LEAF_LIFETIME = timedelta(hours=3)
LEAF_RENEW_BEFORE = timedelta(minutes=30)


@dataclass(frozen=True)
class DevelopmentCA:
    """A P-384 root and the leaf it signed, both in memory."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate

    @classmethod
    def create(cls, now: datetime | None = None) -> DevelopmentCA:
        now = now or datetime.now(UTC)
        root_key = ec.generate_private_key(ec.SECP384R1())
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        root = _certificate(SIMULATED_ROOT_CN, root_key, root_key, None, now, ca=True)
        leaf = _certificate(SIMULATED_LEAF_CN, leaf_key, root_key, root, now, ca=False)
        return cls(root_key, root, leaf_key, leaf)

    def fresh(self, now: datetime | None = None) -> DevelopmentCA:
        """This CA, with a new leaf when the current one is close to expiry.

        Leaves live three hours, as Nitro's do, so verifiers that check
        validity see the same behaviour; the root stays, so clients keep
        the PEM they pinned.
        """
        now = now or datetime.now(UTC)
        if self.leaf.not_valid_after_utc - now > LEAF_RENEW_BEFORE:
            return self
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        leaf = _certificate(
            SIMULATED_LEAF_CN, leaf_key, self.root_key, self.root, now, ca=False
        )
        return DevelopmentCA(self.root_key, self.root, leaf_key, leaf)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def sign_document(self, document: NitroDocument) -> bytes:
        """``document`` with this CA's leaf and bundle, as a COSE_Sign1."""
        der = serialization.Encoding.DER
        signed = NitroDocument(
            module_id=document.module_id,
            digest=document.digest,
            timestamp_ms=document.timestamp_ms,
            pcrs=document.pcrs,
            certificate=self.leaf.public_bytes(der),
            cabundle=(self.root.public_bytes(der),),
            public_key=document.public_key,
            user_data=document.user_data,
            nonce=document.nonce,
        )
        return sign_es384(self.leaf_key, signed.to_cbor())


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    now: datetime,
    *,
    ca: bool,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    lifetime = ROOT_LIFETIME if ca else LEAF_LIFETIME
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA384())
    )


def code_measurement(package_dir: Path | None = None) -> bytes:
    """PCR0 of the simulated provider: SHA-384 of the code manifest."""
    package = package_dir or Path(__file__).resolve().parents[1]
    files = sorted(
        (
            (path.relative_to(package.parent).as_posix(), path)
            for path in package.rglob("*.py")
        ),
        key=lambda item: item[0].encode(),
    )
    manifest = "".join(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n"
        for name, path in files
    )
    return hashlib.sha384(manifest.encode()).digest()


def simulated_pcrs(policy_hash: str, code: bytes) -> dict[int, bytes]:
    pcrs = {index: bytes(measure.PCR_BYTES) for index in range(16)}
    pcrs[0] = code
    pcrs[measure.POLICY_PCR] = measure.expected_pcr16(policy_hash)
    return pcrs


class SimulatedProvider:
    """Development attestation with the Nitro document format."""

    name = "simulated"

    def __init__(self, package_dir: Path | None = None) -> None:
        self._package_dir = package_dir
        self._ca: DevelopmentCA | None = None
        self._pcrs: dict[int, bytes] = {}
        self._policy_hash = ""

    @property
    def root_pem(self) -> bytes:
        """The development root a client pins; available after ``start``."""
        return self._started().root_pem

    async def start(self, policy_hash: str) -> None:
        measure.policy_digest(policy_hash)
        code = await asyncio.to_thread(code_measurement, self._package_dir)
        self._ca = await asyncio.to_thread(DevelopmentCA.create)
        self._pcrs = simulated_pcrs(policy_hash, code)
        self._policy_hash = policy_hash

    async def attest(
        self, nonce: bytes, public_key: bytes, user_data: bytes | None = None
    ) -> bytes:
        """A signed document; ``user_data`` defaults to the policy label."""
        ca = self._ca = await asyncio.to_thread(self._started().fresh)
        document = NitroDocument(
            module_id=SIMULATED_MODULE_ID,
            digest="SHA384",
            timestamp_ms=int(time.time() * 1000),
            pcrs=dict(self._pcrs),
            certificate=b"",
            cabundle=(),
            public_key=public_key,
            user_data=measure.nitro_user_data(self._policy_hash)
            if user_data is None
            else user_data,
            nonce=nonce,
        )
        return await asyncio.to_thread(ca.sign_document, document)

    def _started(self) -> DevelopmentCA:
        if self._ca is None:
            raise RuntimeError("simulated provider: call start(policy_hash) first")
        return self._ca
