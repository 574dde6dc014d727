"""verify_file and ``sandbox audit verify`` name the first broken record."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.audit.log import AuditLog
from sandbox.audit.verify import VerifyResult, verify_file
from sandbox.cli import audit as audit_cli
from sandbox.errors import AuditError, AuditIntegrityError

Lines = list[bytes]
"""The lines of a log, each with its newline."""

DECISIONS = 6


@pytest.fixture
async def written_log(tmp_path: Path) -> Path:
    """A real log: a start record (line 1, seq 0) and decisions at lines 2-7."""
    path = tmp_path / "audit.jsonl"
    async with await AuditLog.open(path, policy_hash="ab" * 32) as log:
        for number in range(DECISIONS):
            await log.append(
                {"event": "decision", "request_id": f"r{number}", "decision": "allow"}
            )
    return path


def rewrite(source: Path, change: Callable[[Lines], Lines]) -> Path:
    copy = source.with_name("copy.jsonl")
    lines = source.read_bytes().splitlines(keepends=True)
    copy.write_bytes(b"".join(change(lines)))
    return copy


def edit_decision(lines: Lines) -> Lines:
    lines[3] = lines[3].replace(b'"decision":"allow"', b'"decision":"deny"')
    return lines


def delete_line_4(lines: Lines) -> Lines:
    del lines[3]
    return lines


def delete_lines_3_and_4(lines: Lines) -> Lines:
    del lines[2:4]
    return lines


def swap_lines_3_and_4(lines: Lines) -> Lines:
    lines[2], lines[3] = lines[3], lines[2]
    return lines


def move_line_3_to_the_end(lines: Lines) -> Lines:
    return lines[:2] + lines[3:] + lines[2:3]


def repeat_line_4(lines: Lines) -> Lines:
    return lines[:4] + lines[3:]


def cut_last_line(lines: Lines) -> Lines:
    lines[-1] = lines[-1][:-10]
    return lines


def drop_first_line(lines: Lines) -> Lines:
    return lines[1:]


def replace_line_5(replacement: bytes) -> Callable[[Lines], Lines]:
    def change(lines: Lines) -> Lines:
        lines[4] = replacement + b"\n"
        return lines

    return change


def without_field(name: str) -> Callable[[Lines], Lines]:
    def change(lines: Lines) -> Lines:
        record = json.loads(lines[4])
        del record[name]
        lines[4] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        return lines

    return change


BROKEN_COPIES = [
    pytest.param(edit_decision, 4, "record edited", id="edited"),
    pytest.param(delete_line_4, 4, "1 record missing before line 4", id="deleted"),
    pytest.param(
        delete_lines_3_and_4, 3, "2 records missing before line 3", id="deleted-two"
    ),
    pytest.param(drop_first_line, 1, "1 record missing before line 1", id="head-cut"),
    pytest.param(swap_lines_3_and_4, 3, "records out of order", id="swapped"),
    pytest.param(move_line_3_to_the_end, 3, "seq 2 comes later, at line 7", id="moved"),
    pytest.param(repeat_line_4, 5, "records out of order", id="repeated"),
    pytest.param(cut_last_line, 7, "last line is incomplete", id="truncated"),
    pytest.param(replace_line_5(b"not json"), 5, "not JSON", id="not-json"),
    pytest.param(replace_line_5(b""), 5, "not JSON", id="blank-line"),
    pytest.param(replace_line_5(b"[1,2]"), 5, "not an object", id="array"),
    pytest.param(without_field("seq"), 5, 'missing "seq"', id="no-seq"),
    pytest.param(without_field("prev"), 5, 'missing "prev"', id="no-prev"),
]


def test_intact_log_verifies(written_log: Path) -> None:
    last_line = written_log.read_bytes().splitlines()[-1]

    result = verify_file(written_log)

    assert result == VerifyResult(
        records=DECISIONS + 1,
        head_seq=DECISIONS,
        head_hash=hashlib.sha256(last_line).hexdigest(),
    )


@pytest.mark.parametrize(("change", "line", "kind"), BROKEN_COPIES)
def test_first_broken_record_is_named(
    written_log: Path, change: Callable[[Lines], Lines], line: int, kind: str
) -> None:
    copy = rewrite(written_log, change)

    with pytest.raises(AuditIntegrityError) as caught:
        verify_file(copy)

    assert caught.value.line == line
    assert kind in str(caught.value)
    assert str(caught.value).startswith(f"line {line}: ")


def test_edit_names_the_edited_record_and_its_successor(written_log: Path) -> None:
    copy = rewrite(written_log, edit_decision)
    edited = copy.read_bytes().splitlines()[3]

    with pytest.raises(AuditIntegrityError) as caught:
        verify_file(copy)

    message = str(caught.value)
    assert hashlib.sha256(edited).hexdigest() in message
    assert "next record (line 5)" in message


def test_edit_of_the_last_record_changes_only_the_head(written_log: Path) -> None:
    intact = verify_file(written_log)

    def edit_last(lines: Lines) -> Lines:
        lines[-1] = lines[-1].replace(b"allow", b"deny!")
        return lines

    edited = verify_file(rewrite(written_log, edit_last))

    assert edited.records == intact.records
    assert edited.head_hash != intact.head_hash


def test_first_record_must_chain_from_zeros(written_log: Path) -> None:
    def rechain(lines: Lines) -> Lines:
        lines[0] = lines[0].replace(b"0" * 64, b"1" * 64)
        return lines

    with pytest.raises(AuditIntegrityError, match="64 zeros") as caught:
        verify_file(rewrite(written_log, rechain))
    assert caught.value.line == 1


def test_empty_file_is_not_a_log(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")

    with pytest.raises(AuditIntegrityError, match="empty") as caught:
        verify_file(path)
    assert caught.value.line == 1


def test_unreadable_file_raises_audit_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="No such file"):
        verify_file(tmp_path / "missing.jsonl")


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sandbox")
    audit_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


def test_cli_prints_the_head_of_an_intact_log(
    written_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = verify_file(written_log)

    status = run_cli("audit", "verify", str(written_log))

    out, err = capsys.readouterr()
    assert status == 0
    assert out == f"ok: 7 records, head seq 6 sha256:{head.head_hash}\n"
    assert err == ""


def test_cli_names_the_broken_line(
    written_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = rewrite(written_log, delete_line_4)

    status = run_cli("audit", "verify", str(copy))

    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert (
        err
        == f"{copy}: line 4: 1 record missing before line 4: seq jumps from 2 to 4\n"
    )


def test_cli_reports_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"

    status = run_cli("audit", "verify", str(missing))

    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert str(missing) in err
    assert "No such file or directory" in err
