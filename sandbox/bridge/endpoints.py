"""Bridge endpoints as written on the command line.

``tcp:HOST:PORT`` (IPv6 in brackets), ``vsock:CID:PORT`` (CID a number, or
``any`` on the listening side), and pairs ``LISTEN=CONNECT``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.netaddr import parse_host_port

# socket.VMADDR_CID_ANY, spelled out: only Linux builds of Python define it.
VMADDR_CID_ANY = 0xFFFFFFFF
# The all-ones value is reserved for "any", as a CID and as a port.
_MAX_VSOCK = 0xFFFFFFFF - 1
_PAIR_EXAMPLE = "vsock:any:8443=tcp:127.0.0.1:8443"


@dataclass(frozen=True)
class TcpEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


@dataclass(frozen=True)
class VsockEndpoint:
    cid: int
    port: int

    def __str__(self) -> str:
        cid = "any" if self.cid == VMADDR_CID_ANY else str(self.cid)
        return f"vsock:{cid}:{self.port}"


Endpoint = TcpEndpoint | VsockEndpoint


@dataclass(frozen=True)
class BridgePair:
    """Accept on ``listen``; for each connection, open ``connect``."""

    listen: Endpoint
    connect: Endpoint

    def __str__(self) -> str:
        return f"{self.listen}={self.connect}"


def parse_pair(text: str) -> BridgePair:
    """``LISTEN=CONNECT``; raises ValueError saying what was expected."""
    listen, sep, connect = text.partition("=")
    if not sep or not listen or not connect or "=" in connect:
        raise ValueError(
            f"expected one LISTEN=CONNECT pair such as {_PAIR_EXAMPLE}, got {text!r}"
        )
    return BridgePair(parse_endpoint(listen, True), parse_endpoint(connect, False))


def parse_endpoint(text: str, listening: bool) -> Endpoint:
    """``tcp:HOST:PORT`` or ``vsock:CID:PORT``; ``listening`` allows CID ``any``."""
    kind, sep, rest = text.partition(":")
    if sep and kind == "tcp":
        return _tcp(text, rest)
    if sep and kind == "vsock":
        return _vsock(text, rest, listening)
    raise ValueError(
        f"expected an endpoint tcp:HOST:PORT or vsock:CID:PORT, got {text!r}"
    )


def _tcp(text: str, rest: str) -> TcpEndpoint:
    try:
        host, port = parse_host_port(rest)
    except ValueError as exc:
        raise ValueError(f"in endpoint {text!r}: {exc}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"in endpoint {text!r}: expected a port 1-65535, got {port}")
    return TcpEndpoint(host, port)


def _vsock(text: str, rest: str, listening: bool) -> VsockEndpoint:
    cid_text, sep, port_text = rest.partition(":")
    if not sep or ":" in port_text:
        raise ValueError(f"expected vsock:CID:PORT, got {text!r}")
    if cid_text == "any" and not listening:
        raise ValueError(
            f"in endpoint {text!r}: CID 'any' is only valid on the listening "
            "side; expected a number to connect to (3 is a Nitro enclave's parent)"
        )
    cid = VMADDR_CID_ANY if cid_text == "any" else _number(text, "CID", cid_text)
    return VsockEndpoint(cid, _number(text, "port", port_text))


def _number(text: str, field: str, value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= _MAX_VSOCK:
        raise ValueError(
            f"in endpoint {text!r}: expected a {field} 1-{_MAX_VSOCK}, got {value!r}"
        )
    return int(value)
