"""``sandbox attestation verify``: check attestation evidence offline.

Exit status: 0 when every check passes, 1 when the evidence is refused (the
failed check is printed last, marked ✗), 2 when the input cannot be used
(unreadable file, malformed option).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sandbox.attestation.certs import load_certificates
from sandbox.attestation.checks import Verification, checks_json
from sandbox.attestation.evidence import NITRO, SNP, decode_input, detect_format
from sandbox.attestation.nitro_verify import (
    AT_DOCUMENT,
    NitroExpectations,
    verify_nitro_document,
)
from sandbox.attestation.snp_certs import AmdChain, chain_from_files, chain_from_table
from sandbox.attestation.snp_verify import SnpExpectations, verify_snp_report
from sandbox.errors import AttestationVerificationError, Check, PolicyError
from sandbox.policy.loader import load_policy

EXIT_VERIFIED = 0
EXIT_REFUSED = 1
EXIT_UNUSABLE = 2
SIMULATED_WARNING = (
    "WARNING: SIMULATED EVIDENCE. It chains to a development root, not to AWS "
    "or AMD hardware; it proves nothing about an enclave."
)


class UsageProblem(Exception):
    """An option or input file cannot be used; exit status 2."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``attestation verify`` to the ``sandbox`` parser."""
    group = commands.add_parser("attestation", help="verify attestation evidence")
    actions = group.add_subparsers(dest="attestation_command", required=True)
    verify = actions.add_parser(
        "verify",
        help="verify a Nitro document or an SEV-SNP report offline",
        description="Print each check with ✓ or ✗; exit 0 only when all pass.",
    )
    _add_verify_arguments(verify)
    verify.set_defaults(handler=verify_command)


def _add_verify_arguments(verify: argparse.ArgumentParser) -> None:
    add = verify.add_argument
    add("file", metavar="FILE", type=Path, help="evidence: raw, base64 or hex")
    add("--format", choices=(NITRO, SNP), help="skip detection")
    add("--root", type=Path, help="PEM root replacing the pinned AWS Nitro root")
    add("--at", help="ISO time certificates must be valid at, or 'document'")
    add("--nonce", help="expected nonce, hex")
    add("--pcr", action="append", default=[], metavar="N=HEX", help="expected PCR")
    add("--policy", help="policy path, or its sha256:<hex> hash, the evidence binds")
    add("--public-key", type=Path, help="TLS public key or certificate, PEM or DER")
    add("--user-data", help="expected Nitro user_data, hex")
    add("--measurement", help="expected SEV-SNP MEASUREMENT, hex")
    add("--host-data", help="expected SEV-SNP HOST_DATA, hex")
    add("--report-data", help="expected SEV-SNP REPORT_DATA, hex")
    add("--vcek", type=Path, help="VCEK certificate file")
    add("--ask", type=Path, help="ASK certificate file (may also hold the ARK)")
    add("--ark", type=Path, help="ARK certificate file")
    add("--cert-table", type=Path, help="SEV-SNP certificate table (auxblob)")
    add("--allow-simulated", action="store_true", help="accept development roots")
    add(
        "--allow-debug",
        action="store_true",
        help="accept a debug enclave or guest, whose host can read its memory",
    )
    add("--json", action="store_true", help="print the result as JSON")


