"""Declared addresses: destination names the operator maps to addresses.

Where there is no DNS (an AWS Nitro Enclave), each outside destination is
reached through a bridge on a local address, e.g. ``127.0.0.10:443``. The
operator of the image declares ``NAME=IP`` for it, in the measured
entrypoint, so the policy still decides on ``NAME`` while the connection
goes to ``IP``. A declared name is never looked up, and its address is not
held against the private-network check: the operator vouches for it, the
app does not. TLS is still verified for ``NAME``.

Pure functions on text; the egress gate consumes the mapping.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from sandbox.policy.addresses import IPAddress, canonical_host, parse_ip_literal

# How a decision's address was found, as the audit record names it.
DECLARED = "declared"
RESOLVED = "resolved"
LITERAL = "literal"


def parse_declared_host(text: str) -> tuple[str, IPAddress]:
    """``NAME=IP`` as a canonical name and an address; ValueError says why not."""
    name_text, equals, address_text = text.partition("=")
    if not equals:
        raise ValueError(f"expected NAME=IP, got {text!r} (no '=')")
    return declared_name(name_text), _declared_address(name_text, address_text)


def declared_hosts(
    pairs: Iterable[tuple[str, IPAddress]],
) -> dict[str, IPAddress]:
    """The mapping of canonical names; ValueError on a name given twice."""
    hosts: dict[str, IPAddress] = {}
    for raw, address in pairs:
        name = declared_name(raw)
        if name in hosts:
            raise ValueError(
                f"expected each declared name once, got {name!r} twice "
                f"({hosts[name]} and {address})"
            )
        hosts[name] = address
    return hosts


def normalised_hosts(hosts: Mapping[str, IPAddress]) -> dict[str, IPAddress]:
    """``hosts`` with canonical names, checked as the command line checks them."""
    return declared_hosts(hosts.items())


def declared_name(text: str) -> str:
    """The canonical DNS name ``text`` spells; ValueError for anything else."""
    if not text:
        raise ValueError("expected a DNS host name before '=', got nothing")
    if "*" in text or "/" in text or ":" in text or "[" in text:
        raise ValueError(
            f"expected a DNS host name (no wildcard, scheme, port or IPv6 "
            f"address), got {text!r}"
        )
    try:
        literal = parse_ip_literal(text)
        name = canonical_host(text)
    except ValueError as exc:
        raise ValueError(f"expected a DNS host name, got {text!r}: {exc}") from exc
    if literal is not None:
        raise ValueError(
            f"expected a DNS host name, got the IP address {text!r} (an address "
            "needs no declaring)"
        )
    return name


def _declared_address(name: str, text: str) -> IPAddress:
    problem = f"expected an IP address after '{name}=', got {text!r}"
    if "%" in text:
        # A scope id names an interface, not a destination.
        raise ValueError(f"{problem} (scoped IPv6 addresses are refused)")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(problem) from None
