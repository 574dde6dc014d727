"""The record of a verification: each check run, in order, and how it ended.

A verifier writes every step to a ``CheckLog``. A passing step is recorded;
a failing step is recorded and raised at once as a precise
``AttestationVerificationError`` subclass that carries the whole log, so a
command line can print what passed before the failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from sandbox.errors import AttestationVerificationError, Check

__all__ = ["Check", "CheckLog", "Verification"]


class CheckLog:
    """Checks in the order they ran; ``fail`` raises with the log attached."""

    def __init__(self) -> None:
        self._checks: list[Check] = []

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(self._checks)

    def passed(self, name: str, detail: str) -> None:
        self._checks.append(Check(name, True, detail))

    def fail(
        self, error: type[AttestationVerificationError], name: str, detail: str
    ) -> NoReturn:
        self._checks.append(Check(name, False, detail))
        raise error(f"{name}: {detail}", self.checks)

    def expect_equal(
        self,
        error: type[AttestationVerificationError],
        name: str,
        expected: bytes,
        actual: bytes | None,
        where: str = "document has",
    ) -> None:
        """Pass when ``actual`` equals ``expected``; both are shown as hex."""
        if actual != expected:
            shown = "nothing" if actual is None else actual.hex()
            self.fail(error, name, f"expected {expected.hex()}, {where} {shown}")
        self.passed(name, expected.hex())


@dataclass(frozen=True)
class Verification:
    """Every check passed; ``simulated`` marks evidence from a development root."""

    kind: str
    checks: tuple[Check, ...]
    simulated: bool

    def to_json(self) -> dict[str, object]:
        return {
            "format": self.kind,
            "verified": True,
            "simulated": self.simulated,
            "checks": [checks_json(check) for check in self.checks],
        }


def checks_json(check: Check) -> dict[str, object]:
    return {"name": check.name, "passed": check.passed, "detail": check.detail}
