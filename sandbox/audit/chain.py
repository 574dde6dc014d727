"""The audit log's record format, and the pure helpers that build and hash it.

Format
------

An audit log is a file of JSON lines: one record per line, each line ended
by a single ``\\n``. Lines are serialised with compact separators (``,`` and
``:``, no spaces) and keep their keys in insertion order. Every record starts
with two keys::

    {"seq":0,"prev":"000…000",…}

``seq``
    The record's position in the file: 0 for the first line, then 1, 2, …
    A process that reopens an existing log continues the numbering, so one
    file is one chain.
``prev``
    The lower-case hex SHA-256 of the previous line's exact bytes, without
    its ``\\n``. The first record of a file has 64 zeros.

The fields the caller gave follow. A record's hash is the SHA-256 of its
line's bytes without the ``\\n``, so the chain can be checked by hand::

    sed -n 3p audit.jsonl | tr -d '\\n' | sha256sum   # equals prev on line 4

Two kinds of records are written:

- ``"event":"start"``, the first record each process writes on opening the
  log: ``{"seq","prev","time","event":"start","policy_hash","pid"}``.
- ``"event":"decision"``, one per policy decision; its other fields (time,
  request_id, direction, subject, method, path, decision, rule, reason,
  status, latency_ms, …) belong to the caller.

``time`` is RFC 3339 in UTC with milliseconds, e.g.
``2026-12-03T18:20:00.123Z`` (see :func:`utc_timestamp`).

Lines are pure ASCII, which is valid UTF-8: characters outside ASCII are
written as JSON ``\\uXXXX`` escapes, so no string a caller passes, not even
a lone surrogate, can make encoding fail.

Serialisation never fails on the values a caller passes. Values that JSON
cannot express are written as their ``str()``: objects of other types,
non-string keys other than numbers, booleans and null, and the floats NaN
and infinity (``"nan"``, ``"inf"``). An object whose ``str()`` raises is
written as its default ``repr``. Only ``seq`` and ``prev`` are refused as
caller fields, because they would break the chain.

What the chain proves: an edited, removed, inserted or reordered record
breaks the link to its successor, which ``sandbox audit verify`` reports.
What it cannot prove on its own: that records were cut from the end, or
that the whole file was rewritten from some point on. For that, compare
the head (seq and hash) with a copy kept elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GENESIS_PREV = "0" * 64
"""The ``prev`` of the first record in a file."""

RESERVED_FIELDS = ("seq", "prev")

_MAX_DEPTH = 32
"""Nesting beyond this is written as ``str()``; it also stops reference cycles."""


def utc_timestamp(now: float | None = None) -> str:
    """``now`` (seconds since the epoch; default: the clock) as RFC 3339 UTC."""
    moment = datetime.now(UTC).timestamp() if now is None else now
    # Rounding to the microsecond first keeps 1.001 from printing as .000.
    millis = math.floor(round(moment * 1000, 3))
    seconds = datetime.fromtimestamp(millis // 1000, UTC)
    return f"{seconds:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"


def record_hash(line: bytes) -> str:
    """The hash of a record: SHA-256 of its line without the ``\\n``."""
    return hashlib.sha256(line).hexdigest()


def encode_fields(fields: Mapping[str, Any]) -> bytes:
    """Serialise a caller's fields as one compact JSON object (no seq/prev yet).

    Raises ValueError only if the caller used a reserved key.
    """
    try:
        body = _dumps(dict(fields))
    except _ReservedFieldError:
        raise
    except Exception:
        # A value json cannot take, or whose str() raised: rebuild the whole
        # record from safe values rather than lose it.
        body = _dumps(_jsonable(fields, 0))
    return body.encode("ascii")


def chain_line(seq: int, prev: str, body: bytes) -> bytes:
    """Prefix ``seq`` and ``prev`` to an encoded body; the result has no ``\\n``."""
    head = b'{"seq":%d,"prev":"%s"' % (seq, prev.encode("ascii"))
    if body == b"{}":
        return head + b"}"
    return head + b"," + body[1:]


def _dumps(fields: dict[Any, Any]) -> str:
    reserved = [key for key in RESERVED_FIELDS if key in fields]
    if reserved:
        raise _ReservedFieldError(
            f"audit fields may not include {', '.join(map(repr, reserved))}: "
            "the log sets seq and prev itself"
        )
    return json.dumps(
        fields, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str
    )


class _ReservedFieldError(ValueError):
    """A caller's mistake, which no fallback may hide."""


def _jsonable(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if _prints(value) else _safe_str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return _safe_str(value)
    if isinstance(value, Mapping):
        return {_key(key): _jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item, depth + 1) for item in value]
    return _safe_str(value)


def _key(key: Any) -> str:
    return key if isinstance(key, str) else _safe_str(key)


def _prints(number: int) -> bool:
    """Whether ``str()`` accepts the int (huge ints exceed the digit limit)."""
    try:
        str(number)
    except ValueError:
        return False
    return True


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        # A broken __str__ in a caller's object must not cost the record.
        return object.__repr__(value)
