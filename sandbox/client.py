"""``sandbox.client``: talk to a sandbox only after proving what it runs.

``AttestedClient.connect`` learns the certificate the sandbox presents
(trusting no CA), pins it for every request that follows, asks over that
pinned channel for evidence bound to a fresh nonce, and verifies that the
evidence is genuine, fresh, names that very TLS key, and binds the policy
whose bytes the sandbox serves (and, when given, the policy the caller
expects). A connection to any other key fails before a byte of a request is
sent.

Every failure raises a precise ``AttestationError``; nothing is sent first.

    async with await AttestedClient.connect(url, Expectations(policy_hash=h)) as c:
        async with c.request("POST", "/v1/summarize", data=note) as response:
            ...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from yarl import URL

from sandbox.attestation.checks import Verification
from sandbox.attestation.nitro_verify import NitroExpectations, verify_nitro_document
from sandbox.attestation.snp_certs import AmdChain, chain_from_table
from sandbox.attestation.snp_verify import SnpExpectations, verify_snp_report
from sandbox.errors import (
    AttestationError,
    AttestationFormatError,
    BindingMismatchError,
    Check,
    SimulatedRootError,
)
from sandbox.ingress.wellknown import ATTESTATION_PATH, POLICY_PATH, SIMULATED_ROOT_PATH
from sandbox.policy.bundle import bundle_files, bundle_hash

NONCE_BYTES = 32


class ChannelError(AttestationError, ConnectionError):
    """The sandbox could not be reached, or did not answer as a sandbox does."""


@dataclass(frozen=True)
class Expectations:
    """What the caller insists on; unset fields are not checked."""

    policy_hash: str | None = None
    pcrs: Mapping[int, bytes] = field(default_factory=dict)
    root: x509.Certificate | None = None
    measurement: bytes | None = None
    amd_chain: AmdChain | None = None
    allow_simulated: bool = False
    # A debug enclave or guest can be read by its host: refused unless set.
    allow_debug: bool = False


@dataclass(frozen=True)
class ChannelReport:
    """Every check that passed, and what the channel is now pinned to."""

    checks: tuple[Check, ...]
    provider: str
    policy_hash: str
    simulated: bool
    certificate_sha256: str


class AttestedClient:
    def __init__(
        self, base_url: str, session: aiohttp.ClientSession, report: ChannelReport
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.report = report
        self._pin = aiohttp.Fingerprint(bytes.fromhex(report.certificate_sha256))

    @classmethod
    async def connect(cls, base_url: str, expect: Expectations) -> AttestedClient:
        session = aiohttp.ClientSession()
        try:
            report = await _attest(session, base_url.rstrip("/"), expect)
        except BaseException:
            await session.close()
            raise
        return cls(base_url, session, report)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``aiohttp`` request pinned to the attested certificate."""
        return self.session.request(
            method, self.base_url + path, ssl=self._pin, **kwargs
        )

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _attest(
    session: aiohttp.ClientSession, base: str, expect: Expectations
) -> ChannelReport:
    certificate = await _server_certificate(base)
    # Every request from here on goes only to this certificate's key, and
    # the evidence must name that key: together they bind the channel.
    pin = aiohttp.Fingerprint(hashlib.sha256(certificate).digest())
    checks = [Check("TLS certificate", True, _sha256(certificate))]
    nonce = secrets.token_bytes(NONCE_BYTES)
    document = await _fetch_evidence(session, base, pin, nonce)
    served_hash = await _served_policy_hash(session, base, pin)
    checks.append(_policy_check(served_hash, expect.policy_hash))
    root = expect.root
    if document.get("provider") == "simulated":
        root = await _simulated_root(session, base, pin, expect)
    result = _verify(
        document, nonce, _public_key(certificate), served_hash, expect, root
    )
    checks.extend(result.checks)
    return ChannelReport(
        tuple(checks),
        str(document.get("provider")),
        served_hash,
        result.simulated,
        _sha256(certificate),
    )


