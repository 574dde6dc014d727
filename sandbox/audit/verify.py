"""Check an audit log's hash chain and name the first record that breaks it.

The format is described in :mod:`sandbox.audit.chain`. The file is read as a
stream, one line at a time, so a log of any size is checked in constant
memory. A log that passes proves that no record before the head was edited,
removed, inserted or moved; compare the head with a copy kept elsewhere to
prove that nothing was cut from the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sandbox.audit.chain import GENESIS_PREV, record_hash
from sandbox.errors import AuditError, AuditIntegrityError

_HEX = frozenset("0123456789abcdef")
_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class VerifyResult:
    """An intact log: how many records, and the seq and hash of the last."""

    records: int
    head_seq: int
    head_hash: str


def verify_file(path: str | os.PathLike[str]) -> VerifyResult:
    """Check the whole chain in ``path``.

    Raises AuditIntegrityError for the first broken record, and AuditError
    when the file cannot be read.
    """
    try:
        with open(path, "rb") as stream:
            return _verify_lines(iter(stream))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise AuditError(f"cannot read audit log {os.fspath(path)}: {reason}") from exc


def _verify_lines(lines: Iterator[bytes]) -> VerifyResult:
    seq, digest, number = -1, GENESIS_PREV, 0
    for number, raw in enumerate(lines, start=1):
        line = _without_newline(raw, number)
        record_seq, prev = _parse(line, number)
        _check_seq(number, seq, record_seq, lines)
        _check_prev(number, digest, prev)
        seq, digest = record_seq, record_hash(line)

    if number == 0:
        raise AuditIntegrityError(
            1, "the file is empty: a log holds at least the start record"
        )
    return VerifyResult(records=number, head_seq=seq, head_hash=digest)


def _without_newline(raw: bytes, number: int) -> bytes:
    if not raw.endswith(b"\n"):
        raise AuditIntegrityError(
            number,
            "the last line is incomplete (no newline at its end): a write was "
            "cut short or the file was truncated",
        )
    return raw[:-1]


def _parse(line: bytes, number: int) -> tuple[int, str]:
    """The record's seq and prev, after checking it is a record at all."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        raise AuditIntegrityError(
            number, f"not JSON: expected one JSON object per line, found {line[:60]!r}"
        ) from None
    if not isinstance(record, dict):
        found = _JSON_TYPES.get(type(record), type(record).__name__)
        raise AuditIntegrityError(
            number, f"not an object: expected a JSON object, found {found}"
        )
    return _seq_field(record, number), _prev_field(record, number)


def _seq_field(record: dict[str, Any], number: int) -> int:
    if "seq" not in record:
        raise AuditIntegrityError(number, 'missing "seq": every record starts with it')
    seq = record["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise AuditIntegrityError(
            number, f'"seq" must be a whole number from 0 up, found {seq!r}'
        )
    return seq


def _prev_field(record: dict[str, Any], number: int) -> str:
    if "prev" not in record:
        raise AuditIntegrityError(
            number, 'missing "prev": every record starts with seq and prev'
        )
    prev = record["prev"]
    if not isinstance(prev, str) or len(prev) != 64 or not set(prev) <= _HEX:
        raise AuditIntegrityError(
            number, f'"prev" must be 64 lower-case hex digits, found {prev!r}'
        )
    return prev


def _check_seq(number: int, last: int, seq: int, rest: Iterator[bytes]) -> None:
    expected = last + 1
    if seq < expected:
        raise AuditIntegrityError(
            number,
            f"records out of order: seq {seq} comes after seq {last} "
            f"(line {number - 1}); expected seq {expected}",
        )
    if seq > expected:
        _raise_gap(number, last, seq, rest)


def _raise_gap(number: int, last: int, seq: int, rest: Iterator[bytes]) -> None:
    """Records moved down the file also leave a gap; tell that from a deletion.

    Reads on through the file for any seq that should have come first.
    """
    expected = last + 1
    for later, raw in enumerate(rest, start=number + 1):
        found = _seq_or_none(raw)
        if found is not None and expected <= found < seq:
            raise AuditIntegrityError(
                number,
                f"records out of order: seq {seq} where seq {expected} was "
                f"expected, and seq {found} comes later, at line {later}",
            )

    missing = seq - expected
    noun = "record" if missing == 1 else "records"
    jump = f"seq jumps from {last} to {seq}" if last >= 0 else f"it starts at {seq}"
    raise AuditIntegrityError(
        number, f"{missing} {noun} missing before line {number}: {jump}"
    )


def _seq_or_none(raw: bytes) -> int | None:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    seq = record.get("seq") if isinstance(record, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _check_prev(number: int, last_hash: str, prev: str) -> None:
    if prev == last_hash:
        return
    if number == 1:
        raise AuditIntegrityError(
            1, f'the first record must have "prev" of 64 zeros, found {prev!r}'
        )
    raise AuditIntegrityError(
        number - 1,
        f"record edited: its SHA-256 is {last_hash}, but the next record "
        f"(line {number}) was chained to {prev}",
    )
