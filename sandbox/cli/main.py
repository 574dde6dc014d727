"""``sandbox``: the command line. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sandbox import __version__
from sandbox.cli import attestation, audit, bridge, policy, run, token, verify

COMMAND_GROUPS = (run, verify, policy, token, audit, attestation, bridge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox",
        description="Enforce a data owner's policy beside an app in an enclave.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--log-level", default="INFO", help="operator log level (default INFO)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
