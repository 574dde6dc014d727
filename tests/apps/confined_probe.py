"""An app that tries every way out it can think of and writes down what happened.

Run as ``python -m tests.apps.confined_probe RESULT.json ORIGIN_PORT`` under
``sandbox run`` or the confine launcher; exits 0 once the file is written.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import Callable

_IO_URING_SETUP = 425


def outcome(attempt: Callable[[], object]) -> str:
    """'ok', or the errno's name (EACCES, ENOSYS...) of the refusal."""
    try:
        attempt()
    except OSError as exc:
        number = exc.errno if exc.errno is not None else getattr(exc.reason, "errno", 0)
        return errno.errorcode.get(number or 0, str(exc))
    return "ok"


def make(family: int, kind: int, protocol: int = 0) -> Callable[[], object]:
    return lambda: socket.socket(family, kind, protocol).close()


def connect(port: int) -> Callable[[], object]:
    def attempt() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass

    return attempt


def bind(port: int) -> Callable[[], object]:
    def attempt() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))

    return attempt


def via_proxy(url: str) -> Callable[[], object]:
    def attempt() -> int:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return int(response.status)

    return attempt


def io_uring() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_IO_URING_SETUP, 1, None) < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def signal_parent() -> None:
    os.kill(os.getppid(), signal.SIGCONT)


def main(result_path: str, origin_port: int, free_port: int) -> None:
    results = {
        "uid": os.getuid(),
        "unix": outcome(make(socket.AF_UNIX, socket.SOCK_STREAM)),
        "tcp": outcome(make(socket.AF_INET, socket.SOCK_STREAM)),
        "tcp6": outcome(make(socket.AF_INET6, socket.SOCK_STREAM)),
        "udp": outcome(make(socket.AF_INET, socket.SOCK_DGRAM)),
        "udp6": outcome(make(socket.AF_INET6, socket.SOCK_DGRAM)),
        "vsock": outcome(make(socket.AF_VSOCK, socket.SOCK_STREAM)),
        "sctp": outcome(make(socket.AF_INET, socket.SOCK_STREAM, 132)),
        "packet": outcome(make(socket.AF_PACKET, socket.SOCK_RAW)),
        "direct_connect": outcome(connect(origin_port)),
        "bind_other_port": outcome(bind(free_port)),
        "io_uring": outcome(io_uring),
        "signal_parent": outcome(signal_parent),
    }
    bundle = os.environ.get("SSL_CERT_FILE")
    if bundle:
        key = os.path.join(os.path.dirname(bundle), "mitmproxy-ca.pem")
        results["read_trust_bundle"] = outcome(lambda: open(bundle).close())
        results["read_ca_key"] = outcome(lambda: open(key).close())
    if os.environ.get("HTTP_PROXY"):
        url = f"http://127.0.0.1:{origin_port}/hello"
        results["via_proxy"] = outcome(via_proxy(url))
    with open(result_path, "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
