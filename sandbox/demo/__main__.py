"""``python -m sandbox.demo``: the whole ingress story on loopback, in one go.

Copies the example policy into a temporary folder with a freshly made
issuer key (the example's published keys have no private half here), runs
``sandbox run`` in front of the demo app, makes an allowed call and refused
ones, prints the audit records and verifies the chain, then stops.
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


def _prepare_policy(example: Path, workdir: Path) -> tuple[Path, bytes]:
    policy = workdir / "policy"
    shutil.copytree(example, policy)
    private_key, jwks = generate_key("ES256")
    (policy / "keys" / "acme.jwks.json").write_text(json.dumps(jwks, indent=2) + "\n")
    return policy, private_key


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
    session: aiohttp.ClientSession,
    base: str,
    label: str,
    method: str,
    path: str,
    token: str | None = None,
    body: str | None = None,
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(
        method, base + path, headers=headers, data=body
    ) as response:
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
        else:
            _say(f"   {response.status} - the app answered {payload}")


async def _walk_through(base: str, private_key: bytes) -> None:
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
    async with aiohttp.ClientSession() as session:
        await _call(session, base, "anyone may check health", "GET", "/healthz")
        await _call(
            session,
            base,
            "an oncology clinician summarises a note",
            "POST",
            "/v1/summarize",
            clinician,
            NOTE,
        )
        await _call(session, base, "no token", "POST", "/v1/summarize", None, NOTE)
        await _call(
            session,
            base,
            "a role the policy refuses",
            "POST",
            "/v1/summarize",
            intern,
            NOTE,
        )
        await _call(
            session,
            base,
            "the admin area, even for a clinician",
            "GET",
            "/admin/users",
            clinician,
        )
        await _call(
            session, base, "a path trick", "GET", "/v1/%2e%2e/admin/users", clinician
        )


def _show_audit(audit: Path) -> None:
    _say("\nAudit trail (one hash-chained record per decision):")
    for line in audit.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") != "decision":
            continue
        who = record.get("sub") or "anonymous"
        _say(
            f"  #{record['seq']} {record['decision']:5} {record['status']} "
            f"{record['method']} {record['path']} by {who} "
            f"[rule {record['rule']}] prev={record['prev'][:12]}..."
        )


async def _run(example: Path, keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-demo-"))
    policy, private_key = _prepare_policy(example, workdir)
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
        "--",
        sys.executable,
        "-m",
        "sandbox.demo.app",
        "--port",
        str(app_port),
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
        await _walk_through(f"http://127.0.0.1:{port}", private_key)
    finally:
        if sandbox.returncode is None:
            sandbox.send_signal(signal.SIGTERM)
        status = await sandbox.wait()
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
