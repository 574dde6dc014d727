"""``python -m sandbox.demo``: the whole ingress story on loopback, in one go.

Copies the example policy into a temporary folder with a freshly made
issuer key (the example's published keys have no private half here) and an
egress section naming two stand-ins for the outside world on loopback: a
model registry it allows and a paste site it does not. Runs ``sandbox run``
with the simulated attestation provider in front of the demo app; a client
verifies the evidence, the policy hash and the TLS channel, then makes an
allowed call and refused ones over that pinned channel; the app reaches
out; the audit records are printed and the chain verified; then all stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sandbox.client import AttestedClient, Expectations
from sandbox.identity.issue import generate_key, issue_token

EXAMPLE = Path("policies/acme-clinical-notes")
ISSUER = "https://login.acme-hospital.example"
AUDIENCE = "notes-summarizer"
NOTE = (
    "Patient reports fatigue for three weeks. Oncology follow-up shows the "
    "tumour marker falling after the second cycle. Blood pressure is normal. "
    "Continue the current oncology plan and review the marker in four weeks."
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# The outside world of the demo lives on loopback, which egress refuses by
# default; this rule opens exactly the registry's address and port.
DEMO_EGRESS = """\
egress:
  default: deny
  rules:
    - name: model-registry
      hosts: ["127.0.0.1"]
      ports: [{registry_port}]
      allow_cidrs: [127.0.0.1/32]
