"""``sandbox policy diff OLD NEW``: what NEW allows that OLD refused, and back.

The comparison is built by :mod:`sandbox.policy.diff`; this module renders
it for a terminal (the default) or as Markdown (``--format md``). The exit
status follows ``diff``: 0 without differences, 1 with (or when a
direction Rego decides could not be compared), 2 when a policy does not
load.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sandbox.errors import PolicyError
from sandbox.policy.diff import Change, PolicyDiff, diff_policies
from sandbox.policy.loader import load_policy
from sandbox.policy.model import Policy

FORMATS = ("text", "md")
SAME, DIFFERENT, TROUBLE = 0, 1, 2
CAVEAT = (
    "Differences are found by probing representative requests built from both "
    "policies' rules; this is not a proof of equivalence."
)


def register(actions: Any) -> None:
    diff_ = actions.add_parser(
        "diff", help="what NEW allows that OLD refused, and the reverse"
    )
    diff_.add_argument("old", help="the trusted policy file or folder")
    diff_.add_argument("new", help="the proposed policy file or folder")
    diff_.add_argument(
        "--format", choices=FORMATS, default="text", help="text (default) or md"
    )
    diff_.set_defaults(handler=diff_command)


def diff_command(args: argparse.Namespace) -> int:
    old = _load("OLD", args.old)
    new = _load("NEW", args.new)
    if old is None or new is None:
        return TROUBLE
    diff = diff_policies(old, new)
    render = render_markdown if args.format == "md" else render_text
    print(render(diff), end="")
    if diff.has_differences or not diff.fully_compared:
        return DIFFERENT
    return SAME


def _load(label: str, path: str) -> Policy | None:
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(f"{label} policy {path} does not load:\n{exc}", file=sys.stderr)
        return None


def render_text(diff: PolicyDiff) -> str:
    lines = [f"OLD {diff.old_hash}", f"NEW {diff.new_hash}", CAVEAT]
    lines += _not_compared(diff, "  ")
    for title, changes in _lists(diff):
        lines += ["", title]
        lines += [f"  - {change.describe()}" for change in changes]
        if not changes:
            lines.append("  none")
    lines += ["", _summary(diff)]
    return "\n".join(lines) + "\n"


def render_markdown(diff: PolicyDiff) -> str:
    lines = ["# Policy diff", "", f"- OLD `{diff.old_hash}`"]
    lines += [f"- NEW `{diff.new_hash}`", "", CAVEAT]
    lines += _not_compared(diff, "- ")
    for title, changes in _lists(diff):
        lines += ["", f"## {title.rstrip(':')}", ""]
        lines += [f"- {_escaped(change.describe())}" for change in changes]
        if not changes:
            lines.append("None.")
    lines += ["", _summary(diff)]
    return "\n".join(lines) + "\n"


def _lists(diff: PolicyDiff) -> list[tuple[str, tuple[Change, ...]]]:
    lists = [
        ("NEW allows what OLD refused:", diff.widened),
        ("NEW refuses what OLD allowed:", diff.narrowed),
    ]
    if diff.limits_changed:
        lists.append(("Allowed by both, with other limits:", diff.limits_changed))
    return lists


def _not_compared(diff: PolicyDiff, bullet: str) -> list[str]:
    notes = [c.not_compared for c in diff.comparisons if c.not_compared]
    if not notes:
        return []
    return ["", "Not probed:", *(f"{bullet}{note}" for note in notes)]


def _summary(diff: PolicyDiff) -> str:
    probes = f"{diff.compared} probes compared"
    if diff.has_differences:
        return f"Unchanged elsewhere ({probes})"
    if not diff.fully_compared:
        return f"No differences where probed ({probes}); see 'Not probed' above"
    return f"No differences ({probes})"


def _escaped(text: str) -> str:
    """Text with the characters Markdown reads as emphasis made literal."""
    for char in ("\\", "*", "_", "`"):
        text = text.replace(char, "\\" + char)
    return text
