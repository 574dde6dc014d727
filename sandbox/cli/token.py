"""``sandbox token``: development keys and tokens for trying a policy.

``keygen`` writes a private key (mode 0600) and the JWKS to pin in the
policy bundle; ``issue`` signs a token with that key and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from sandbox.identity.issue import default_algorithm, generate_key, issue_token
from sandbox.identity.keys import ALLOWED_ALGORITHMS
from sandbox.units import parse_duration


class _CommandError(Exception):
    """A failure to report on one line of stderr, exiting with status 1."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser(
        "token", help="make development signing keys and tokens"
    )
    actions = token.add_subparsers(dest="token_command", required=True)
    _register_keygen(actions)
    _register_issue(actions)


def _register_keygen(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    keygen = actions.add_parser(
        "keygen", help="write a new private key and the JWKS that pins it"
    )
    keygen.add_argument(
        "--alg", default="ES256", choices=ALLOWED_ALGORITHMS, help="default ES256"
    )
    keygen.add_argument("--private-key", required=True, type=Path, metavar="PATH")
    keygen.add_argument("--jwks", required=True, type=Path, metavar="PATH")
    keygen.add_argument(
        "--force", action="store_true", help="overwrite files that exist"
    )
    keygen.set_defaults(handler=keygen_command)


def _register_issue(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    issue = actions.add_parser("issue", help="print a token signed with a key file")
    issue.add_argument("--key", required=True, type=Path, metavar="PATH")
    issue.add_argument("--iss", required=True, help="issuer")
    issue.add_argument(
        "--aud", required=True, action="append", help="audience (repeatable)"
    )
    issue.add_argument("--sub", required=True, help="subject")
    issue.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra claim; VALUE is read as JSON when it parses, else as text",
    )
    issue.add_argument("--expires-in", default="1h", metavar="DURATION")
    issue.add_argument(
        "--not-before", metavar="DURATION", help="valid only this long from now"
    )
    issue.add_argument(
        "--alg", choices=ALLOWED_ALGORITHMS, help="default: the key's own"
    )
    issue.set_defaults(handler=issue_command)


def keygen_command(args: argparse.Namespace) -> int:
    return _reported("keygen", lambda: _keygen(args))


def issue_command(args: argparse.Namespace) -> int:
    return _reported("issue", lambda: _issue(args))


def _reported(command: str, work: Callable[[], None]) -> int:
    try:
        work()
    except _CommandError as exc:
        print(f"sandbox token {command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _keygen(args: argparse.Namespace) -> None:
    private_key: Path = args.private_key
    jwks_path: Path = args.jwks
    if not args.force:
        existing = [str(path) for path in (private_key, jwks_path) if path.exists()]
        if existing:
            verb = "exists" if len(existing) == 1 else "exist"
            raise _CommandError(
                f"{' and '.join(existing)} already {verb}; pass --force to overwrite"
            )

    pem, jwks = generate_key(args.alg)
    _write(private_key, pem, mode=0o600, force=args.force)
    document = json.dumps(jwks, indent=2) + "\n"
    _write(jwks_path, document.encode("utf-8"), mode=0o644, force=args.force)
    print(jwks["keys"][0]["kid"])


def _write(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, mode)
        with os.fdopen(descriptor, "wb") as stream:
            # The mode given to open applies only to a new file.
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
    except FileExistsError as exc:
        raise _CommandError(
            f"{path} already exists; pass --force to overwrite"
        ) from exc
    except OSError as exc:
        raise _CommandError(f"cannot write {path}: {exc.strerror}") from exc


def _issue(args: argparse.Namespace) -> None:
    pem = _signing_key(args.key)
    now = time.time()
    expires_in = _duration("--expires-in", args.expires_in)
    not_before = None
    if args.not_before is not None:
        not_before = now + _duration("--not-before", args.not_before)

    try:
        token = issue_token(
            pem,
            issuer=args.iss,
            audience=args.aud[0] if len(args.aud) == 1 else args.aud,
            subject=args.sub,
            claims=_claims(args.claim),
            expires_in=expires_in,
            not_before=not_before,
            algorithm=args.alg,
            now=now,
        )
    except ValueError as exc:
        raise _CommandError(str(exc)) from exc
    print(token)


def _signing_key(path: Path) -> bytes:
    try:
        pem = path.read_bytes()
        default_algorithm(pem)
    except OSError as exc:
        raise _CommandError(f"cannot read --key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise _CommandError(f"--key {path}: {exc}") from exc
    return pem


def _duration(option: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise _CommandError(f"{option}: {exc}") from exc


def _claims(items: list[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not name or not equals:
            raise _CommandError(f"--claim {item!r}: expected NAME=VALUE")
        if name in claims:
            raise _CommandError(f"--claim {name!r} is given twice")
        claims[name] = _claim_value(text)
    return claims


def _claim_value(text: str) -> Any:
    """JSON when it parses (``["a"]``, ``3``, ``true``), else the text itself."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")
