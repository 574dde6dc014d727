"""Name resolution for egress, behind one small interface tests can replace.

The egress proxy resolves a name once, checks every address it got, and
connects to a checked one; it never hands the name to anything that would
look it up again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Protocol

from sandbox.policy.addresses import IPAddress


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` has; raises OSError when it has none."""
        ...


class SystemResolver:
    """The operating system's resolver, through the event loop's executor."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        answers = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in answers:
            # Scope ids (fe80::1%eth0) are dropped: link-local is refused anyway.
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OSError(f"{host!r} resolved to no address")
        return addresses