def verify_command(args: argparse.Namespace) -> int:
    kind: str | None = args.format
    try:
        raw = decode_input(_read(args.file))
        kind = kind or detect_format(raw)
        result = _verify(kind, raw, args)
    except UsageProblem as exc:
        print(f"sandbox attestation verify: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except AttestationVerificationError as exc:
        _report_refusal(args, kind, exc)
        return EXIT_REFUSED
    _report_success(args, result)
    return EXIT_VERIFIED


def _verify(kind: str, raw: bytes, args: argparse.Namespace) -> Verification:
    if kind == NITRO:
        return verify_nitro_document(
            raw,
            root=root_certificate(args.root),
            at=_at(args.at, allow_document=True),
            expect=_nitro_expectations(args),
            allow_simulated=args.allow_simulated,
            allow_debug=args.allow_debug,
        )
    return verify_snp_report(
        raw,
        _amd_chain(args),
        at=_at(args.at, allow_document=False),
        expect=_snp_expectations(args),
        allow_simulated=args.allow_simulated,
        allow_debug=args.allow_debug,
    )


def _nitro_expectations(args: argparse.Namespace) -> NitroExpectations:
    return NitroExpectations(
        pcrs=dict(parse_pcr(item) for item in args.pcr),
        nonce=_hex(args.nonce, "--nonce"),
        public_key=_public_key(args.public_key),
        user_data=_hex(args.user_data, "--user-data"),
        policy_hash=policy_hash_option(args.policy),
    )


def _snp_expectations(args: argparse.Namespace) -> SnpExpectations:
    expect = SnpExpectations(
        measurement=measurement_option(args.measurement),
        host_data=_hex(args.host_data, "--host-data"),
        report_data=_hex(args.report_data, "--report-data"),
        policy_hash=policy_hash_option(args.policy),
        nonce=_hex(args.nonce, "--nonce"),
        public_key=_public_key(args.public_key),
    )
    if (expect.nonce is None) != (expect.public_key is None) or (
        expect.nonce is not None and expect.policy_hash is None
    ):
        raise UsageProblem(
            "--nonce and --public-key recompute SEV-SNP REPORT_DATA together with "
            "--policy; give all three"
        )
    return expect


def _amd_chain(args: argparse.Namespace) -> AmdChain:
    table = AmdChain()
    if args.cert_table is not None:
        table = chain_from_table(_read(args.cert_table))
    named = {
        role: path for role in ("vcek", "ask", "ark") if (path := getattr(args, role))
    }
    files = {str(path): _read(path) for path in named.values()}
    given = chain_from_files(files, {role: str(path) for role, path in named.items()})
    return AmdChain(
        vcek=given.vcek or table.vcek,
        ask=given.ask or table.ask,
        ark=given.ark or table.ark,
    )


def root_certificate(path: Path | None) -> x509.Certificate | None:
    if path is None:
        return None
    return load_certificates(_read(path), str(path))[0]


def _at(value: str | None, *, allow_document: bool) -> Any:
    if value is None:
        return None
    if value == AT_DOCUMENT:
        if not allow_document:
            raise UsageProblem("--at document: SEV-SNP reports carry no timestamp")
        return AT_DOCUMENT
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise UsageProblem(
            f"--at: expected an ISO time or 'document', got {value!r}"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_pcr(item: str) -> tuple[int, bytes]:
    index, _, value = item.partition("=")
    if not index.isdigit() or not value:
        raise UsageProblem(f"--pcr: expected N=HEX, got {item!r}")
    data = _hex(value, f"--pcr {index}")
    assert data is not None
    return int(index), data


def measurement_option(value: str | None) -> bytes | None:
    """``--measurement``: the SEV-SNP launch MEASUREMENT, 48 bytes in hex."""
    measurement = _hex(value, "--measurement")
    if measurement is not None and len(measurement) != 48:
        raise UsageProblem(
            "--measurement: expected the SEV-SNP launch MEASUREMENT, 96 hex "
            f"digits (48 bytes), got {len(measurement)} bytes"
        )
    return measurement


def _hex(value: str | None, option: str) -> bytes | None:
    if value is None:
        return None
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError as exc:
        raise UsageProblem(f"{option}: expected hex digits, got {value!r}") from exc


def _public_key(path: Path | None) -> bytes | None:
    """DER SubjectPublicKeyInfo from a public key or certificate file."""
    if path is None:
        return None
    data = _read(path)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    for load in (
        serialization.load_pem_public_key,
        serialization.load_der_public_key,
    ):
        try:
            return load(data).public_bytes(*spki)
        except ValueError:
            continue
    try:
        return load_certificates(data, str(path))[0].public_key().public_bytes(*spki)
    except AttestationVerificationError as exc:
        raise UsageProblem(
            f"--public-key {path}: expected a public key or certificate"
        ) from exc


def policy_hash_option(value: str | None) -> str | None:
    if value is None or value.startswith("sha256:"):
        return value
    try:
        return load_policy(value).hash
    except PolicyError as exc:
        raise UsageProblem(f"--policy {value}:\n{exc}") from exc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _report_success(args: argparse.Namespace, result: Verification) -> None:
    if args.json:
        print(json.dumps({**result.to_json(), "error": None}, indent=2))
    else:
        print_checks(result.checks)
        print(f"verdict: VERIFIED ({result.kind})")
    if result.simulated:
        print(SIMULATED_WARNING, file=sys.stderr)
        if not args.json:
            print(SIMULATED_WARNING)


def _report_refusal(
    args: argparse.Namespace, kind: str | None, exc: AttestationVerificationError
) -> None:
    if args.json:
        document = {
            "format": "sev-snp" if kind == SNP else kind,
            "verified": False,
            "simulated": None,
            "checks": [checks_json(check) for check in exc.checks],
            "error": {"type": type(exc).__name__, "message": str(exc)},
        }
        print(json.dumps(document, indent=2))
        return
    print_checks(exc.checks)
    if not exc.checks:
        print(f"✗ {exc}")
    print(f"verdict: REFUSED ({type(exc).__name__})")


def print_checks(checks: Sequence[Check]) -> None:
    for check in checks:
        print(f"{'✓' if check.passed else '✗'} {check.name}: {check.detail}")