async def _server_certificate(base: str) -> bytes:
    """The certificate the sandbox presents, learnt from one TLS handshake."""
    url = URL(base)
    if url.scheme != "https" or url.host is None:
        raise ChannelError(
            f"expected an https:// URL: the channel key is what the evidence "
            f"binds, got {base!r}"
        )
    # No CA vouches for the sandbox; the evidence will, for this very key.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.open_connection(url.host, url.port, ssl=insecure)
    except OSError as exc:
        raise ChannelError(f"cannot open TLS to {base}: {exc}") from exc
    certificate: bytes | None = writer.get_extra_info("ssl_object").getpeercert(
        binary_form=True
    )
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    if not certificate:
        raise ChannelError(f"{base} presented no TLS certificate")
    return certificate


async def _fetch_evidence(
    session: aiohttp.ClientSession, base: str, pin: aiohttp.Fingerprint, nonce: bytes
) -> dict[str, Any]:
    url = f"{base}{ATTESTATION_PATH}?nonce={nonce.hex()}"
    try:
        async with session.get(url, ssl=pin) as response:
            return await _json(response, "attestation")
    except aiohttp.ServerFingerprintMismatch as exc:
        raise BindingMismatchError(
            "the sandbox's TLS certificate changed between connections"
        ) from exc
    except aiohttp.ClientError as exc:
        raise ChannelError(f"cannot fetch evidence from {base}: {exc}") from exc


async def _json(response: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    if response.status != 200:
        raise ChannelError(
            f"{what} request answered {response.status}: {await response.text()}"
        )
    try:
        body = await response.json(content_type=None)
    except ValueError as exc:
        raise AttestationFormatError(f"{what} answer is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise AttestationFormatError(f"{what} answer is not a JSON object")
    return body


async def _served_policy_hash(
    session: aiohttp.ClientSession, base: str, pin: aiohttp.Fingerprint
) -> str:
    try:
        async with session.get(base + POLICY_PATH, ssl=pin) as response:
            bundle = await _json(response, "policy")
    except aiohttp.ClientError as exc:
        raise ChannelError(f"cannot fetch the policy from {base}: {exc}") from exc
    try:
        contents = {
            item["path"]: base64.b64decode(item["content"], validate=True)
            for item in bundle["files"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise AttestationFormatError(f"malformed policy bundle: {exc!r}") from exc
    return bundle_hash(bundle_files(contents))


def _policy_check(served: str, expected: str | None) -> Check:
    if expected is not None and served != expected:
        raise BindingMismatchError(
            f"policy: the sandbox enforces {served}, but {expected} was expected"
        )
    detail = served if expected is None else f"{served} (as expected)"
    return Check("policy bundle", True, detail)


async def _simulated_root(
    session: aiohttp.ClientSession,
    base: str,
    pin: aiohttp.Fingerprint,
    expect: Expectations,
) -> x509.Certificate | None:
    if not expect.allow_simulated:
        raise SimulatedRootError(
            "the sandbox uses the simulated attestation provider (development "
            "only); refusing it without allow_simulated / --allow-simulated"
        )
    if expect.root is not None:
        return expect.root
    async with session.get(base + SIMULATED_ROOT_PATH, ssl=pin) as response:
        if response.status != 200:
            raise ChannelError(f"no simulated root served ({response.status})")
        return x509.load_pem_x509_certificate(await response.read())


def _verify(
    document: Mapping[str, Any],
    nonce: bytes,
    public_key: bytes,
    policy_hash: str,
    expect: Expectations,
    root: x509.Certificate | None,
) -> Verification:
    evidence = _b64(document.get("evidence"), "evidence")
    if document.get("format") == "sev-snp":
        chain = expect.amd_chain or chain_from_table(
            _b64(document.get("certificates"), "certificates")
        )
        return verify_snp_report(
            evidence,
            chain,
            expect=SnpExpectations(
                measurement=expect.measurement,
                policy_hash=policy_hash,
                nonce=nonce,
                public_key=public_key,
            ),
            allow_simulated=expect.allow_simulated,
            allow_debug=expect.allow_debug,
        )
    return verify_nitro_document(
        evidence,
        root=root,
        expect=NitroExpectations(
            pcrs=expect.pcrs,
            nonce=nonce,
            public_key=public_key,
            policy_hash=policy_hash,
        ),
        allow_simulated=expect.allow_simulated,
        allow_debug=expect.allow_debug,
    )


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise AttestationFormatError(f"{what} is not base64: {exc}") from exc


def _public_key(certificate: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(certificate)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
