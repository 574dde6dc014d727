"""Test doubles that are real: a real app on loopback, real keys and tokens."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def audit_records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [
        record for line in lines if (record := json.loads(line))["event"] == "decision"
    ]
