"""``sandbox verify URL``: check a running sandbox before trusting it.

Connects over TLS, asks for evidence bound to a fresh nonce and to the key
of that very connection, checks it, and checks that the policy the sandbox
serves is the one it attests (and the one given with ``--policy``). Prints
each check with ✓ or ✗; exits 0 only when all pass, 1 when refused, 2 when
the arguments cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from sandbox.attestation.checks import checks_json
from sandbox.cli.attestation import (
    SIMULATED_WARNING,
    UsageProblem,
    measurement_option,
    parse_pcr,
    policy_hash_option,
    print_checks,
    root_certificate,
)
from sandbox.client import AttestedClient, ChannelReport, Expectations
from sandbox.errors import AttestationError, Check


def register(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="verify a running sandbox: code, policy and TLS channel",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    verify.add_argument("url", help="the sandbox, e.g. https://127.0.0.1:8443")
    verify.add_argument(
        "--policy",
        help="the policy you expect: a policy folder or file, or sha256:HEX",
    )
    verify.add_argument(
        "--pcr", action="append", default=[], metavar="N=HEX", help="expected PCR"
    )
    verify.add_argument(
        "--measurement",
        metavar="HEX",
        help="expected SEV-SNP launch MEASUREMENT (96 hex digits): the guest's "
        "firmware and boot files",
    )
    verify.add_argument("--root", type=Path, help="trust this root instead of AWS's")
    verify.add_argument(
        "--allow-simulated",
        action="store_true",
        help="accept the simulated provider (development only)",
    )
    verify.add_argument(
        "--allow-debug",
        action="store_true",
        help="accept a debug enclave or guest, whose host can read its memory "
        "(development only)",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    try:
        expect = Expectations(
            policy_hash=policy_hash_option(args.policy),
            pcrs=dict(parse_pcr(item) for item in args.pcr),
            measurement=measurement_option(args.measurement),
            root=root_certificate(args.root),
            allow_simulated=args.allow_simulated,
            allow_debug=args.allow_debug,
        )
    except UsageProblem as exc:
        print(f"sandbox verify: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_connect(args.url, expect))
    except AttestationError as exc:
        _refused(args, exc)
        return 1
    _verified(args, report)
    return 0


async def _connect(url: str, expect: Expectations) -> ChannelReport:
    client = await AttestedClient.connect(url, expect)
    await client.close()
    return client.report


def _verified(args: argparse.Namespace, report: ChannelReport) -> None:
    if args.json:
        print(json.dumps(_json(report.checks, None, report), indent=2))
    else:
        print_checks(report.checks)
        print(
            f"verdict: VERIFIED ({report.provider}); policy {report.policy_hash}; "
            f"channel pinned to certificate sha256:{report.certificate_sha256}"
        )
    if report.simulated:
        print(SIMULATED_WARNING, file=sys.stderr)


def _refused(args: argparse.Namespace, exc: AttestationError) -> None:
    checks: tuple[Check, ...] = tuple(getattr(exc, "checks", ()))
    if args.json:
        print(json.dumps(_json(checks, exc, None), indent=2))
        return
    print_checks(checks)
    if not checks or checks[-1].passed:
        print(f"✗ {exc}")
    print(f"verdict: REFUSED ({type(exc).__name__})")


def _json(
    checks: tuple[Check, ...], exc: Exception | None, report: ChannelReport | None
) -> dict[str, Any]:
    return {
        "verified": exc is None,
        "provider": report.provider if report else None,
        "policy_hash": report.policy_hash if report else None,
        "simulated": report.simulated if report else None,
        "certificate_sha256": report.certificate_sha256 if report else None,
        "checks": [checks_json(check) for check in checks],
        "error": None
        if exc is None
        else {"type": type(exc).__name__, "message": str(exc)},
    }
