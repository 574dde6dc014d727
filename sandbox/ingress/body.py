"""The request body on its way to the app: streamed, counted, limited."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import StreamReader

CHUNK_SIZE = 1 << 16


class BodyTooLarge(Exception):
    """Raised inside the upload to abort it; the proxy answers 413."""


# A body of unknown length under a limit this small is read in full before
# the app sees anything, so an oversized one never reaches it; past this
# size it is streamed and cut off at the limit.
PREBUFFER_LIMIT = 16 * 1024 * 1024


class CountingBody:
    """An async iterable over the caller's body that stops past ``limit``."""

    def __init__(self, stream: StreamReader, limit: int | None) -> None:
        self.stream = stream
        self.limit = limit
        self.count = 0
        self.exceeded = False
        self._buffered: list[bytes] = []

    async def prebuffer(self) -> None:
        """Read the whole body now when its limit is small; sets ``exceeded``."""
        if self.limit is None or self.limit > PREBUFFER_LIMIT:
            return
        while not self.stream.at_eof() and not self.exceeded:
            chunk = await self.stream.read(CHUNK_SIZE)
            if not chunk:
                break
            self.count += len(chunk)
            self.exceeded = self.count > self.limit
            self._buffered.append(chunk)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._buffered:
            yield chunk
        self._buffered = []
        async for chunk in self.stream.iter_chunked(CHUNK_SIZE):
            self.count += len(chunk)
            if self.limit is not None and self.count > self.limit:
                self.exceeded = True
                raise BodyTooLarge(f"body passed {self.limit} bytes")
            yield chunk