"""


def _prepare_policy(
    example: Path, workdir: Path, registry_port: int
) -> tuple[Path, bytes]:
    policy = workdir / "policy"
    shutil.copytree(example, policy)
    private_key, jwks = generate_key("ES256")
    (policy / "keys" / "acme.jwks.json").write_text(json.dumps(jwks, indent=2) + "\n")
    text = (policy / "policy.yaml").read_text()
    head, _, rest = text.partition("egress:")
    _, _, tail = rest.partition("audit:")
    egress = DEMO_EGRESS.format(registry_port=registry_port)
    (policy / "policy.yaml").write_text(f"{head}{egress}audit:{tail}")
    return policy, private_key


async def _outside_world() -> tuple[web.AppRunner, int, int]:
    """A model registry and a paste site, both on 127.0.0.1."""

    async def weights(_: web.Request) -> web.Response:
        return web.Response(body=b"\0" * 4096)

    async def upload(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="stored, thank you")

    app = web.Application()
    app.router.add_get("/weights/{model}", weights)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    registry, paste = _free_port(), _free_port()
    for port in (registry, paste):
        await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, registry, paste


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _wait_ready(admin: str, sandbox: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            if sandbox.returncode is not None:
                raise SystemExit(f"sandbox run exited early ({sandbox.returncode})")
            try:
                async with session.get(f"{admin}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the sandbox did not become ready within 10 s")


async def _call(
    client: AttestedClient,
    label: str,
    method: str,
    path: str,
    token: str | None = None,
    body: str | None = None,
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.request(method, path, headers=headers, data=body) as response:
        _say(f"-> {label}: {method} {path}")
        if response.status == 200 and response.content_type == "text/event-stream":
            _say("   200, the app streams its answer:")
            async for line in response.content:
                if line.strip():
                    _say(f"     {line.decode().rstrip()}")
            return
        payload: Any = await response.json()
        if "reason" in payload:
            _say(f"   {response.status} {payload['error']} - {payload['reason']}")
        elif "copy_to_paste_site" in payload:
            _show_outside_calls(payload)
        else:
            _say(f"   {response.status} - the app answered {payload}")


async def _verify(base: str, policy_hash: str) -> AttestedClient:
    """What a client does first: check code, rules and channel, then pin it."""
    expect = Expectations(policy_hash=policy_hash, allow_simulated=True)
    client = await AttestedClient.connect(base, expect)
    report = client.report
    _say(f"Client verified {base} before sending anything:")
    for check in report.checks:
        if check.name in (
            "TLS certificate",
            "policy bundle",
            "signature",
            "nonce",
            "public_key",
        ) or check.name.startswith("policy:"):
            _say(f"   \u2713 {check.name}: {check.detail[:90]}")
    _say(
        f"   ({len(report.checks)} checks passed; evidence from the {report.provider} "
        "provider, development only)"
    )
    _say(
        f"   channel pinned to certificate sha256:{report.certificate_sha256[:16]}...\n"
    )
    return client


def _show_outside_calls(payload: dict[str, Any]) -> None:
    weights, leak = payload["weights"], payload["copy_to_paste_site"]
    _say(
        f"   the app fetched model weights from the registry: {weights['status']} "
        f"({weights['bytes']} bytes)"
    )
    try:
        reason = json.loads(leak["answer"])["reason"]
    except (ValueError, KeyError):
        reason = leak["answer"]
    _say(f"   the app's copy of the note to a paste site: {leak['status']} - {reason}")
    bypass = payload["bypassing_proxy"]
    if bypass.endswith("Permission denied"):
        bypass += " (the kernel's answer: the app is confined to the egress proxy)"
    elif bypass.endswith("Connection refused"):
        bypass += " (nothing listens there in the app's own network namespace)"
    elif bypass.endswith("took the note"):
        bypass += " (this kernel cannot confine the app: see the warning above)"
    _say(f"   the same copy, bypassing the proxy: {bypass}")


async def _walk_through(client: AttestedClient, private_key: bytes) -> None:
    def token(subject: str, **claims: Any) -> str:
        return issue_token(
            private_key,
            issuer=ISSUER,
            audience=AUDIENCE,
            subject=subject,
            claims=claims,
            expires_in=600,
        )

    clinician = token("dr-alice", role="clinician", groups=["oncology"])
    intern = token("bob-intern", role="intern", groups=["oncology"])
    async with client:
        await _call(client, "anyone may check health", "GET", "/healthz")
        await _call(
            client,
            "an oncology clinician summarises a note",
            "POST",
            "/v1/summarize",
            clinician,
            NOTE,
        )
        await _call(client, "no token", "POST", "/v1/summarize", None, NOTE)
        await _call(
            client,
            "a role the policy refuses",
            "POST",
            "/v1/summarize",
            intern,
            NOTE,
        )
        await _call(
            client,
            "the admin area, even for a clinician",
            "GET",
            "/admin/users",
            clinician,
        )
        await _call(client, "a path trick", "GET", "/v1/%2e%2e/admin/users", clinician)
        await _call(
            client,
            "the app reaches out: model weights, then a copy of the note",
            "POST",
            "/v1/models/m1/predict",
            clinician,
            NOTE,
        )


def _show_audit(audit: Path) -> None:
    _say("\nAudit trail (one hash-chained record per decision):")
    for line in audit.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") != "decision":
            continue
        if record.get("direction") == "egress":
            what = f"app -> {record['host']}:{record['port']}{record.get('path') or ''}"
        else:
            what = f"{record['path']} by {record.get('sub') or 'anonymous'}"
        _say(
            f"  #{record['seq']:<2} {record['direction']:7} {record['decision']:5} "
            f"{record.get('status') or '-':>3} {record.get('method') or 'CONNECT'} "
            f"{what} [rule {record['rule']}]"
        )


async def _run(example: Path, keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-demo-"))
    outside, registry_port, paste_port = await _outside_world()
    policy, private_key = _prepare_policy(example, workdir, registry_port)
    audit = workdir / "audit.jsonl"
    app_port, port, admin_port = _free_port(), _free_port(), _free_port()
    command = [
        sys.executable,
        "-m",
        "sandbox",
        "--log-level",
        "WARNING",
        "run",
        "--policy",
        str(policy),
        "--upstream",
        f"http://127.0.0.1:{app_port}",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--audit-log",
        str(audit),
        "--egress-listen",
        "127.0.0.1:0",
        "--attestation",
        "simulated",
        "--",
        sys.executable,
        "-m",
        "sandbox.demo.app",
        "--port",
        str(app_port),
        "--registry",
        f"http://127.0.0.1:{registry_port}",
        "--paste",
        f"http://127.0.0.1:{paste_port}",
    ]
    _say(f"Policy {policy} (a copy of {example} with a fresh demo issuer key)")
    hash_output = await _output(
        sys.executable, "-m", "sandbox", "policy", "hash", str(policy)
    )
    _say(f"Policy hash: {hash_output.strip()}")
    _say(f"Starting: sandbox run ... -- demo app on 127.0.0.1:{app_port}\n")
    sandbox = await asyncio.create_subprocess_exec(*command)
    try:
        await _wait_ready(f"http://127.0.0.1:{admin_port}", sandbox)
        client = await _verify(f"https://127.0.0.1:{port}", hash_output.strip())
        await _walk_through(client, private_key)
    finally:
        if sandbox.returncode is None:
            sandbox.send_signal(signal.SIGTERM)
        status = await sandbox.wait()
        await outside.cleanup()
    _show_audit(audit)
    verdict = await _output(
        sys.executable, "-m", "sandbox", "audit", "verify", str(audit)
    )
    _say(f"\nsandbox audit verify: {verdict.strip()}")
    _say(f"sandbox run stopped on SIGTERM with status {status}")
    if not keep:
        shutil.rmtree(workdir)
    return status


async def _output(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode})")
    return stdout.decode()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__)
    parser.add_argument(
        "--policy", type=Path, default=EXAMPLE, help="example policy folder"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if not (args.policy / "policy.yaml").is_file():
        parser.error(
            f"{args.policy}/policy.yaml not found; run from the checkout's root"
        )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(_run(args.policy, args.keep))


if __name__ == "__main__":
    sys.exit(main())
