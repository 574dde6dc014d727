"""The vendor app behind the proxy: where it listens and one pooled session."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

# Makes the socket for one upstream connection: (family, type, proto).
SocketMaker = Callable[[int, int, int], socket.socket]


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect: float = 5.0
    # Time the app may take to start answering once the request was sent,
    # and the longest silence while it streams its answer.
    response: float = 30.0


def parse_upstream(text: str) -> tuple[URL, str | None]:
    """``http://127.0.0.1:8000`` or ``unix:/run/app.sock``: base URL, socket.

    Raises ValueError saying which forms are accepted.
    """
    if text.startswith("unix:"):
        socket_path = text.removeprefix("unix:").removeprefix("//")
        if not socket_path.startswith("/"):
            raise ValueError(f"upstream {text!r}: expected unix:/absolute/path.sock")
        return URL("http://app"), socket_path
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"upstream {text!r}: expected http://HOST:PORT or unix:/path.sock"
        )
    if url.path not in ("", "/") or url.query_string:
        raise ValueError(
            f"upstream {text!r}: give only scheme, host and port; the request "
            "path is forwarded as the client sent it (normalised)"
        )
    return url.with_path(""), None


def open_session(
    socket_path: str | None,
    timeouts: UpstreamTimeouts,
    pool_size: int = 256,
    make_socket: SocketMaker | None = None,
) -> aiohttp.ClientSession:
    """``make_socket`` puts TCP connections to the app where it lives (its
    own network namespace); by default they are ordinary sockets."""
    connector: aiohttp.BaseConnector
    if socket_path is not None:
        connector = aiohttp.UnixConnector(path=socket_path, limit=pool_size)
    else:
        connector = aiohttp.TCPConnector(
            limit=pool_size,
            use_dns_cache=True,
            socket_factory=(
                None
                if make_socket is None
                else lambda info: make_socket(info[0], info[1], info[2])
            ),
        )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.response
        ),
        # Bytes pass through as the app sent them, compressed or not.
        auto_decompress=False,
        # The proxy never follows redirects or keeps cookies for callers.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
    )
