"""An app in a network namespace has no way out but the egress proxy.

The namespace gets one veth link to the host and no default route, as an
enclave gets only its vsock bridge. From inside, the origin on the host's
loopback cannot be reached directly; through the proxy on the host end of
the link, the policy decides. Only loopback and the namespace's own /30
carry traffic. Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.egress.proxy import EgressConfig
from tests.support import (
    Origin,
    RecordingApp,
    StaticResolver,
    TokenFactory,
    egress_records,
    running_origins,
    running_sandbox,
    write_policy,
)

# Run inside the namespace: stdlib only, one JSON line of outcomes.
CLIENT = r"""
import json, socket, sys, urllib.error, urllib.request

proxy, origin_port = sys.argv[1], int(sys.argv[2])
outcome = {}

def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__

outcome["direct_origin"] = direct("127.0.0.4", origin_port)
outcome["direct_host_end"] = direct(sys.argv[3], origin_port)
# No default route: refused by the namespace's own stack, nothing is sent.
outcome["direct_outside"] = direct("192.0.2.1", 80)

opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
for name in ("allowed.example", "denied.example"):
    try:
        with opener.open(f"http://{name}:{origin_port}/from-ns", timeout=10) as reply:
            outcome[name] = [reply.status, json.loads(reply.read())["origin"]]
    except urllib.error.HTTPError as exc:
        outcome[name] = [exc.code, json.loads(exc.read())["reason"]]
print(json.dumps(outcome))
"""


@dataclass
class Namespace:
    name: str
    host_address: str
    inside_address: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)  # noqa: S607


def _can_make_namespaces() -> str | None:
    """Why this test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "needs the 'ip' command (iproute2)"
    probe = f"sbxprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"'ip netns add' failed: {exc.stderr.decode().strip()}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    reason = _can_make_namespaces()
    if reason is not None:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    subnet = secrets.randbelow(64) * 4
    ns = Namespace(f"sbx{tag}", f"10.231.0.{subnet + 1}", f"10.231.0.{subnet + 2}")
    host_end, inside_end = f"sbh{tag}", f"sbn{tag}"
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", inside_end)
        _ip("link", "set", inside_end, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_address}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        inside = ("netns", "exec", ns.name, "ip")
        _ip(*inside, "addr", "add", f"{ns.inside_address}/30", "dev", inside_end)
        _ip(*inside, "link", "set", inside_end, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield ns
    finally:
        # Deleting the namespace deletes its veth end, and with it the pair.
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)  # noqa: S607
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)  # noqa: S607


@pytest.fixture
async def proxied(
    namespace: Namespace,
    policy_dir: Path,
    tokens: TokenFactory,
    app: RecordingApp,
    tmp_path: Path,
) -> AsyncIterator[tuple[str, Origin, Path]]:
    origin = Origin("127.0.0.4", None, "host-origin")
    async with running_origins(origin):
        text = f"""\
egress:
  rules:
    - name: allowed
      hosts: [allowed.example]
      ports: [{origin.port}]
      allow_cidrs: [127.0.0.0/8]
"""
        policy = await asyncio.to_thread(write_policy, policy_dir, text, tokens.jwks)
        resolver = StaticResolver(
            {"allowed.example": ["127.0.0.4"], "denied.example": ["127.0.0.4"]}
        )
        egress = EgressConfig(listen=(namespace.host_address, 0), resolver=resolver)
        audit = tmp_path / "audit.jsonl"
        async with running_sandbox(policy, app.url, audit, egress=egress) as sandbox:
            assert sandbox.egress is not None
            yield sandbox.egress.url, origin, audit


async def test_namespace_reaches_the_outside_only_through_the_policy(
    namespace: Namespace, proxied: tuple[str, Origin, Path]
) -> None:
    proxy, origin, audit = proxied
    client = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        namespace.name,
        sys.executable,
        "-c",
        CLIENT,
        proxy,
        str(origin.port),
        namespace.host_address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(client.communicate(), 60)
    assert client.returncode == 0, stderr.decode()
    outcome = json.loads(stdout)

    assert outcome["direct_origin"] == "ConnectionRefusedError"
    assert outcome["direct_host_end"] == "ConnectionRefusedError"
    assert outcome["direct_outside"] == "OSError"  # ENETUNREACH
    assert outcome["allowed.example"] == [200, "host-origin"]
    assert outcome["denied.example"] == [
        403,
        f"no rule allows GET http://denied.example:{origin.port}/from-ns",
    ]
    assert [seen.path for seen in origin.seen] == ["/from-ns"]
    records = await asyncio.to_thread(egress_records, audit)
    assert [(r["host"], r["decision"], r["source"]) for r in records] == [
        ("allowed.example", "allow", namespace.inside_address),
        ("denied.example", "deny", namespace.inside_address),
    ]
