"""One bridge pair at work: accept on one endpoint, relay to the other.

Each accepted connection gets a fresh connection to the connect endpoint;
bytes are copied both ways with backpressure, and a half-close on one side
is passed on as a half-close on the other, so request/response protocols
that signal the end of a request with EOF keep working. Nothing is parsed:
the bridge carries TLS and anything else untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sandbox.bridge.endpoints import BridgePair, Endpoint, TcpEndpoint

log = logging.getLogger("sandbox.bridge")

_CHUNK = 1 << 16
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class RelayOptions:
    max_connections: int = 256
    connect_timeout: float = 5.0
    # On stop, how long open connections may finish before they are cut.
    stop_grace: float = 2.0


@dataclass
class _Count:
    """Bytes relayed one way, kept up to date so a cut connection counts too."""

    bytes: int = 0


class Relay:
    """The listener of one pair and the connections it relays."""

    def __init__(
        self,
        pair: BridgePair,
        options: RelayOptions,
        listener: socket.socket | None = None,
    ) -> None:
        """``listener``, if given, is already bound to ``pair.listen`` (in
        another network namespace, say) and is used instead of binding."""
        self.pair = pair
        self.options = options
        self._listener = listener
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def bind(self) -> None:
        """Listen without accepting yet: privileges may be dropped in between."""
        if self._listener is not None:
            self._server = await asyncio.start_server(
                self._accepted, sock=self._listener, start_serving=False
            )
            return
        self._server = await _listen(self.pair.listen, self._accepted)

    async def serve(self) -> None:
        assert self._server is not None, "bind() first"
        await self._server.start_serving()
        log.info("bridge %s: listening on %s", self.pair, _shown(self.address))

    @property
    def address(self) -> tuple[Any, ...]:
        """The bound address: for tcp, with the port the kernel picked for 0."""
        assert self._server is not None, "bind() first"
        name: tuple[Any, ...] = self._server.sockets[0].getsockname()
        return name

    async def stop(self) -> None:
        """Stop listening; cut connections still open after the grace period."""
        if self._server is None:
            return
        self._server.close()
        open_now = set(self._connections)
        if open_now:
            await asyncio.wait(open_now, timeout=self.options.stop_grace)
        for task in open_now:
            task.cancel()
        await asyncio.gather(*open_now, return_exceptions=True)
        await self._server.wait_closed()

    async def _accepted(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = _peer(writer)
        if len(self._connections) >= self.options.max_connections:
            log.warning(
                "bridge %s: refused %s: %d connections open, the limit",
                self.pair,
                peer,
                len(self._connections),
            )
            writer.close()
            return

        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(peer, (reader, writer))
        finally:
            self._connections.discard(task)

    async def _relay(self, peer: str, client: Streams) -> None:
        started = time.monotonic()
        target = await self._connect(peer, client)
        if target is None:
            return

        sent, received = _Count(), _Count()
        outcome = await _splice(client, target, sent, received)
        log.info(
            "bridge %s: connection from %s ended: sent=%d received=%d "
            "duration_ms=%d outcome=%s",
            self.pair,
            peer,
            sent.bytes,
            received.bytes,
            (time.monotonic() - started) * 1000,
            outcome,
        )

    async def _connect(self, peer: str, client: Streams) -> Streams | None:
        """The connect endpoint's streams, or None with the client cut."""
        try:
            return await asyncio.wait_for(
                _open(self.pair.connect), self.options.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "bridge %s: closed %s: cannot connect to %s: %s",
                self.pair,
                peer,
                self.pair.connect,
                _reason(exc),
            )
            # A plain EOF: the client learns nothing about why, only that
            # this connection is over.
            client[1].close()
            return None
        except BaseException:
            client[1].transport.abort()
            raise


async def _splice(
    client: Streams, target: Streams, sent: _Count, received: _Count
) -> str:
    """Copy both ways until both ends are done; say how it ended."""
    sending = asyncio.create_task(_pump(client[0], target[1], sent))
    receiving = asyncio.create_task(_pump(target[0], client[1], received))
    outcome = "stopped"
    try:
        await asyncio.wait((sending, receiving), return_when=asyncio.FIRST_EXCEPTION)
        outcome = _outcome(sending, receiving)
    finally:
        for task in (sending, receiving):
            task.cancel()
        await asyncio.gather(sending, receiving, return_exceptions=True)
        # An error or a stop cuts both sides; a clean end closes them politely.
        await _close(client[1], target[1], cut=outcome != "closed")
    return outcome


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: _Count
) -> None:
    while chunk := await reader.read(_CHUNK):
        writer.write(chunk)
        count.bytes += len(chunk)
        await writer.drain()
    if not writer.is_closing():
        writer.write_eof()


def _outcome(*tasks: asyncio.Task[None]) -> str:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            return _reason(task.exception())
    return "closed"


async def _close(*writers: asyncio.StreamWriter, cut: bool) -> None:
    for writer in writers:
        if cut:
            writer.transport.abort()
        else:
            writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _listen(endpoint: Endpoint, handler: Handler) -> asyncio.Server:
    if isinstance(endpoint, TcpEndpoint):
        return await asyncio.start_server(
            handler, endpoint.host, endpoint.port, start_serving=False
        )
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind((endpoint.cid, endpoint.port))
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return await asyncio.start_server(handler, sock=sock, start_serving=False)


async def _open(endpoint: Endpoint) -> Streams:
    if isinstance(endpoint, TcpEndpoint):
        return await asyncio.open_connection(endpoint.host, endpoint.port)
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(
            sock, (endpoint.cid, endpoint.port)
        )
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def _peer(writer: asyncio.StreamWriter) -> str:
    return _shown(writer.get_extra_info("peername"))


def _shown(name: object) -> str:
    """``host:port`` for TCP, ``cid:port`` for vsock."""
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
