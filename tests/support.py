"""Test doubles that are real: a real app on loopback, real keys and tokens."""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from sandbox.identity.issue import generate_key, issue_token
from sandbox.ingress.upstream import UpstreamTimeouts
from sandbox.policy.loader import load_policy
from sandbox.policy.model import Policy
from sandbox.runner import RunOptions, Sandbox

ISSUER = "https://login.test.example"
AUDIENCE = "notes-summarizer"


class TokenFactory:
    """One ES256 issuer key, its JWKS, and tokens signed with it."""

    def __init__(self, algorithm: str = "ES256") -> None:
        self.private_key, self.jwks = generate_key(algorithm)

    def issue(self, subject: str = "alice", **claims: Any) -> str:
        options = {
            key: claims.pop(key)
            for key in ("expires_in", "not_before", "issuer", "audience", "now")
            if key in claims
        }
        return issue_token(
            self.private_key,
            issuer=options.pop("issuer", ISSUER),
            audience=options.pop("audience", AUDIENCE),
            subject=subject,
            claims=claims,
            **options,
        )

    def clinician(self, subject: str = "alice") -> str:
        return self.issue(subject, role="clinician", groups=["oncology", "staff"])


def write_policy(folder: Path, body: str, jwks: dict[str, Any]) -> Policy:
    """A policy.yaml with the test issuer, plus ``body`` (YAML, dedented)."""
    (folder / "keys").mkdir(exist_ok=True)
    (folder / "keys" / "test.jwks.json").write_text(json.dumps(jwks))
    header = textwrap.dedent(
        f"""\
        version: 1
        name: test-policy
        identity:
          leeway: 30s
          issuers:
            - issuer: {ISSUER}
              audiences: [{AUDIENCE}]
              algorithms: [ES256, RS256]
              jwks: keys/test.jwks.json
        """
    )
    (folder / "policy.yaml").write_text(header + textwrap.dedent(body))
    return load_policy(folder)


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDict[str]
    body_length: int
    peer: tuple[str, int] | None = None


