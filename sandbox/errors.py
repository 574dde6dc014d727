"""Every exception the sandbox raises on purpose.

    SandboxError
    ├── PolicyError (ValueError)          the policy bundle does not load
    ├── AuthenticationError (ValueError)  a bearer token is missing or refused
    ├── RequestPathError (ValueError)     a request path cannot be normalised
    ├── AuditError (OSError)              the audit log cannot be written
    └── AuditIntegrityError (ValueError)  an audit log fails verification

Library errors (PyYAML, PyJWT, OSError from files) are translated into these
at the boundary, with ``raise ... from exc``, so callers catch one family.
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
