"""``sandbox policy explain PATH``: a policy in plain language, risks flagged.

The account itself is built by :mod:`sandbox.policy.explain`; this module
renders it for a terminal (the default) or as Markdown (``--format md``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sandbox.errors import PolicyError
from sandbox.policy.explain import Account, explain
from sandbox.policy.loader import load_policy

FORMATS = ("text", "md")


def register(actions: Any) -> None:
    explain_ = actions.add_parser(
        "explain", help="say in plain language what a policy allows, flag risks"
    )
    explain_.add_argument(
        "path", help="a policy file, or the folder holding policy.yaml"
    )
    explain_.add_argument(
        "--format", choices=FORMATS, default="text", help="text (default) or md"
    )
    explain_.set_defaults(handler=explain_command)


def explain_command(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    account = explain(policy)
    render = render_markdown if args.format == "md" else render_text
    print(render(account), end="")
    return 0


def render_text(account: Account) -> str:
    lines = [f"Policy {account.name}  {account.hash}"]
    for section in account.sections:
        lines += ["", section.title]
        lines += [f"  - {sentence}" for sentence in section.sentences]
    lines += ["", f"Risks ({len(account.risks)})"]
    lines += [f"  ! {risk.where}: {risk.message}" for risk in account.risks]
    if not account.risks:
        lines.append("  none found")
    return "\n".join(lines) + "\n"


def render_markdown(account: Account) -> str:
    lines = [f"# Policy `{account.name}`", "", f"Hash: `{account.hash}`"]
    for section in account.sections:
        lines += ["", f"## {section.title}", ""]
        lines += [f"- {_escaped(sentence)}" for sentence in section.sentences]
    lines += ["", f"## Risks ({len(account.risks)})", ""]
    lines += [
        f"- **{_escaped(risk.where)}**: {_escaped(risk.message)}"
        for risk in account.risks
    ]
    if not account.risks:
        lines.append("None found.")
    return "\n".join(lines) + "\n"


def _escaped(text: str) -> str:
    """Text with the characters Markdown reads as emphasis made literal."""
    for char in ("\\", "*", "_", "`"):
        text = text.replace(char, "\\" + char)
    return text