@dataclass
class RecordingApp:
    """The vendor app: remembers every request it saw, never buffers bodies."""

    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    release_second_event: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/sse", self._sse)
        app.router.add_route("*", "/slow", self._slow)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Seen:
        length = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            length += len(chunk)
        peer = (
            request.transport.get_extra_info("peername") if request.transport else None
        )
        seen = Seen(
            request.method, request.raw_path, CIMultiDict(request.headers), length, peer
        )
        self.seen.append(seen)
        return seen

    async def _echo(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        return web.json_response(
            {"path": seen.path, "body_length": seen.body_length, "app": "yes"},
            headers={
                "X-App": "recording",
                "Connection": "X-Hop",
                "X-Hop": "must not pass",
            },
        )

    async def _slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(float(request.query.get("seconds", "5")))
        return web.json_response({"slow": True})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        # The second event is sent only once the client has seen the first,
        # which proves the proxy does not hold the stream back.
        await asyncio.wait_for(self.release_second_event.wait(), 10)
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response


@asynccontextmanager
async def running_sandbox(
    policy: Policy, upstream: str, audit_path: Path, **options: Any
) -> AsyncIterator[Sandbox]:
    sandbox = Sandbox(
        policy,
        RunOptions(
            upstream=upstream,
            listen=("127.0.0.1", 0),
            admin_listen=("127.0.0.1", 0),
            audit_path=str(audit_path),
            timeouts=options.pop("timeouts", UpstreamTimeouts()),
            **options,
        ),
    )
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.stop()


async def wait_ready(
    readyz: str, process: asyncio.subprocess.Process, seconds: float = 20
) -> None:
    """Until the sandbox ``process`` answers 200 on its ``readyz`` URL; fails
    at once should the process exit first."""
    async with aiohttp.ClientSession() as session:
        for _ in range(int(seconds * 10)):
            assert process.returncode is None, "the sandbox exited early"
            try:
                async with session.get(readyz) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the sandbox never became ready at {readyz}")


def audit_records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [
        record for line in lines if (record := json.loads(line))["event"] == "decision"
    ]


# Egress: origins on loopback names, a resolver the test controls, a client.
# (Imported here, not above, so the ingress part of this module reads alone.)

import ipaddress  # noqa: E402
import ssl  # noqa: E402

import trustme  # noqa: E402
from yarl import URL  # noqa: E402


class StaticResolver:
    """Answers only what the test wrote down; remembers every question."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int) -> list[Any]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"test resolver knows no {host!r}")
        return [ipaddress.ip_address(text) for text in self.answers[host]]


@dataclass
class Origin:
    """An origin server on one loopback address, plain or TLS (trustme)."""

    host: str
    tls: ssl.SSLContext | None = None
    name: str = "origin"
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=0)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _echo(self, request: web.Request) -> web.Response:
        length = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            length += len(chunk)
        self.seen.append(
            Seen(request.method, request.raw_path, CIMultiDict(request.headers), length)
        )
        return web.json_response(
            {"origin": self.name, "path": request.raw_path, "body_length": length}
        )

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            await socket_.send_str(f"echo:{message.data}")
        return socket_


@asynccontextmanager
async def running_origins(*origins: Origin) -> AsyncIterator[tuple[Origin, ...]]:
    for origin in origins:
        await origin.start()
    try:
        yield origins
    finally:
        for origin in origins:
            await origin.stop()


def egress_records(path: Path, event: str = "decision") -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [
        record
        for line in lines
        if (record := json.loads(line))["event"] == event
        and record.get("direction") == "egress"
    ]


async def raw_connect(
    proxy_url: str, authority: str, host_header: str | None = None
) -> tuple[int, bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send ``CONNECT authority`` byte for byte; status, body, and the stream."""
    proxy = URL(proxy_url)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {host_header or authority}\r\n\r\n"
    writer.write(head.encode())
    status, body = await read_response(reader)
    return status, body, reader, writer


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response head, and its body when it has a Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    return status, body


def client_tls(*cas: trustme.CA | Path) -> ssl.SSLContext:
    """A client context trusting exactly these CAs (trustme, or PEM files)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ca in cas:
        if isinstance(ca, Path):
            context.load_verify_locations(cafile=str(ca))
        else:
            ca.configure_trust(context)
    return context


def free_port() -> int:
    """A port nothing listens on right now (a test binds it soon after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def origin_tls(
    folder: Path, names: Sequence[str]
) -> tuple[trustme.CA, ssl.SSLContext, Path]:
    """A CA for test origins, a server context for ``names``, the CA's file."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(server_tls)
    ca_file = folder / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca, server_tls, ca_file


@dataclass
class EgressView:
    """A running sandbox seen from its egress side: where the app is sent."""

    sandbox: Sandbox

    @property
    def proxy(self) -> str:
        assert self.sandbox.egress is not None
        return self.sandbox.egress.url

    @property
    def sandbox_ca(self) -> Path:
        assert self.sandbox.egress is not None and self.sandbox.egress.files
        return self.sandbox.egress.files.ca_cert

    def decisions(self) -> list[dict[str, Any]]:
        return egress_records(self.sandbox.audit_path)

    def ends(self) -> list[dict[str, Any]]:
        return egress_records(self.sandbox.audit_path, "egress_end")


async def fetch_through(
    proxy: str, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    """One request through the egress proxy: status, and JSON or raw body."""
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, url, proxy=proxy, **kwargs) as response,
    ):
        body = await response.read()
        if response.content_type == "application/json":
            return response.status, json.loads(body)
        return response.status, body


# Real attestation evidence lives beside the checkout, read in place, never
# copied into the project; tests that need it skip, saying why, without it.
VECTORS = Path(__file__).resolve().parents[1].parent / "shared/testvectors/attestation"
needs_vectors = pytest.mark.skipif(
    not VECTORS.is_dir(), reason=f"real attestation vectors absent: {VECTORS}"
)
