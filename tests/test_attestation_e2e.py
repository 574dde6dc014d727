"""The attested channel end to end on loopback, with the simulated provider.

A real sandbox serves TLS with a key born at start; the real client fetches
evidence over that connection and pins it. A man in the middle with its own
key, a different policy, a replayed document and a missing opt-in to the
simulated root each fail with their own precise error.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from cryptography import x509

from sandbox.attestation.nitro_verify import NitroExpectations, verify_nitro_document
from sandbox.attestation.tsm import ConfigfsTsm
from sandbox.client import AttestedClient, Expectations
from sandbox.errors import BindingMismatchError, SimulatedRootError
from sandbox.ingress.wellknown import ATTESTATION_PATH
from sandbox.policy.model import Policy
from tests.attestation_doubles import FakeConfigfs
from tests.support import (
    RecordingApp,
    TokenFactory,
    free_port,
    running_sandbox,
    write_policy,
)

POLICY = """\
ingress:
  rules:
    - name: health
      methods: [GET]
      paths: [/healthz]
      anonymous: true
"""
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def policy(policy_dir: Path, tokens: TokenFactory) -> Policy:
    return write_policy(policy_dir, POLICY, tokens.jwks)


@pytest.fixture
async def sandbox(policy: Policy, app: RecordingApp, tmp_path: Path) -> Any:
    async with running_sandbox(
        policy, app.url, tmp_path / "audit.jsonl", attestation="simulated"
    ) as running:
        yield running


def https(sandbox: Any) -> str:
    url: str = sandbox.ingress_urls[0]
    assert url.startswith("https://")
    return url


async def test_client_verifies_then_talks_over_the_pinned_channel(
    sandbox: Any, policy: Policy, app: RecordingApp
) -> None:
    expect = Expectations(policy_hash=policy.hash, allow_simulated=True)

    client = await AttestedClient.connect(https(sandbox), expect)
    async with client, client.request("GET", "/healthz") as response:
        status = response.status

    assert status == 200 and app.seen[-1].path == "/healthz"
    names = [check.name for check in client.report.checks]
    assert client.report.policy_hash == policy.hash and client.report.simulated
    assert names[:2] == ["TLS certificate", "policy bundle"]
    assert all(check.passed for check in client.report.checks)


async def test_a_different_expected_policy_is_refused(sandbox: Any) -> None:
    expect = Expectations(policy_hash="sha256:" + "ab" * 32, allow_simulated=True)

    with pytest.raises(BindingMismatchError, match="the sandbox enforces sha256:"):
        await AttestedClient.connect(https(sandbox), expect)


async def test_simulated_evidence_needs_an_explicit_opt_in(
    sandbox: Any, policy: Policy
) -> None:
    with pytest.raises(SimulatedRootError, match="allow_simulated"):
        await AttestedClient.connect(https(sandbox), Expectations(policy.hash))


@pytest.fixture
async def man_in_the_middle(sandbox: Any) -> AsyncIterator[str]:
    """Terminates TLS with its own key and re-encrypts towards the sandbox."""
    own = trustme.CA().issue_cert("127.0.0.1")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    own.configure_cert(server_side)
    upstream = ssl.create_default_context()
    upstream.check_hostname = False
    upstream.verify_mode = ssl.CERT_NONE
    host, port = https(sandbox).removeprefix("https://").rsplit(":", 1)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        far_reader, far_writer = await asyncio.open_connection(
            host, int(port), ssl=upstream
        )

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter
        ) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(
            pump(reader, far_writer), pump(far_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=server_side)
    yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_a_man_in_the_middle_with_another_key_fails_the_channel_binding(
    man_in_the_middle: str, policy: Policy
) -> None:
    # The evidence is genuine and the policy right; only the key differs.
    expect = Expectations(policy_hash=policy.hash, allow_simulated=True)

    with pytest.raises(BindingMismatchError, match="public_key"):
        await AttestedClient.connect(man_in_the_middle, expect)


async def test_a_replayed_document_fails_on_its_old_nonce(
    sandbox: Any, policy: Policy
) -> None:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    old_nonce = secrets.token_bytes(32)
    url = f"{https(sandbox)}{ATTESTATION_PATH}?nonce={old_nonce.hex()}"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=insecure) as r:
        recorded = base64.b64decode((await r.json())["evidence"])
        root_url = https(sandbox) + "/.well-known/sandbox/simulated-root.pem"
    async with (
        aiohttp.ClientSession() as session,
        session.get(root_url, ssl=insecure) as r,
    ):
        root = x509.load_pem_x509_certificate(await r.read())

    with pytest.raises(BindingMismatchError, match="nonce"):
        verify_nitro_document(
            recorded,
            root=root,
            expect=NitroExpectations(nonce=secrets.token_bytes(32)),
            allow_simulated=True,
        )


async def test_nonce_is_checked_and_attestation_is_rate_limited(sandbox: Any) -> None:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    base = https(sandbox) + ATTESTATION_PATH
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "?nonce=abcd", ssl=insecure) as short:
            short_body = await short.json()
        statuses = []
        for _ in range(30):
            nonce = secrets.token_hex(32)
            async with session.get(f"{base}?nonce={nonce}", ssl=insecure) as response:
                statuses.append(response.status)
                retry_after = response.headers.get("Retry-After")

    assert short.status == 400 and "16 to 64 bytes" in short_body["reason"]
    assert statuses.count(200) >= 20 and statuses[-1] == 429
    assert retry_after is not None and int(retry_after) >= 1


def test_sandbox_verify_command_against_a_running_sandbox(
    policy_dir: Path, tokens: TokenFactory, tmp_path: Path
) -> None:
    write_policy(policy_dir, POLICY, tokens.jwks)
    port, admin = free_port(), free_port()
    app_port = free_port()
    with (tmp_path / "run.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox",
                "run",
                "--policy",
                str(policy_dir),
                "--upstream",
                f"http://127.0.0.1:{app_port}",
                "--listen",
                f"127.0.0.1:{port}",
                "--admin-listen",
                f"127.0.0.1:{admin}",
                "--audit-log",
                str(tmp_path / "a.jsonl"),
                "--attestation",
                "simulated",
                "--egress-listen",
                "127.0.0.1:0",
            ],
            cwd=ROOT,
            stderr=log,
        )
    try:
        _wait_for_port(port)
        good = _verify(port, "--policy", str(policy_dir), "--allow-simulated")
        wrong = _verify(port, "--policy", "sha256:" + "00" * 32, "--allow-simulated")
        unsure = _verify(port, "--policy", str(policy_dir))
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert good.returncode == 0, good.stdout + good.stderr
    assert "✓ policy bundle" in good.stdout and "verdict: VERIFIED" in good.stdout
    assert "✓ nonce" in good.stdout.replace("✓ Nonce", "✓ nonce")
    assert wrong.returncode == 1 and "verdict: REFUSED" in wrong.stdout
    assert unsure.returncode == 1 and "SimulatedRootError" in unsure.stdout


def _verify(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", "verify", f"https://127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


async def test_sandbox_verify_pins_the_sev_snp_launch_measurement(
    policy: Policy, app: RecordingApp, tmp_path: Path
) -> None:
    # The guest's device is the configfs-tsm double; the sandbox, the channel
    # and `sandbox verify` are real.
    measurement = bytes(range(48))
    base = tmp_path / "tsm" / "report"
    base.mkdir(parents=True)
    configfs = FakeConfigfs(
        base,
        measurement=measurement,
        host_data=bytes.fromhex(policy.hash.removeprefix("sha256:")),
    )
    options = {"source": ConfigfsTsm(configfs.base, configfs)}
    async with running_sandbox(
        policy,
        app.url,
        tmp_path / "audit.jsonl",
        attestation="sev-snp",
        attestation_options=options,
    ) as running:
        port = int(https(running).rsplit(":", 1)[1])
        # The double's AMD root is a development one: hence --allow-simulated.
        pinned = ("--policy", policy.hash, "--allow-simulated")
        good, wrong, short = [
            await asyncio.to_thread(_verify, port, "--measurement", value, *pinned)
            for value in (measurement.hex(), "00" * 48, "abcd")
        ]

    assert good.returncode == 0, good.stdout + good.stderr
    assert f"✓ MEASUREMENT: {measurement.hex()}\n" in good.stdout
    assert wrong.returncode == 1 and "MeasurementMismatchError" in wrong.stdout
    assert short.returncode == 2 and "96 hex digits (48 bytes)" in short.stderr
