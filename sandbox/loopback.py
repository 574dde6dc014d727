"""Bring ``lo`` up: a Nitro enclave boots with its loopback interface down,
and so does a fresh network namespace, such as the app's own.

The bridge's loopback listeners, the sandbox's ingress and egress proxy and
the app all talk over 127.0.0.0/8, so nothing works until ``lo`` is up. The
ioctl pair is what ``ip link set lo up`` does, without needing iproute2 in
the image.
"""

from __future__ import annotations

import fcntl
import socket
import struct

# From <linux/sockios.h> and <net/if.h>.
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# struct ifreq: a 16-byte name, then a union whose short flags come first.
_IFREQ = "16sH22x"


def bring_up(interface: str = "lo") -> bool:
    """Set IFF_UP on ``interface``; True if it was down. Raises PermissionError
    saying what is needed when the process may not (it needs CAP_NET_ADMIN)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = _flags(sock, interface)
        if flags & IFF_UP:
            return False
        request = struct.pack(_IFREQ, interface.encode(), flags | IFF_UP)
        try:
            fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, request)
        except PermissionError as exc:
            raise PermissionError(
                f"cannot bring {interface} up: expected CAP_NET_ADMIN (run as "
                f"root before dropping privileges), got {exc.strerror}"
            ) from exc
        return True


def is_up(interface: str = "lo") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return bool(_flags(sock, interface) & IFF_UP)


def _flags(sock: socket.socket, interface: str) -> int:
    request = struct.pack(_IFREQ, interface.encode(), 0)
    reply = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    flags: int = struct.unpack(_IFREQ, reply)[1]
    return flags
