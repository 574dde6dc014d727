"""Destination hosts and addresses: canonical forms and private ranges.

Pure functions on plain text and ``ipaddress`` objects. A host reaches the
egress decision in one canonical form: an IP address in its standard text
(whatever way the app wrote it: ``2130706433``, ``0x7f.1``, ``127.1`` and
``[::ffff:127.0.0.1]`` are all ``127.0.0.1`` or its IPv6 form), or a
lower-case punycode name without a trailing dot.

IPv4 shorthand follows ``inet_aton``: one to four dot-separated parts, each
decimal, octal (leading ``0``) or hexadecimal (``0x``), the last part
filling the remaining bytes. A name whose last label is numeric is no DNS
name at all, so it must parse as such an address or it is refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_MAX_NAME = 253

# Ranges the app may not reach unless a rule opens them by name.
_V4_BLOCKED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("10.0.0.0/8", "private network 10.0.0.0/8"),
    ("100.64.0.0/10", "carrier-grade NAT 100.64.0.0/10"),
    ("127.0.0.0/8", "loopback 127.0.0.0/8"),
    ("169.254.0.0/16", "link-local 169.254.0.0/16 (cloud metadata lives here)"),
    ("172.16.0.0/12", "private network 172.16.0.0/12"),
    ("192.168.0.0/16", "private network 192.168.0.0/16"),
    ("224.0.0.0/4", "multicast 224.0.0.0/4"),
    ("240.0.0.0/4", "reserved 240.0.0.0/4"),
    ("255.255.255.255/32", "broadcast 255.255.255.255"),
)
_V6_BLOCKED: tuple[tuple[str, str], ...] = (
    ("::1/128", "loopback ::1"),
    ("::/128", "unspecified address ::"),
    ("fc00::/7", "unique-local fc00::/7"),
    ("fe80::/10", "link-local fe80::/10"),
    ("ff00::/8", "multicast ff00::/8"),
)
BLOCKED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), label) for cidr, label in _V4_BLOCKED + _V6_BLOCKED
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")


def canonical_host(text: str) -> str:
    """The canonical form of ``text``; raises ValueError saying why not a host."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    address = parse_ip_literal(host)
    if address is not None:
        return str(address)
    try:
        name = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"{text!r} is not a valid host name: {exc}") from exc
    labels = name.split(".")
    if len(name) > _MAX_NAME or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a valid host name")
    return name


def parse_ip_literal(text: str) -> IPAddress | None:
    """The address ``text`` spells, None for a name; ValueError if neither."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in host:
        if "%" in host:
            raise ValueError(f"{text!r}: scoped IPv6 addresses are refused")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid IPv6 address") from exc
    lowered = host.lower()
    if lowered.endswith(".") and not lowered.endswith(".."):
        lowered = lowered[:-1]
    if not lowered or not _NUMERIC_LABEL.match(lowered.rsplit(".", 1)[-1]):
        return None
    value = _inet_aton(lowered)
    if value is None:
        raise ValueError(
            f"{text!r} is neither a host name (its last label is numeric) nor "
            "an IPv4 address"
        )
    return ipaddress.IPv4Address(value)


def _inet_aton(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) > 4:
        return None
    numbers = [_number(part) for part in parts]
    if any(number is None for number in numbers):
        return None
    values = [number for number in numbers if number is not None]
    *leading, last = values
    if any(value > 0xFF for value in leading):
        return None
    if last >= 1 << (8 * (5 - len(values))):
        return None
    result = last
    for index, value in enumerate(leading):
        result |= value << (8 * (3 - index))
    return result


def _number(part: str) -> int | None:
    try:
        if part.startswith("0x"):
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10)
    except ValueError:
        return None


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _COMPATIBLE and int(address) > 1:
        # Deprecated IPv4-compatible form (::a.b.c.d); some stacks still route it.
        return ipaddress.IPv4Address(int(address))
    return None


def blocked_range(address: IPAddress) -> str | None:
    """The private or special range ``address`` falls in, or None when public."""
    for network, label in BLOCKED_NETWORKS:
        if address.version == network.version and address in network:
            return label
    inner = embedded_ipv4(address)
    inner_label = blocked_range(inner) if inner is not None else None
    if inner_label is not None:
        return f"{inner_label}, embedded in {address}"
    return None


def in_networks(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``address``, or the IPv4 address it embeds, is in ``networks``."""
    candidates = [address]
    inner = embedded_ipv4(address)
    if inner is not None:
        candidates.append(inner)
    return any(
        candidate.version == network.version and candidate in network
        for candidate in candidates
        for network in networks
    )
