"""What happened, in counts: the audit log read back for a person.

Counts decisions by outcome, rule, subject and egress destination over an
optional time range, refusals first, after checking the chain so that a
summary of an edited log says so instead of looking trustworthy.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sandbox import logfields as f
from sandbox.audit.verify import verify_file
from sandbox.errors import AuditIntegrityError


@dataclass
class Summary:
    records: int = 0
    first: str | None = None
    last: str | None = None
    chain_problem: str | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    refused_by_rule: Counter[str] = field(default_factory=Counter)
    allowed_by_rule: Counter[str] = field(default_factory=Counter)
    refused_subjects: Counter[str] = field(default_factory=Counter)
    subjects: Counter[str] = field(default_factory=Counter)
    refused_destinations: Counter[str] = field(default_factory=Counter)
    destinations: Counter[str] = field(default_factory=Counter)
    bytes_out: Counter[str] = field(default_factory=Counter)


def parse_time(text: str) -> datetime:
    """RFC 3339 (``2026-12-03T18:00:00Z``); raises ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add Z for UTC")
    return moment


def summarize(
    path: Path, since: datetime | None = None, until: datetime | None = None
) -> Summary:
    """Counts over decisions whose time is in [since, until)."""
    summary = Summary()
    try:
        verify_file(path)
    except AuditIntegrityError as exc:
        summary.chain_problem = str(exc)
    for record in _records(path):
        moment = str(record.get(f.TIME, ""))
        if not _in_range(moment, since, until):
            continue
        if record.get(f.EVENT) == f.EVENT_EGRESS_END:
            summary.bytes_out[_destination(record)] += int(record.get(f.BYTES_OUT) or 0)
        elif record.get(f.EVENT) == f.EVENT_DECISION:
            _count(summary, record, moment)
    return summary


def _in_range(moment: str, since: datetime | None, until: datetime | None) -> bool:
    if since is None and until is None:
        return True
    try:
        when = parse_time(moment)
    except ValueError:
        return False
    return (since is None or when >= since) and (until is None or when < until)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # reported by the chain check already
            if isinstance(record, dict):
                yield record


def _count(summary: Summary, record: dict[str, Any], moment: str) -> None:
    summary.records += 1
    summary.first = summary.first or moment
    summary.last = moment
    refused = record.get(f.DECISION) == f.DENY
    enforced = record.get(f.ENFORCED, True)
    outcome = "allowed" if not refused else ("refused" if enforced else "would refuse")
    direction = record.get(f.DIRECTION, "?")
    summary.outcomes[f"{direction} {outcome}"] += 1
    rule = str(record.get(f.RULE))
    (summary.refused_by_rule if refused else summary.allowed_by_rule)[rule] += 1
    if direction == f.DIRECTION_EGRESS:
        destination = _destination(record)
        summary.destinations[destination] += 1
        if refused:
            summary.refused_destinations[destination] += 1
    else:
        subject = _subject(record)
        summary.subjects[subject] += 1
        if refused:
            summary.refused_subjects[subject] += 1


def _subject(record: dict[str, Any]) -> str:
    if not record.get(f.SUBJECT):
        return "anonymous"
    return f"{record[f.SUBJECT]} ({record.get(f.ISSUER)})"


def _destination(record: dict[str, Any]) -> str:
    host = str(record.get(f.HOST))
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{record.get(f.PORT)}"


def render(summary: Summary) -> str:
    lines = []
    if summary.chain_problem:
        lines.append(f"WARNING: the audit chain is broken: {summary.chain_problem}")
        lines.append("         the counts below may not be what happened.")
    span = f"{summary.first} .. {summary.last}" if summary.records else "no decisions"
    lines.append(f"{summary.records} decisions, {span}")
    sections = [
        ("Outcomes", summary.outcomes),
        ("Refusals by rule", summary.refused_by_rule),
        ("Refused subjects", summary.refused_subjects),
        ("Refused egress destinations", summary.refused_destinations),
        ("Allowed by rule", summary.allowed_by_rule),
        ("Subjects", summary.subjects),
        ("Egress destinations", summary.destinations),
        ("Bytes sent out, by destination", summary.bytes_out),
    ]
    for title, counts in sections:
        if counts:
            lines.append(f"\n{title}:")
            lines.extend(f"  {count:8}  {name}" for name, count in counts.most_common())
    return "\n".join(lines)
