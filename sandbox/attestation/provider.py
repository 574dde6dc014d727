"""The attestation provider interface and the factory that picks one.

A provider binds the policy hash into the platform's measurement once, in
``start``, before the sandbox serves anything; then ``attest`` produces
evidence on demand:

* ``nitro``: extends PCR16 with the policy bytes and locks it; documents
  come from ``/dev/nsm``.
* ``sev-snp``: checks that HOST_DATA, when the host set it, holds the
  policy bytes; reports come from configfs-tsm or ``/dev/sev-guest`` with
  REPORT_DATA binding nonce, TLS key and policy.
* ``simulated``: Nitro-format documents from a development root.

``attest(nonce, public_key, user_data)`` returns the evidence bytes: a
COSE_Sign1 document for ``nitro`` and ``simulated``, the raw 1184-byte
report for ``sev-snp``. ``public_key`` is the DER SubjectPublicKeyInfo of
the TLS key the evidence vouches for. ``user_data=None`` lets the provider
write its policy binding (``measure.nitro_user_data``, or
``measure.snp_report_data`` as REPORT_DATA); bytes given instead are placed
verbatim (on SEV-SNP they must be the 64 bytes of REPORT_DATA). Device I/O
runs in worker threads, never on the event loop.
"""

from __future__ import annotations

from typing import Any, Protocol

PROVIDER_NAMES = ("simulated", "nitro", "sev-snp")


class AttestationProvider(Protocol):
    name: str

    async def start(self, policy_hash: str) -> None:
        """Fold ``policy_hash`` into the measurement; refuse if already bound."""
        ...

    async def attest(
        self, nonce: bytes, public_key: bytes, user_data: bytes | None = None
    ) -> bytes:
        """Evidence binding ``nonce`` and ``public_key`` to this enclave."""
        ...


def make_provider(name: str, **options: Any) -> AttestationProvider:
    """The provider called ``name``; ``options`` go to its constructor."""
    if name == "simulated":
        from sandbox.attestation.simulated import SimulatedProvider

        return SimulatedProvider(**options)
    if name == "nitro":
        from sandbox.attestation.nsm import NitroProvider

        return NitroProvider(**options)
    if name == "sev-snp":
        from sandbox.attestation.tsm import SevSnpProvider

        return SevSnpProvider(**options)
    raise ValueError(
        f"attestation provider: expected one of {', '.join(PROVIDER_NAMES)}, "
        f"got {name!r}"
    )
