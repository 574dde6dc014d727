"""``sandbox run`` as a real process: the app as its child, signals, memory."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandbox.confine.plan import unsupported_reason
from sandbox.errors import PolicyError
from tests.support import TokenFactory, free_port, wait_ready, write_policy

POLICY = """\
ingress:
  rules:
    - name: health
      methods: [GET]
      paths: [/healthz, /slow]
      anonymous: true
    - name: uploads
      methods: [PUT]
      paths: [/sink]
    - name: crash
      methods: [POST]
      paths: [/exit]
      anonymous: true
"""
APP = [sys.executable, "-m", "tests.apps.upstream_app"]
ROOT = Path(__file__).resolve().parent.parent


class SandboxProcess:
    def __init__(
        self, process: asyncio.subprocess.Process, port: int, admin: int, log: Path
    ) -> None:
        self.log = log
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin}"

    async def wait_ready(self) -> None:
        await wait_ready(self.admin + "/readyz", self.process)

    def peak_memory_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1])


@pytest.fixture
def policy_path(policy_dir: Path, tokens: TokenFactory) -> Path:
    write_policy(policy_dir, POLICY, tokens.jwks)
    return policy_dir


@pytest.fixture
def sandbox_command(policy_path: Path, tmp_path: Path) -> Any:
    def build(app_port: int, port: int, admin: int, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sandbox",
            "run",
            "--policy",
            str(policy_path),
            "--upstream",
            f"http://127.0.0.1:{app_port}",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--audit-log",
            str(tmp_path / "audit.jsonl"),
            # Any free port: tests may run beside another sandbox.
            "--egress-listen",
            "127.0.0.1:0",
            *extra,
            "--",
            *APP,
            "--port",
            str(app_port),
        ]

    return build


@pytest.fixture
async def running(
    sandbox_command: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[SandboxProcess]:
    """``sandbox run`` with the test app; more flags by indirect parameter."""
    port, admin = free_port(), free_port()
    extra = getattr(request, "param", ())
    # A file, not a pipe: an unread pipe fills up and blocks the sandbox.
    with (tmp_path / "stderr.log").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *sandbox_command(free_port(), port, admin, *extra),
            cwd=ROOT,
            stderr=stderr,
        )
    sandbox = SandboxProcess(process, port, admin, tmp_path / "stderr.log")
    try:
        await sandbox.wait_ready()
        yield sandbox
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_drains_in_flight_requests_then_exits_zero(
    running: SandboxProcess,
) -> None:
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(
            session.get(running.url + "/slow?seconds=1.5")
        )
        await asyncio.sleep(0.5)
        running.process.send_signal(signal.SIGTERM)
        response = await asyncio.wait_for(in_flight, 10)
        body = await response.json()
        response.release()

    assert response.status == 200 and body == {"slow": True}
    assert await asyncio.wait_for(running.process.wait(), 15) == 0


async def test_app_death_stops_the_sandbox_with_a_non_zero_status(
    running: SandboxProcess,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(running.url + "/exit") as response,
    ):
        assert response.status == 200

    status = await asyncio.wait_for(running.process.wait(), 15)
    stderr = running.log.read_text()
    assert status == 3
    assert "the app exited with status 3" in stderr


async def app_network(running: SandboxProcess) -> str:
    """The network namespace of the app behind ``running``, seen through ingress."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(running.url + "/healthz") as response,
    ):
        assert response.status == 200
        pid = (await response.json())["pid"]
    return os.readlink(f"/proc/{pid}/ns/net")


@pytest.mark.skipif(
    os.geteuid() != 0 or unsupported_reason() is not None,
    reason="an isolated app needs root and a kernel that confines",
)
async def test_as_root_the_app_is_reached_in_a_network_of_its_own(
    running: SandboxProcess,
) -> None:
    assert await app_network(running) != os.readlink("/proc/self/ns/net")
    assert "network of its own (loopback only)" in running.log.read_text()


@pytest.mark.parametrize("running", [("--app-network", "shared")], indirect=True)
async def test_a_shared_app_network_is_the_sandboxs_own(
    running: SandboxProcess,
) -> None:
    assert await app_network(running) == os.readlink("/proc/self/ns/net")


async def test_one_gibibyte_upload_streams_with_flat_memory(
    running: SandboxProcess, tokens: TokenFactory
) -> None:
    chunk = b"\0" * (1 << 20)
    total = 1 << 30

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(chunk)):
            yield chunk

    headers = {"Authorization": f"Bearer {tokens.issue('uploader')}"}
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            running.url + "/sink",
            data=body(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=300),
        ) as response,
    ):
        result = await response.json()

    assert response.status == 200 and result == {"received": total}
    # The whole GiB went through; the proxy's peak resident memory stayed
    # that of an idle process plus a few buffers.
    assert running.peak_memory_kib() < 150 * 1024


def test_invalid_policy_refuses_to_start_with_the_reasons(
    policy_dir: Path, tokens: TokenFactory
) -> None:
    import subprocess

    body = "ingress:\n  rules:\n    - name: x\n      paths: [v1]\n"
    with pytest.raises(PolicyError):
        write_policy(policy_dir, body, tokens.jwks)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandbox",
            "run",
            "--policy",
            str(policy_dir),
            "--upstream",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    assert (
        "policy.yaml:13: ingress.rules[0].paths[0]: 'v1' is not a valid path"
        in result.stderr
    )


@pytest.mark.parametrize(
    "upstream", ["ftp://x", "http://127.0.0.1:8000/base", "unix:relative"]
)
def test_bad_upstream_is_a_usage_error(policy_path: Path, upstream: str) -> None:
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandbox",
            "run",
            "--policy",
            str(policy_path),
            "--upstream",
            upstream,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2 and "upstream" in result.stderr
