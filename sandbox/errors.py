"""Every exception the sandbox raises on purpose.

    SandboxError
    ├── PolicyError (ValueError)          the policy bundle does not load
    ├── AuthenticationError (ValueError)  a bearer token is missing or refused
    ├── RequestPathError (ValueError)     a request path cannot be normalised
    ├── AuditError (OSError)              the audit log cannot be written
    ├── AuditIntegrityError (ValueError)  an audit log fails verification
    ├── AttestationError                  attestation evidence or its device
    │   ├── AttestationVerificationError (ValueError)  evidence is refused
    │   │   ├── AttestationFormatError      not a well-formed document/report
    │   │   ├── SignatureError              the evidence signature is wrong
    │   │   ├── CertificateChainError       the chain to the pinned root fails
    │   │   │   └── CertificateExpiredError a certificate is not valid then
    │   │   ├── MeasurementMismatchError    a PCR, MEASUREMENT or HOST_DATA differs
    │   │   ├── BindingMismatchError        nonce, key, user data or REPORT_DATA
    │   │   ├── SimulatedRootError          development root without opt-in
    │   │   └── DebugModeError              a debug enclave or guest, without opt-in
    │   ├── AttestationDeviceError (OSError)  /dev/nsm, configfs-tsm, sev-guest
    │   │   └── ReportRaceError             another writer raced on configfs-tsm
    │   └── PolicyBindingError (ValueError)  the platform is bound to other rules
    └── ConfinementError (OSError)        the app cannot be confined as asked

Library errors (PyYAML, PyJWT, cbor2, cryptography, OSError from files) are
translated into these at the boundary, with ``raise ... from exc``, so callers
catch one family. Attestation verifiers raise; they never return False.
"""

from __future__ import annotations

from dataclasses import dataclass


class SandboxError(Exception):
    """Root of the sandbox's own errors."""


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy, located precisely enough to fix it."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}"
            if self.field
            else (f"{where}: {self.message}")
        )


class PolicyError(SandboxError, ValueError):
    """The policy bundle is invalid; ``problems`` lists every fault found."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class AuthenticationError(SandboxError, ValueError):
    """A bearer token is missing or was refused.

    ``code`` is the RFC 6750 error code for ``WWW-Authenticate``: empty when
    no token was sent, ``invalid_request`` for a malformed header, and
    ``invalid_token`` for a token that failed verification.
    """

    def __init__(self, reason: str, code: str = "invalid_token") -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)


class RequestPathError(SandboxError, ValueError):
    """The request target is refused before any policy decision (HTTP 400)."""


class AuditError(SandboxError, OSError):
    """The audit log cannot be opened or written; requests must be refused."""


class AuditIntegrityError(SandboxError, ValueError):
    """An audit log is not intact; ``line`` is the first broken record."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}")


@dataclass(frozen=True)
class Check:
    """One verification step: its name, whether it passed, and what was seen."""

    name: str
    passed: bool
    detail: str


class AttestationError(SandboxError):
    """Root of the attestation errors: evidence refused or a device failing."""


class AttestationVerificationError(AttestationError, ValueError):
    """Evidence was refused; ``checks`` lists every step run, the failed one last."""

    def __init__(self, message: str, checks: tuple[Check, ...] = ()) -> None:
        self.checks = checks
        super().__init__(message)


class AttestationFormatError(AttestationVerificationError):
    """The bytes are not a well-formed attestation document or report."""


class SignatureError(AttestationVerificationError):
    """The document or report signature does not verify with its signing key."""


class CertificateChainError(AttestationVerificationError):
    """The signing certificate does not chain to the pinned root."""


class CertificateExpiredError(CertificateChainError):
    """A certificate in the chain is not valid at the verification time."""


class MeasurementMismatchError(AttestationVerificationError):
    """A measured value (PCR, MEASUREMENT, HOST_DATA) is not the one expected."""


class BindingMismatchError(AttestationVerificationError):
    """Nonce, public key, user data or REPORT_DATA is not the one expected."""


class SimulatedRootError(AttestationVerificationError):
    """Evidence chains to a development root and the caller did not opt in."""


class DebugModeError(AttestationVerificationError):
    """The evidence comes from a debug enclave or guest, whose host can read
    its memory, and the caller did not opt in."""


class AttestationDeviceError(AttestationError, OSError):
    """The attestation device (NSM, configfs-tsm, sev-guest) failed."""


class ReportRaceError(AttestationDeviceError):
    """Another writer changed the configfs-tsm entry while a report was read."""


class PolicyBindingError(AttestationError, ValueError):
    """The platform is bound to another policy; the sandbox must not start."""


class ConfinementError(SandboxError, OSError):
    """The app cannot be confined as the operator asked; it is not started."""
