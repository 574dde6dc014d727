"""Host canonical forms, IP literal spellings and private ranges (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from sandbox.policy.addresses import (
    blocked_range,
    canonical_host,
    embedded_ipv4,
    in_networks,
    parse_ip_literal,
)


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7F.1",
        "0x7f.0.0.1",
        "017700000001",
        "0177.0.0.01",
        "127.1",
        "127.0.1",
        "127.0.0.1.",
    ],
)
def test_every_ipv4_spelling_is_the_same_address(spelling: str) -> None:
    assert canonical_host(spelling) == "127.0.0.1"


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("::FFFF:7F00:1", "::ffff:7f00:1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
    ],
)
def test_ipv6_spellings_are_canonical(spelling: str, canonical: str) -> None:
    assert canonical_host(spelling) == canonical


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("Models.Example.COM.", "models.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a-b.c_d.example", "a-b.c_d.example"),
    ],
)
def test_names_are_lower_case_punycode_without_trailing_dot(
    name: str, canonical: str
) -> None:
    assert canonical_host(name) == canonical
    assert parse_ip_literal(canonical) is None


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1",  # leading part above 255
        "1.2.3.4.5",  # five parts
        "1.2.65536",  # last part too wide for two bytes
        "4294967296",  # above 2**32
        "08.1",  # 8 is no octal digit
        "example.123",  # numeric last label, yet no address
        "fe80::1%eth0",  # scope ids name an interface, not a destination
        "[::g]",
        "-bad-.example",
        "a..b",
        "",
    ],
)
def test_what_is_neither_name_nor_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a valid|neither|refused") as refused:
        canonical_host(text)

    assert repr(text.strip("[]")) in str(refused.value)


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("127.0.0.1", "loopback 127.0.0.0/8"),
        ("10.1.2.3", "private network 10.0.0.0/8"),
        ("172.31.255.255", "private network 172.16.0.0/12"),
        ("192.168.0.1", "private network 192.168.0.0/16"),
        ("169.254.169.254", "link-local 169.254.0.0/16"),
        ("100.64.0.1", "carrier-grade NAT 100.64.0.0/10"),
        ("0.0.0.0", "'this network' (0.0.0.0/8)"),  # noqa: S104
        ("224.0.0.251", "multicast 224.0.0.0/4"),
        ("240.0.0.1", "reserved 240.0.0.0/4"),
        ("255.255.255.255", "reserved 240.0.0.0/4"),
        ("::1", "loopback ::1"),
        ("::", "unspecified address ::"),
        ("fd00::1", "unique-local fc00::/7"),
        ("fe80::1", "link-local fe80::/10"),
        ("ff02::1", "multicast ff00::/8"),
    ],
)
def test_private_and_special_ranges_are_named(address: str, label: str) -> None:
    found = blocked_range(ipaddress.ip_address(address))

    assert found is not None and found.startswith(label)


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64
        ("2002:0a00:0001::1", "10.0.0.1"),  # 6to4
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),  # Teredo
        ("::7f00:1", "127.0.0.1"),  # deprecated IPv4-compatible
    ],
)
def test_ipv4_embedded_in_ipv6_is_extracted_and_checked(
    address: str, inner: str
) -> None:
    parsed = ipaddress.ip_address(address)

    assert str(embedded_ipv4(parsed)) == inner
    label = blocked_range(parsed)
    assert label is not None and label.endswith(f"embedded in {parsed}")


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:2800:220:1::1", "::ffff:93.184.216.34"]
)
def test_public_addresses_are_not_blocked(address: str) -> None:
    assert blocked_range(ipaddress.ip_address(address)) is None


def test_opened_networks_cover_embedded_ipv4_too() -> None:
    opened = [ipaddress.ip_network("10.20.0.0/16")]

    assert in_networks(ipaddress.ip_address("10.20.1.1"), opened)
    assert in_networks(ipaddress.ip_address("::ffff:10.20.1.1"), opened)
    assert not in_networks(ipaddress.ip_address("10.21.0.1"), opened)
