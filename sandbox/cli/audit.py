"""``sandbox audit``: commands for the hash-chained audit log.

``sandbox audit verify FILE`` exits 0 when the chain is intact, 1 when a
record is broken (naming its line), and 2 when the file cannot be read;
``sandbox audit summary FILE`` prints counts with the same exit codes.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from sandbox.audit.summary import parse_time, render, summarize
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

    summary = actions.add_parser(
        "summary",
        help="count decisions by outcome, rule, subject and destination",
        description="Counts over an audit log, refusals first. Times are RFC 3339 "
        "with a zone, e.g. 2026-12-03T18:00:00Z.",
    )
    summary.add_argument("file", metavar="FILE", type=Path, help="the audit log")
    summary.add_argument(
        "--since", type=_time, help="only decisions at or after this time"
    )
    summary.add_argument("--until", type=_time, help="only decisions before this time")
    summary.set_defaults(handler=summary_command)


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


def _time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def summary_command(args: argparse.Namespace) -> int:
    """Print the counts; exit 1 when the chain is broken, 2 when unreadable."""
    try:
        summary = summarize(args.file, args.since, args.until)
    except (OSError, AuditError) as exc:
        print(f"sandbox audit summary: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(render(summary))
    return EXIT_BROKEN if summary.chain_problem else EXIT_INTACT
