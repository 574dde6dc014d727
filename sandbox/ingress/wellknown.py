"""``/.well-known/sandbox/``: what a client checks before sending data.

- ``attestation?nonce=HEX``: fresh evidence from the provider, binding the
  client's nonce, this listener's TLS public key and the policy hash;
- ``policy``: the policy bundle, byte for byte, so a client can hash it and
  read what it agrees to;
- ``simulated-root.pem``: the development root, only with the simulated
  provider (a client must opt in to trust it).

These answer before any policy rule: they are the sandbox's own, and every
client must reach them to decide whether to trust it.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sandbox.attestation.provider import AttestationProvider
from sandbox.errors import AttestationError
from sandbox.ingress.tls import ChannelKey
from sandbox.policy.served import MEDIA_TYPE
from sandbox.ratelimit import TokenBucket

PREFIX = "/.well-known/sandbox/"
ATTESTATION_PATH = PREFIX + "attestation"
POLICY_PATH = PREFIX + "policy"
SIMULATED_ROOT_PATH = PREFIX + "simulated-root.pem"
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
# Evidence costs a device round trip (and on Nitro a signature by the
# hypervisor): enough for clients, too little to be a lever for abuse.
ATTESTATION_RATE = 10.0
ATTESTATION_BURST = 20.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send: a document, or a refusal the proxy words as usual."""

    status: int
    reason: str
    response: web.Response | None = None
    retry_after: int | None = None

    @property
    def allowed(self) -> bool:
        return self.response is not None


class WellKnown:
    def __init__(
        self,
        provider: AttestationProvider,
        channel: ChannelKey,
        bundle: dict[str, Any],
        simulated_root_pem: bytes | None = None,
    ) -> None:
        self.provider = provider
        self.channel = channel
        self.bundle = bundle
        self.simulated_root_pem = simulated_root_pem
        self.bucket = TokenBucket(ATTESTATION_RATE, ATTESTATION_BURST)

    async def answer(self, method: str, path: str, query: str) -> Answer:
        if method not in ("GET", "HEAD"):
            return _refused(405, f"{path} answers GET only, not {method}")
        if path == ATTESTATION_PATH:
            return await self._attestation(query)
        if path == POLICY_PATH:
            body = web.json_response(self.bundle, content_type=MEDIA_TYPE)
            return Answer(200, "the policy bundle", body)
        if path == SIMULATED_ROOT_PATH and self.simulated_root_pem is not None:
            body = web.Response(body=self.simulated_root_pem, content_type="text/plain")
            return Answer(200, "the simulated development root", body)
        return _refused(404, f"no such sandbox document: {path}")

    async def _attestation(self, query: str) -> Answer:
        nonce = _nonce(query)
        if isinstance(nonce, Answer):
            return nonce
        wait = self.bucket.take()
        if wait:
            reason = "attestation requests are rate-limited; retry later"
            return Answer(429, reason, retry_after=math.ceil(wait))
        try:
            evidence = await self.provider.attest(nonce, self.channel.public_key_der)
        except AttestationError as exc:
            return _refused(503, f"the attestation provider failed: {exc}")
        reason = f"fresh evidence from the {self.provider.name} provider"
        return Answer(200, reason, web.json_response(self._document(evidence)))

    def _document(self, evidence: bytes) -> dict[str, Any]:
        table = getattr(self.provider, "certificate_table", b"")
        return {
            "provider": self.provider.name,
            "format": "sev-snp" if self.provider.name == "sev-snp" else "nitro",
            "evidence": base64.b64encode(evidence).decode("ascii"),
            "certificates": base64.b64encode(table).decode("ascii") if table else None,
            "policy_hash": self.bundle["hash"],
        }


def _nonce(query: str) -> bytes | Answer:
    fields = dict(part.partition("=")[::2] for part in query.split("&") if part)
    text = fields.get("nonce", "")
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        return _refused(400, f"nonce must be hex, got {text[:32]!r}")
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        return _refused(
            400,
            f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes "
            f"(hex), got {len(nonce)}",
        )
    return nonce


def _refused(status: int, reason: str) -> Answer:
    return Answer(status, reason)
