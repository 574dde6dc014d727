"""``sandbox policy check|hash|measure``: the data owner's view of a policy bundle."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sandbox.attestation import measure
from sandbox.cli import policy_diff, policy_explain, policy_schema, policy_test
from sandbox.errors import PolicyError
from sandbox.policy.bundle import manifest
from sandbox.policy.loader import load_policy


def register(commands: Any) -> None:
    parser = commands.add_parser("policy", help="check and hash policies")
    actions = parser.add_subparsers(dest="action", required=True)

    check = actions.add_parser("check", help="validate a policy; exit 1 when invalid")
    check.add_argument("path", help="a policy file, or the folder holding policy.yaml")
    check.set_defaults(handler=check_command)
    policy_test.register(actions)
    policy_explain.register(actions)
    policy_diff.register(actions)
    schema = actions.add_parser("schema", help="print the JSON Schema of policy.yaml")
    schema.set_defaults(handler=policy_schema.schema_command)

    hash_ = actions.add_parser("hash", help="print the policy hash clients verify")
    hash_.add_argument("path", help="a policy file, or the folder holding policy.yaml")
    hash_.add_argument(
        "--manifest",
        action="store_true",
        help="also print the hashed files, as sha256sum prints them",
    )
    hash_.set_defaults(handler=hash_command)

    measure_ = actions.add_parser(
        "measure", help="print the attestation values this policy produces"
    )
    measure_.add_argument(
        "path", help="a policy file, or the folder holding policy.yaml"
    )
    measure_.add_argument("--json", action="store_true", help="print JSON")
    measure_.set_defaults(handler=measure_command)


def check_command(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        count = len(exc.problems)
        print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
        return 1
    rules = len(policy.ingress.rules) + len(policy.egress.rules)
    print(f"ok: {policy.name} ({policy.mode} mode, {rules} rules) {policy.hash}")
    return 0


def hash_command(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.manifest:
        sys.stdout.write(manifest(policy.files))
    print(policy.hash)
    return 0


def measure_command(args: argparse.Namespace) -> int:
    """The policy hash, Nitro PCR16 and SEV-SNP HOST_DATA it leads to."""
    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    values = {
        "policy_hash": policy.hash,
        "nitro_pcr16": measure.expected_pcr16(policy.hash).hex(),
        "snp_host_data": measure.expected_host_data(policy.hash).hex(),
    }
    if args.json:
        print(json.dumps(values, indent=2))
        return 0
    print(f"policy hash:        {values['policy_hash']}")
    print(f"Nitro PCR16:        {values['nitro_pcr16']}")
    print(f"SEV-SNP HOST_DATA:  {values['snp_host_data']}")
    return 0
