"""``sandbox audit summary``: counts read back from a real chained log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sandbox.audit.log import AuditLog
from sandbox.audit.summary import parse_time, render, summarize
from sandbox.cli.main import main


def decision(time: str, **fields: Any) -> dict[str, Any]:
    return {"event": "decision", "time": time, "enforced": True, **fields}


RECORDS = [
    decision(
        "2026-12-03T10:00:00.000Z",
        direction="ingress",
        decision="allow",
        rule="read",
        sub="alice",
        iss="https://i",
    ),
    decision(
        "2026-12-03T10:05:00.000Z",
        direction="ingress",
        decision="deny",
        rule="no-admin",
        sub="mallory",
        iss="https://i",
    ),
    decision(
        "2026-12-03T10:06:00.000Z",
        direction="ingress",
        decision="deny",
        rule="default",
        sub=None,
        iss=None,
    ),
    decision(
        "2026-12-03T11:00:00.000Z",
        direction="egress",
        decision="deny",
        rule="default",
        host="paste.example",
        port=443,
    ),
    decision(
        "2026-12-03T11:01:00.000Z",
        direction="egress",
        decision="allow",
        rule="weights",
        host="models.example.com",
        port=443,
    ),
    {
        "event": "egress_end",
        "time": "2026-12-03T11:02:00.000Z",
        "host": "models.example.com",
        "port": 443,
        "bytes_out": 2048,
    },
    decision(
        "2026-12-03T12:00:00.000Z",
        direction="ingress",
        decision="deny",
        enforced=False,
        rule="no-admin",
        sub="bob",
        iss="https://i",
    ),
]


def write_log(path: Path) -> None:
    async def write() -> None:
        log = await AuditLog.open(path, policy_hash="sha256:" + "0" * 64)
        for record in RECORDS:
            await log.append(record)
        await log.close()

    asyncio.run(write())


def test_counts_put_refusals_first(tmp_path: Path) -> None:
    write_log(tmp_path / "a.jsonl")

    summary = summarize(tmp_path / "a.jsonl")
    text = render(summary)

    assert summary.records == 6 and summary.chain_problem is None
    assert summary.outcomes == {
        "ingress allowed": 1,
        "ingress refused": 2,
        "ingress would refuse": 1,
        "egress refused": 1,
        "egress allowed": 1,
    }
    assert summary.refused_by_rule == {"no-admin": 2, "default": 2}
    assert summary.refused_subjects == {
        "mallory (https://i)": 1,
        "anonymous": 1,
        "bob (https://i)": 1,
    }
    assert summary.refused_destinations == {"paste.example:443": 1}
    assert summary.bytes_out == {"models.example.com:443": 2048}
    assert text.index("Refusals by rule") < text.index("Allowed by rule")


def test_time_range_selects_decisions(tmp_path: Path) -> None:
    write_log(tmp_path / "a.jsonl")

    summary = summarize(
        tmp_path / "a.jsonl",
        since=parse_time("2026-12-03T10:05:00Z"),
        until=parse_time("2026-12-03T11:00:00Z"),
    )

    assert summary.records == 2
    assert summary.refused_by_rule == {"no-admin": 1, "default": 1}


def test_summary_of_an_edited_log_warns_and_exits_one(
    tmp_path: Path, capsys: Any
) -> None:
    write_log(tmp_path / "a.jsonl")
    lines = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"deny"', '"allow"')
    (tmp_path / "a.jsonl").write_text("".join(lines))

    status = main(["audit", "summary", str(tmp_path / "a.jsonl")])

    out = capsys.readouterr().out
    assert status == 1
    assert out.startswith("WARNING: the audit chain is broken: line 3: record edited")
