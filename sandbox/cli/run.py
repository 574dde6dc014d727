"""``sandbox run``: serve the policy in front of the app (and start the app)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from sandbox.errors import AuditError, PolicyError
from sandbox.ingress.upstream import UpstreamTimeouts, parse_upstream
from sandbox.netaddr import parse_host_port
from sandbox.policy.loader import load_policy
from sandbox.runner import RunOptions, run
from sandbox.units import parse_duration


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="enforce a policy in front of an app",
        description="Serve the policy in front of the app at --upstream. With "
        "'-- APP COMMAND...', start the app too, and stop when it stops.",
    )
    parser.add_argument("--policy", required=True, help="policy file or folder")
    parser.add_argument(
        "--upstream", required=True, help="the app: http://HOST:PORT or unix:/PATH"
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8000", type=_address, help="default %(default)s"
    )
    parser.add_argument(
        "--admin-listen",
        default="127.0.0.1:9901",
        type=_address,
        help="healthz, readyz, metrics (default %(default)s)",
    )
    parser.add_argument("--audit-log", help="audit log path (overrides audit.path)")
    parser.add_argument(
        "--upstream-timeout",
        default="30s",
        type=_duration,
        help="504 when the app is slower than this to answer (default %(default)s)",
    )
    parser.add_argument(
        "--drain-timeout",
        default="15s",
        type=_duration,
        help="on SIGTERM, wait this long for in-flight requests (default %(default)s)",
    )
    parser.add_argument(
        "app_command", nargs=argparse.REMAINDER, help="-- APP COMMAND..."
    )
    parser.set_defaults(handler=run_command)


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _duration(text: str) -> float:
    try:
        return _positive(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return value


def run_command(args: argparse.Namespace) -> int:
    command = list(args.app_command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        parse_upstream(args.upstream)
        policy = load_policy(args.policy)
    except (PolicyError, ValueError) as exc:
        print(f"sandbox run: {exc}", file=sys.stderr)
        return 2
    options = RunOptions(
        upstream=args.upstream,
        listen=args.listen,
        admin_listen=args.admin_listen,
        app_command=command,
        timeouts=UpstreamTimeouts(response=args.upstream_timeout),
        drain_seconds=args.drain_timeout,
        audit_path=args.audit_log,
    )
    try:
        return asyncio.run(run(policy, options))
    except AuditError as exc:
        print(f"sandbox run: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sandbox run: cannot serve: {exc}", file=sys.stderr)
        return 2
