"""``sandbox audit``: commands for the hash-chained audit log.

``sandbox audit verify FILE`` exits 0 when the chain is intact, 1 when a
record is broken (naming its line), and 2 when the file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sandbox.audit.verify import verify_file
from sandbox.errors import AuditError, AuditIntegrityError

EXIT_INTACT = 0
EXIT_BROKEN = 1
EXIT_UNREADABLE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and its subcommands to the ``sandbox`` parser."""
    audit = commands.add_parser("audit", help="check the audit log")
    actions = audit.add_subparsers(dest="audit_command", required=True)

    verify = actions.add_parser(
        "verify",
        help="check the hash chain of an audit log",
        description="Check every record's seq and prev; name the first broken one.",
    )
    verify.add_argument("file", metavar="FILE", type=Path, help="the audit log")
    verify.set_defaults(handler=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    """Print the head of an intact log, or the first broken line on stderr."""
    path: Path = args.file
    try:
        result = verify_file(path)
    except AuditIntegrityError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    except AuditError as exc:
        print(f"sandbox audit verify: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE

    print(
        f"ok: {result.records} records, "
        f"head seq {result.head_seq} sha256:{result.head_hash}"
    )
    return EXIT_INTACT
