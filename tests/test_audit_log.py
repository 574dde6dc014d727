"""AuditLog writes a hash chain that verifies, in call order, off the event loop."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import math
import os
import re
import resource
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from blockbuster import blockbuster_ctx

from sandbox.audit.chain import GENESIS_PREV, utc_timestamp
from sandbox.audit.log import AuditLog
from sandbox.audit.verify import VerifyResult, verify_file
from sandbox.errors import AuditError

POLICY_HASH = "ab" * 32


@pytest.fixture(autouse=True)
def no_blocking_calls() -> Iterator[None]:
    """Stricter than the suite's detector: a blocking call on the loop's
    thread fails the test even when these tests make it themselves."""
    with blockbuster_ctx():
        yield


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.jsonl"


class FileSizeLimit:
    """Caps the size of files this process writes, to provoke short writes."""

    def __init__(self) -> None:
        self.soft, self.hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def cap(self, size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, self.hard))

    def lift(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.soft, self.hard))


@pytest.fixture
def size_limit() -> Iterator[FileSizeLimit]:
    # Past the limit the kernel sends SIGXFSZ, which kills by default;
    # ignored, the write fails with EFBIG instead.
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = FileSizeLimit()
    yield limit
    limit.lift()
    signal.signal(signal.SIGXFSZ, previous)


async def read_lines(path: Path) -> list[bytes]:
    return (await asyncio.to_thread(path.read_bytes)).splitlines()


async def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in await read_lines(path)]


async def verify(path: Path) -> VerifyResult:
    return await asyncio.to_thread(verify_file, path)


async def file_size(path: Path) -> int:
    return (await asyncio.to_thread(path.stat)).st_size


def decision(number: int) -> dict[str, Any]:
    return {"event": "decision", "n": number, "decision": "allow"}


async def test_records_are_chained_and_verify(log_path: Path) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        hashes = [await log.append(decision(n)) for n in range(3)]
        head = log.head

    lines = await read_lines(log_path)
    records = [json.loads(line) for line in lines]
    assert [list(record)[:2] for record in records] == [["seq", "prev"]] * 4
    assert [record["seq"] for record in records] == [0, 1, 2, 3]
    assert records[0]["prev"] == GENESIS_PREV
    for line, record in zip(lines, records[1:], strict=False):
        assert record["prev"] == hashlib.sha256(line).hexdigest()
    assert hashes == [hashlib.sha256(line).hexdigest() for line in lines[1:]]
    assert await verify(log_path) == VerifyResult(4, 3, hashes[-1])
    assert head == (3, hashes[-1])


async def test_start_record_names_policy_and_process(log_path: Path) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        assert log.records_written == 1

    (start,) = await read_records(log_path)
    assert list(start) == ["seq", "prev", "time", "event", "policy_hash", "pid"]
    assert start["event"] == "start"
    assert start["policy_hash"] == POLICY_HASH
    assert start["pid"] == os.getpid()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", start["time"])


async def test_lines_are_compact_ascii_json(log_path: Path) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        await log.append({"event": "decision", "subject": "Zoë"})

    line = (await read_lines(log_path))[-1]
    assert line.isascii()
    assert b", " not in line
    assert b'"subject":"Zo\\u00eb"' in line
    assert json.loads(line)["subject"] == "Zoë"


async def test_concurrent_appends_land_in_call_order(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer_threads: list[str] = []
    real_write = os.write

    def watched_write(fd: int, data: Any) -> int:
        writer_threads.append(threading.current_thread().name)
        return real_write(fd, data)

    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        monkeypatch.setattr(os, "write", watched_write)
        hashes = await asyncio.gather(*(log.append(decision(n)) for n in range(500)))
        monkeypatch.undo()

    lines = await read_lines(log_path)
    assert [json.loads(line)["n"] for line in lines[1:]] == list(range(500))
    assert hashes == [hashlib.sha256(line).hexdigest() for line in lines[1:]]
    assert (await verify(log_path)).records == 501
    assert threading.current_thread().name not in writer_threads
    assert all(name.startswith("audit-log") for name in writer_threads)
    assert len(writer_threads) < 10, "concurrent appends should share writes"


async def test_reopening_continues_the_chain(log_path: Path) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as first:
        await first.append(decision(0))
        first_head = first.head
    async with await AuditLog.open(log_path, policy_hash="cd" * 32) as second:
        await second.append(decision(1))
        second_head = second.head

    records = await read_records(log_path)
    restart = records[2]
    assert restart["event"] == "start"
    assert restart["policy_hash"] == "cd" * 32
    assert (restart["seq"], restart["prev"]) == (first_head[0] + 1, first_head[1])
    assert await verify(log_path) == VerifyResult(4, 3, second_head[1])


async def test_open_refuses_a_partial_last_line(log_path: Path) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        await log.append(decision(0))
    size = await file_size(log_path)
    await asyncio.to_thread(os.truncate, log_path, size - 5)

    with pytest.raises(AuditError, match="incomplete record") as caught:
        await AuditLog.open(log_path, policy_hash=POLICY_HASH)
    assert f"sandbox audit verify {log_path}" in str(caught.value)


async def test_open_refuses_a_last_line_without_seq(log_path: Path) -> None:
    await asyncio.to_thread(log_path.parent.mkdir)
    await asyncio.to_thread(log_path.write_bytes, b'{"event":"decision"}\n')

    with pytest.raises(AuditError, match=r"last line is not an audit record"):
        await AuditLog.open(log_path, policy_hash=POLICY_HASH)


async def test_open_failure_names_path_and_reason(tmp_path: Path) -> None:
    await asyncio.to_thread((tmp_path / "plain-file").write_text, "")
    path = tmp_path / "plain-file" / "audit.jsonl"

    with pytest.raises(AuditError, match=r"cannot open audit log .*plain-file.*: "):
        await AuditLog.open(path, policy_hash=POLICY_HASH)


async def test_new_directories_and_file_are_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "audit.jsonl"
    async with await AuditLog.open(path, policy_hash=POLICY_HASH):
        pass

    modes = [
        stat.S_IMODE((await asyncio.to_thread(p.stat)).st_mode)
        for p in (tmp_path / "a", tmp_path / "a" / "b", path)
    ]
    assert modes == [0o700, 0o700, 0o600]


async def test_second_writer_on_the_same_file_is_refused(log_path: Path) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH):
        with pytest.raises(AuditError, match="already open for writing"):
            await AuditLog.open(log_path, policy_hash=POLICY_HASH)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_full_disk_fails_appends_without_advancing() -> None:
    async with await AuditLog.open("/dev/full", policy_hash=POLICY_HASH) as log:
        assert not log.healthy, "the start record could not be written"

        with pytest.raises(
            AuditError, match="cannot write audit log /dev/full: No space left"
        ):
            await log.append(decision(0))

        assert not log.healthy
        assert log.head == (-1, GENESIS_PREV)
        assert log.records_written == 0


async def test_start_record_is_written_once_the_disk_recovers(
    log_path: Path, size_limit: FileSizeLimit
) -> None:
    size_limit.cap(0)
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        size_limit.lift()
        assert not log.healthy

        await log.append(decision(0))
        assert log.healthy

    records = await read_records(log_path)
    assert [record["event"] for record in records] == ["start", "decision"]
    assert (await verify(log_path)).records == 2


async def test_failed_append_leaves_the_chain_where_it_was(
    log_path: Path, size_limit: FileSizeLimit
) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        await log.append(decision(0))
        head, size = log.head, await file_size(log_path)

        # A full disk: not one byte of the record fits.
        size_limit.cap(size)
        with pytest.raises(AuditError, match="File too large"):
            await log.append(decision(1))
        size_limit.lift()

        assert (log.healthy, log.head, log.records_written) == (False, head, 2)
        assert await file_size(log_path) == size
        await log.append(decision(2))
        assert log.healthy

    records = await read_records(log_path)
    assert [record.get("n") for record in records] == [None, 0, 2]
    assert (await verify(log_path)).records == 3


async def test_short_write_is_cut_back_and_the_log_recovers(
    log_path: Path, size_limit: FileSizeLimit
) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        await log.append(decision(0))
        head, size = log.head, await file_size(log_path)

        size_limit.cap(size + 20)
        with pytest.raises(AuditError, match="File too large"):
            await log.append(decision(1))
        size_limit.lift()

        assert (log.healthy, log.head) == (False, head)
        assert await file_size(log_path) == size
        await log.append(decision(2))
        assert log.healthy

    records = await read_records(log_path)
    assert [record.get("n") for record in records] == [None, 0, 2]
    assert (await verify(log_path)).records == 3


async def test_partial_line_that_cannot_be_removed_stops_the_log(
    log_path: Path, size_limit: FileSizeLimit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "ftruncate", failing(errno.EIO))
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        size_limit.cap(await file_size(log_path) + 20)
        with pytest.raises(AuditError, match="partial line could not be removed"):
            await log.append(decision(0))
        size_limit.lift()

        with pytest.raises(AuditError, match="no longer written"):
            await log.append(decision(1))
        assert not log.healthy

    with pytest.raises(AuditError, match="incomplete record"):
        await AuditLog.open(log_path, policy_hash=POLICY_HASH)


async def test_fsync_runs_for_each_batch_when_asked(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counted_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counted_fsync)

    async with await AuditLog.open(
        log_path, policy_hash=POLICY_HASH, fsync=True
    ) as log:
        await log.append(decision(0))
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        await log.append(decision(1))

    assert len(synced) == 2
    assert (await verify(log_path)).records == 4


async def test_failed_fsync_stops_the_log(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await AuditLog.open(
        log_path, policy_hash=POLICY_HASH, fsync=True
    ) as log:
        monkeypatch.setattr(os, "fsync", failing(errno.EIO))
        with pytest.raises(AuditError, match="fsync failed"):
            await log.append(decision(0))
        monkeypatch.undo()

        with pytest.raises(AuditError, match="no longer written"):
            await log.append(decision(1))


async def test_appends_never_block_the_event_loop(log_path: Path) -> None:
    # The autouse blockbuster fixture turns a blocking call on this thread
    # into an error; this exercises every path that touches the file.
    async with await AuditLog.open(
        log_path, policy_hash=POLICY_HASH, fsync=True
    ) as log:
        await asyncio.gather(*(log.append(decision(n)) for n in range(50)))
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        await log.append(decision(50))

    assert (await verify(log_path)).records == 53


async def test_values_json_cannot_hold_are_written_as_strings(log_path: Path) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        await log.append(
            {"obj": Opaque(), "nan": math.nan, "tags": {"b"}, "nested": {1: (2, 3)}}
        )

    record = (await read_records(log_path))[-1]
    assert record["obj"] == "opaque"
    assert record["nan"] == "nan"
    assert record["tags"] == "{'b'}"
    assert record["nested"] == {"1": [2, 3]}


async def test_caller_fields_may_not_set_seq_or_prev(log_path: Path) -> None:
    async with await AuditLog.open(log_path, policy_hash=POLICY_HASH) as log:
        with pytest.raises(ValueError, match="may not include 'seq'"):
            await log.append({"seq": 7})
        assert log.head[0] == 0


async def test_closed_log_refuses_appends(log_path: Path) -> None:
    log = await AuditLog.open(log_path, policy_hash=POLICY_HASH)
    await log.close()
    await log.close()

    with pytest.raises(AuditError, match="is closed"):
        await log.append(decision(0))


def test_utc_timestamp_is_rfc3339_with_milliseconds() -> None:
    moment = datetime(2026, 12, 3, 18, 20, tzinfo=UTC).timestamp() + 0.123

    assert utc_timestamp(moment) == "2026-12-03T18:20:00.123Z"
    assert utc_timestamp(moment + 0.0009) == "2026-12-03T18:20:00.123Z"


def failing(code: int) -> Callable[..., Any]:
    def fail(*args: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail
