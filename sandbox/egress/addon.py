"""The mitmproxy addon: the app's connections and requests in, the gate asked.

- ``CONNECT host:port``: decided at once, before any upstream connection.
  A tunnel that only host rules cover is relayed as opaque bytes (the app
  sees the origin's own certificate); one that a rule must look inside is
  intercepted with the sandbox CA, and each request in it is decided.
- A plain ``http://`` request: decided on its own.
- Every upstream connection goes to the address checked for its decision,
  never to a fresh lookup of the name (see :meth:`EgressAddon.server_connect`).
- Bytes the app sends are counted before they are forwarded; an exchange
  that crosses its rule's body limit or byte budget is cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, http, tcp
from mitmproxy.proxy import layer, server_hooks
from mitmproxy.proxy.layers import TCPLayer

from sandbox.egress.gate import EgressGate, Refusal
from sandbox.egress.records import Exchange
from sandbox.errors import RequestPathError
from sandbox.policy.addresses import IPAddress, canonical_host, parse_ip_literal
from sandbox.policy.egress_decision import EgressTarget
from sandbox.policy.normalize import normalize_target

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_ERROR_NAMES = {
    400: "bad_request",
    403: "forbidden",
    413: "payload_too_large",
    502: "bad_gateway",
    503: "unavailable",
}
_EXCHANGE = "sandbox.exchange"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass
class _Tunnel:
    """An allowed CONNECT: the client connection now carries only this."""

    exchange: Exchange
    intercept: bool
    address: IPAddress
    flow: tcp.TCPFlow | None = field(default=None, repr=False)


class EgressAddon:
    def __init__(self, gate: EgressGate) -> None:
        self.gate = gate
        self._tunnels: dict[str, _Tunnel] = {}
        # client id -> (host, port) -> the address checked for that destination.
        self._pins: dict[str, dict[tuple[str, int], IPAddress]] = {}

    # CONNECT tunnels

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        exchange = _exchange(flow, flow.request.host, flow.request.port)
        refusal = _host_problem(exchange, flow.request.host)
        if refusal is None:
            # mitmproxy connects to request.host: make it the canonical form.
            flow.request.host = exchange.host
            target = EgressTarget(exchange.host, exchange.port)
            refusal = await self.gate.admit(exchange, target)
        else:
            refusal = await self._audited_refusal(exchange, refusal)
        if refusal is not None:
            flow.response = _refusal_response(refusal, exchange.request_id)
            return
        assert exchange.address is not None
        self._tunnels[flow.client_conn.id] = _Tunnel(
            exchange, exchange.intercept, exchange.address
        )
        self._pin(flow.client_conn, exchange)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        tunnel = self._tunnels.get(nextlayer.context.client.id)
        if tunnel is not None and not tunnel.intercept:
            # Relayed as bytes, TLS untouched; a flow so the bytes are counted.
            nextlayer.layer = TCPLayer(nextlayer.context)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        tunnel = self._tunnels.get(flow.client_conn.id)
        if tunnel is None or tunnel.intercept:
            # Raw bytes where the policy must see requests (or no decision).
            _cut(flow.client_conn, flow.server_conn)
            return
        tunnel.flow = flow

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        tunnel = self._tunnels.get(flow.client_conn.id)
        message = flow.messages[-1]
        # Only counts are kept; the bytes themselves are forwarded, not stored.
        flow.messages.clear()
        if tunnel is None:
            message.content = b""
            return
        exchange = tunnel.exchange
        if not message.from_client:
            exchange.bytes_in += len(message.content)
            return
        cut = exchange.cut or self.gate.count_out(exchange, len(message.content))
        if cut is not None:
            message.content = b""
            self._cut_exchange(exchange, cut, flow.client_conn, flow.server_conn)

    async def tcp_end(self, flow: tcp.TCPFlow) -> None:
        tunnel = self._tunnels.get(flow.client_conn.id)
        if tunnel is not None:
            await self.gate.recorder.end(tunnel.exchange)

    async def tcp_error(self, flow: tcp.TCPFlow) -> None:
        await self.tcp_end(flow)

    # HTTP requests: plain http:// through the proxy, or inside a tunnel

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        tunnel = self._tunnels.get(flow.client_conn.id)
        request = flow.request
        if tunnel is not None:
            exchange = _exchange(flow, tunnel.exchange.host, tunnel.exchange.port)
            refusal = _tunnel_mismatch(flow, exchange)
        else:
            exchange = _exchange(flow, request.host, request.port)
            refusal = _host_problem(exchange, request.host) or _plain_only(request)
        exchange.scheme, exchange.method = request.scheme, request.method
        exchange.path = request.path
        refusal = refusal or _authority_mismatch(flow, exchange)
        if refusal is None:
            try:
                exchange.path = normalize_target(request.path).path
            except RequestPathError as exc:
                refusal = Refusal(400, f"path refused: {exc}")
        if refusal is None:
            refusal = await self._admit_request(flow, exchange, tunnel)
        else:
            refusal = await self._audited_refusal(exchange, refusal)
        if refusal is not None:
            flow.response = _refusal_response(refusal, exchange.request_id)
            return
        self._forward(flow, exchange, tunnel)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange = flow.metadata.get(_EXCHANGE)
        response = flow.response
        if not isinstance(exchange, Exchange) or response is None:
            return
        exchange.status = response.status_code

        def count_in(chunk: bytes) -> bytes:
            exchange.bytes_in += len(chunk)
            return chunk

        # Streamed, never buffered: downloads may be large.
        response.stream = count_in

    async def response(self, flow: http.HTTPFlow) -> None:
        exchange = flow.metadata.get(_EXCHANGE)
        if isinstance(exchange, Exchange) and flow.websocket is None:
            await self.gate.recorder.end(exchange)

    async def error(self, flow: http.HTTPFlow) -> None:
        exchange = flow.metadata.get(_EXCHANGE)
        if isinstance(exchange, Exchange):
            await self.gate.recorder.end(exchange)

    # WebSockets, after an allowed upgrade

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        exchange = flow.metadata.get(_EXCHANGE)
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        flow.websocket.messages.clear()
        if not isinstance(exchange, Exchange):
            message.drop()  # type: ignore[no-untyped-call]
            return
        if not message.from_client:
            exchange.bytes_in += len(message.content)
            return
        cut = exchange.cut or self.gate.count_out(exchange, len(message.content))
        if cut is not None:
            message.drop()  # type: ignore[no-untyped-call]
            self._cut_exchange(exchange, cut, flow.client_conn, flow.server_conn)

    async def websocket_end(self, flow: http.HTTPFlow) -> None:
        exchange = flow.metadata.get(_EXCHANGE)
        if isinstance(exchange, Exchange):
            await self.gate.recorder.end(exchange)

    # Upstream connections

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Connect to the checked address, never to a fresh lookup of the name.

        The connection keeps the address afterwards, so later requests to the
        same destination match it and reuse it.
        """
        server = data.server
        assert server.address is not None
        name, port = str(server.address[0]), int(server.address[1])
        pins = self._pins.get(data.client.id, {})
        address = _pinned(pins, name, port)
        if address is None:
            server.error = f"no egress decision allows connecting to {name}:{port}"
            log.warning("refused an undecided upstream connection to %s:%s", name, port)
            return
        if server.sni is None and parse_ip_literal(name) is None:
            server.sni = name
        server.address = (str(address), port)

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnels.pop(client.id, None)
        self._pins.pop(client.id, None)

    # Helpers

    async def _admit_request(
        self, flow: http.HTTPFlow, exchange: Exchange, tunnel: _Tunnel | None
    ) -> Refusal | None:
        target = EgressTarget(
            exchange.host,
            exchange.port,
            exchange.scheme,
            exchange.method,
            exchange.path,
            # Checked by normalize_target along with the path.
            query=flow.request.path.partition("?")[2],
            headers=_header_pairs(flow.request),
        )
        return await self.gate.admit(
            exchange,
            target,
            pinned=[tunnel.address] if tunnel is not None else [],
            announced=_announced_length(flow.request),
        )

    def _pin(self, client: connection.Client, exchange: Exchange) -> None:
        assert exchange.address is not None
        pins = self._pins.setdefault(client.id, {})
        pins[(exchange.host, exchange.port)] = exchange.address

    def _forward(
        self, flow: http.HTTPFlow, exchange: Exchange, tunnel: _Tunnel | None
    ) -> None:
        self._pin(flow.client_conn, exchange)
        if tunnel is None:
            # Aim the upstream connection at the checked address; the Host
            # header stays. Then connections to one destination are reused.
            flow.request.data.host = str(exchange.address)
        flow.metadata[_EXCHANGE] = exchange

        def count_out(chunk: bytes) -> bytes:
            if not chunk:
                return chunk
            cut = exchange.cut or self.gate.count_out(exchange, len(chunk))
            if cut is None:
                return chunk
            self._cut_exchange(exchange, cut, flow.client_conn, flow.server_conn)
            return b""

        # Streamed, never buffered, and counted before each chunk leaves.
        flow.request.stream = count_out

    async def _audited_refusal(self, exchange: Exchange, refusal: Refusal) -> Refusal:
        """A refusal made before the policy was asked, audited like a decision."""
        exchange.reason = refusal.reason
        exchange.status = refusal.status
        if not await self.gate.recorder.decision(exchange):
            return Refusal(503, "the audit log cannot be written")
        return refusal

    def _cut_exchange(
        self,
        exchange: Exchange,
        reason: str,
        client: connection.Client,
        server: connection.Server,
    ) -> None:
        if exchange.cut is None:
            exchange.cut = reason
            log.warning("cut egress %s: %s", exchange.request_id, reason)
        _cut(client, server)


def _exchange(flow: http.HTTPFlow | tcp.TCPFlow, host: str, port: int) -> Exchange:
    peer = flow.client_conn.peername
    return Exchange(source=str(peer[0]) if peer else "", host=host, port=port)


def _pinned(
    pins: dict[tuple[str, int], IPAddress], host: str, port: int
) -> IPAddress | None:
    """The checked address for ``host:port``; an address must itself be one."""
    try:
        name = canonical_host(host)
    except ValueError:
        return None
    if (name, port) in pins:
        return pins[(name, port)]
    literal = parse_ip_literal(name)
    checked = {address for (_, pin_port), address in pins.items() if pin_port == port}
    return literal if literal in checked else None


def _host_problem(exchange: Exchange, raw: str) -> Refusal | None:
    try:
        exchange.host = canonical_host(raw)
    except ValueError as exc:
        return Refusal(400, str(exc))
    return None


def _plain_only(request: http.Request) -> Refusal | None:
    if request.scheme == "http":
        return None
    return Refusal(400, f"send {request.scheme}:// requests through CONNECT")


def _tunnel_mismatch(flow: http.HTTPFlow, exchange: Exchange) -> Refusal | None:
    """Inside an intercepted tunnel, TLS must name the host CONNECT named."""
    sni = flow.client_conn.sni
    if sni is None:
        return None
    try:
        same = canonical_host(sni) == exchange.host
    except ValueError:
        same = False
    if same:
        return None
    return Refusal(
        403,
        f"TLS server name {sni!r} differs from the CONNECT target "
        f"{exchange.destination}",
    )


