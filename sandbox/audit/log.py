"""The audit log writer: appends hash-chained records, off the event loop.

The record format is described in :mod:`sandbox.audit.chain`.

How writing works
-----------------

All file I/O happens in one dedicated worker thread, so the event loop never
waits on the disk. ``append`` serialises the caller's fields at once (so
later changes to the caller's objects do not leak into the record), queues
them, and waits. A single drain task takes everything queued so far, up to
``MAX_BATCH`` records, and has the worker chain and write the whole batch
with one ``os.write`` (group commit): under load, many decisions share one
system call and one optional ``fsync``. Only one batch is in flight at a
time and batches are taken in queue order, so the order of records in the
file is the order in which ``append`` was called.

``append`` returns once its line is in the file (and on disk when opened
with ``fsync=True``). A caller that is cancelled while waiting does not
unwrite its record: the decision was made, so it stays logged.

When a write fails
------------------

A batch either lands whole or not at all, and the chain head only moves
after it landed. The file is opened with ``O_APPEND``:

- If ``os.write`` fails before writing a byte (a full disk, as ``/dev/full``
  shows), nothing changed: every record of the batch fails with
  ``AuditError``, ``healthy`` turns False, and the next batch is tried
  afresh. Its first record chains from the last record actually in the
  file, so a recovered log verifies end to end.
- If a write stopped part-way (a short write, then an error), the file ends
  with a partial line. The writer cuts the file back to its length before
  the batch with ``ftruncate``; none of the batch's records were
  acknowledged, so nothing a caller relied on is removed. Should that cut
  fail, or the file be no regular file, the log is broken for good: every
  later ``append`` fails rather than write valid-looking records after
  garbage, and the next ``open`` refuses the file until an operator has
  looked at it with ``sandbox audit verify``.
- A failed ``fsync`` also breaks the log for good: after one, Linux may have
  dropped the unwritten pages and later calls can succeed, so the writer can
  no longer vouch for what is on disk. Records of the failed batch may then
  be in the file although their callers were refused; the reverse (a
  response released without its record) cannot happen.

If the start record cannot be written, ``open`` still returns, with
``healthy`` False: the sandbox comes up, reports itself not ready and
refuses every request with a clear reason, and recovers by itself once the
disk has room. The start record is then written ahead of the first batch
that lands, so it still opens this process's part of the chain.

One file, one writer: a regular file is locked with ``flock`` while open, so
a second process (or a second ``AuditLog``) on the same file is refused
instead of interleaving two chains.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sandbox.audit.chain import (
    GENESIS_PREV,
    chain_line,
    encode_fields,
    record_hash,
    utc_timestamp,
)
from sandbox.errors import AuditError

logger = logging.getLogger(__name__)

MAX_BATCH = 1024
"""Most records written by one ``os.write``."""

_READ_CHUNK = 64 * 1024
_MAX_LINE = 1024 * 1024
"""A last line longer than this is no audit record; stop reading back."""

_Pending = tuple[bytes, "asyncio.Future[str]"]


class AuditLog:
    """An open audit log; create with :meth:`open`, one per file and process."""

    def __init__(self, chain: _ChainFile, executor: ThreadPoolExecutor) -> None:
        self._file = chain
        self._executor = executor
        self._pending: list[_Pending] = []
        self._drainer: asyncio.Task[None] | None = None
        self._unwritten_start: bytes | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, policy_hash: str, fsync: bool = False
    ) -> AuditLog:
        """Open (or create) the log at ``path``, then append the start record.

        Raises AuditError when the file cannot be opened or does not end with a
        complete record. A start record that cannot be written yet leaves the
        log open but not ``healthy``.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-log")
        loop = asyncio.get_running_loop()
        try:
            chain = await loop.run_in_executor(
                executor, _ChainFile.open, Path(path), fsync
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise

        log = cls(chain, executor)
        await log._write_start(policy_hash)
        return log

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def healthy(self) -> bool:
        """False after a failed write, until a later write succeeds."""
        return self._file.healthy

    @property
    def head(self) -> tuple[int, str]:
        """Seq and hash of the last record in the file; ``(-1, 64 zeros)`` if none."""
        return self._file.head

    @property
    def records_written(self) -> int:
        """Records this object wrote, its start record included."""
        return self._file.records_written

    async def append(self, fields: Mapping[str, Any]) -> str:
        """Chain and write one record; return its hash once it is in the file.

        Raises AuditError when the record could not be written, and ValueError
        when ``fields`` holds ``seq`` or ``prev``.
        """
        if self._closed:
            raise AuditError(f"audit log {self.path} is closed")

        return await self._submit(encode_fields(fields))

    async def close(self) -> None:
        """Write what is queued, then close the file. Calling it again is harmless."""
        if self._closed:
            return
        self._closed = True

        if self._drainer is not None:
            # wait(), unlike awaiting the task, does not cancel the queued
            # writes if close() itself is cancelled.
            await asyncio.wait([self._drainer])
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._file.close
        )
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _write_start(self, policy_hash: str) -> None:
        start = {
            "time": utc_timestamp(),
            "event": "start",
            "policy_hash": policy_hash,
            "pid": os.getpid(),
        }
        body = encode_fields(start)
        try:
            await self._submit(body)
        except AuditError:
            self._unwritten_start = body

    def _submit(self, body: bytes) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._pending.append((body, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                await self._commit(batch)
        finally:
            self._drainer = None
            _fail(self._pending, AuditError(f"audit log {self.path} stopped writing"))
            self._pending = []

    async def _commit(self, batch: list[_Pending]) -> None:
        start = self._unwritten_start
        bodies = [body for body, _ in batch]
        if start is not None:
            bodies.insert(0, start)

        loop = asyncio.get_running_loop()
        try:
            hashes = await loop.run_in_executor(
                self._executor, self._file.write_batch, bodies
            )
        except AuditError as exc:
            _fail(batch, exc)
            return
        except Exception:
            logger.exception("audit log %s: unexpected error in the writer", self.path)
            _fail(batch, AuditError(f"audit log {self.path}: the writer failed"))
            return
        except BaseException:
            _fail(batch, AuditError(f"audit log {self.path}: writing interrupted"))
            raise

        if start is not None:
            self._unwritten_start = None
            hashes = hashes[1:]
        for (_, future), digest in zip(batch, hashes, strict=True):
            if not future.done():
                future.set_result(digest)


def _fail(batch: Sequence[_Pending], error: AuditError) -> None:
    """Fail every waiting caller, each with its own exception object.

    Sharing one object would pile every caller's traceback onto it.
    """
    for _, future in batch:
        if not future.done():
            copy = AuditError(str(error))
            copy.__cause__ = error.__cause__
            future.set_exception(copy)


class _ChainFile:
    """The open file and the head of its chain, driven by the worker thread only.

    The event loop merely reads the public attributes; each is replaced in one
    step, so it never sees half an update.
    """

    def __init__(
        self, path: Path, fd: int, head: tuple[int, str], size: int, fsync: bool
    ) -> None:
        self.path = path
        self.head = head
        self.healthy = True
        self.records_written = 0
        self._fd = fd
        self._size = size
        self._fsync = fsync
        self._broken: str | None = None

    @classmethod
    def open(cls, path: Path, fsync: bool) -> _ChainFile:
        """Open the file and read its chain head from the last line."""
        try:
            _make_parents(path.parent)
            fd = os.open(
                path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise _open_error(path, exc) from exc

        try:
            info = os.fstat(fd)
            # Character devices such as /dev/full report size 0: no chain yet.
            size = info.st_size if stat.S_ISREG(info.st_mode) else 0
            if stat.S_ISREG(info.st_mode):
                _lock(fd, path)
            head = _read_head(fd, size, path)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError) and not isinstance(exc, AuditError):
                raise _open_error(path, exc) from exc
            raise

        _log_opened(path, head)
        return cls(path, fd, head, size, fsync)

    def write_batch(self, bodies: Sequence[bytes]) -> list[str]:
        """Chain ``bodies`` after the head, write them at once, return their hashes."""
        if self._broken is not None:
            raise AuditError(self._broken)

        seq, prev = self.head
        lines, hashes = [], []
        for body in bodies:
            seq += 1
            line = chain_line(seq, prev, body)
            prev = record_hash(line)
            lines.append(line)
            hashes.append(prev)
        self._write(b"\n".join(lines) + b"\n")

        self.head = (seq, prev)
        self.records_written += len(bodies)
        if not self.healthy:
            logger.warning("audit log %s is writable again at seq %d", self.path, seq)
            self.healthy = True
        return hashes

    def close(self) -> None:
        os.close(self._fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            self._mark_failed(exc)
            if written:
                self._cut_back(written, exc)
            raise AuditError(
                f"cannot write audit log {self.path}: {_reason(exc)}"
            ) from exc
        self._size += written

        if self._fsync:
            self._sync()

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._mark_failed(exc)
            self._break(f"fsync failed ({_reason(exc)}); what is on disk is unknown")
            raise AuditError(self._broken) from exc

    def _cut_back(self, written: int, exc: OSError) -> None:
        """Remove the partial batch a short write left at the end of the file."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as cut_exc:
            self._break(
                f"a write stopped after {written} bytes ({_reason(exc)}) and the "
                f"partial line could not be removed ({_reason(cut_exc)})"
            )
            raise AuditError(self._broken) from exc

    def _mark_failed(self, exc: OSError) -> None:
        if self.healthy:
            logger.error(
                "audit log %s: write failed, refusing decisions until it works: %s",
                self.path,
                _reason(exc),
            )
        self.healthy = False

    def _break(self, why: str) -> None:
        self._broken = (
            f"audit log {self.path} is no longer written: {why}; run "
            f"`sandbox audit verify {self.path}` and restart the sandbox"
        )
        logger.critical("%s", self._broken)


def _make_parents(directory: Path) -> None:
    """Create missing directories one by one, so each gets mode 0700.

    ``os.makedirs`` applies its mode to the last directory only.
    """
    for parent in [*reversed(directory.parents), directory]:
        if not parent.is_dir():
            parent.mkdir(mode=0o700, exist_ok=True)


def _lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise AuditError(
            f"audit log {path} is already open for writing elsewhere: each "
            "sandbox process needs its own file, or two chains would interleave"
        ) from exc


def _read_head(fd: int, size: int, path: Path) -> tuple[int, str]:
    if size == 0:
        return (-1, GENESIS_PREV)

    if os.pread(fd, 1, size - 1) != b"\n":
        raise AuditError(
            f"audit log {path} ends with an incomplete record (no newline after "
            f"the last line); run `sandbox audit verify {path}` before writing to it"
        )
    line = _last_line(fd, size - 1)
    return (_seq_of(line, path), record_hash(line))


def _last_line(fd: int, end: int) -> bytes:
    """The bytes between the newline before ``end`` and ``end``."""
    chunks: list[bytes] = []
    start = end
    while start > 0 and end - start <= _MAX_LINE:
        step = min(_READ_CHUNK, start)
        start -= step
        chunk = os.pread(fd, step, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            chunks.append(chunk[cut + 1 :])
            break
        chunks.append(chunk)
    return b"".join(reversed(chunks))


def _seq_of(line: bytes, path: Path) -> int:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    seq = record.get("seq") if isinstance(record, dict) else None
    if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
        return seq

    raise AuditError(
        f"audit log {path}: the last line is not an audit record: expected a JSON "
        f'object starting {{"seq":N,"prev":…}}, found {line[:60]!r}; run '
        f"`sandbox audit verify {path}` before writing to it"
    )


def _log_opened(path: Path, head: tuple[int, str]) -> None:
    if head[0] < 0:
        logger.info("audit log %s: starting a new chain", path)
    else:
        logger.info("audit log %s: continuing the chain after seq %d", path, head[0])


def _open_error(path: Path, exc: OSError) -> AuditError:
    return AuditError(f"cannot open audit log {path}: {_reason(exc)}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
