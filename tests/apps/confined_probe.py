"""An app that tries every way out it can think of and writes down what happened.

Run as ``python -m tests.apps.confined_probe RESULT.json ORIGIN_PORT FREE_PORT
[TARGETS]`` under ``sandbox run`` or the confine launcher; exits 0 once the
file is written. TARGETS is a JSON object of more connections to try, by
name: ``{"name": ["HOST", PORT]}``.
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
_CLONE_NEWNET = 0x40000000


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


def connect(port: int, host: str = "127.0.0.1") -> Callable[[], object]:
    def attempt() -> None:
        with socket.create_connection((host, port), timeout=5):
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


def enter_own_network() -> None:
    """Harmless in itself; refused means no namespace can be entered. Through
    libc: the unprivileged probe may run on a Python older than os.setns."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))
    finally:
        os.close(fd)


def main(
    result_path: str, origin_port: int, free_port: int, targets: str = "{}"
) -> None:
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
        "setns": outcome(enter_own_network),
    }
    for name, (host, port) in json.loads(targets).items():
        results[name] = outcome(connect(port, host))
    results["interfaces"] = sorted(name for _, name in socket.if_nameindex())
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
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])