def _authority_mismatch(flow: http.HTTPFlow, exchange: Exchange) -> Refusal | None:
    """The Host header must name the destination the decision is about."""
    header = flow.request.host_header
    if header is None:
        return None
    default_port = _DEFAULT_PORTS.get(exchange.scheme or "", exchange.port)
    try:
        host, port = _split_authority(header)
        same = canonical_host(host) == exchange.host and (
            (port or default_port) == exchange.port
        )
    except ValueError:
        same = False
    if same:
        return None
    return Refusal(
        403,
        f"Host header {header!r} differs from the destination {exchange.destination}",
    )


def _split_authority(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"malformed authority {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"malformed port in {text!r}")
    return host, int(port_text)


def _header_pairs(request: http.Request) -> tuple[tuple[str, str], ...]:
    pairs = request.headers.items(multi=True)  # type: ignore[no-untyped-call]
    return tuple(pairs)


def _announced_length(request: http.Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    return int(value) if value.strip().isdigit() else None


def _refusal_response(refusal: Refusal, request_id: str) -> http.Response:
    body = {
        "error": _ERROR_NAMES.get(refusal.status, "forbidden"),
        "reason": refusal.reason,
        "request_id": request_id,
    }
    return http.Response.make(
        refusal.status,
        json.dumps(body),
        {
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            "Connection": "close",
            REQUEST_ID_HEADER: request_id,
        },
    )


def _cut(*connections: connection.Connection) -> None:
    """Drop connections at once: whatever is still buffered never leaves."""
    proxyserver = ctx.master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
    handler = proxyserver.connections.get(connections[0].id) if proxyserver else None
    if handler is None:
        return
    for conn in connections:
        io = handler.transports.get(conn)
        if io is not None and isinstance(io.writer, asyncio.StreamWriter):
            io.writer.transport.abort()
