"""The image's own files, laid out as its Dockerfile lays them out, run for real.

No Docker engine runs here. This test reads the Dockerfile's COPY, ARG and
ENV instructions for the builder and final stages, puts each copied file
under a temporary root, and starts the image's entrypoint there with the
image's environment: the sandbox it starts is the copy on the image's
PYTHONPATH, in front of the image's default app, with the image's policy.
Only what needs an engine stays out: the base image (this machine's Python
and the project's virtual environment stand in for /opt/venv), users, and
the absolute paths, which the entrypoint's settings move under the root.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509

from sandbox.client import AttestedClient, Expectations
from sandbox.egress.state import CA_NAME
from sandbox.policy.loader import load_policy
from tests.support import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "enclave-image" / "Dockerfile"
VENV = Path(sys.prefix)


def instructions(stage: str) -> list[list[str]]:
    """One stage's instructions, continuations joined, comments dropped."""
    text = DOCKERFILE.read_text()
    match = re.search(rf"^FROM \S+ AS {stage}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert match, f"no stage {stage!r} in the Dockerfile"
    joined = re.sub(r"\\\n\s*", " ", match.group(1))
    lines = (line.strip() for line in joined.splitlines())
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), ""), text)


def under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(
            source,
            target,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    else:
        shutil.copy2(source, target)


def lay_out(stage: str, root: Path, context: Path, variables: dict[str, str]) -> None:
    """Apply ``stage``'s ARG, ENV and COPY under ``root``; RUN steps are the
    engine's (the builder's venv is the project's own, linked in)."""
    for words in instructions(stage):
        keyword, *rest = words
        if keyword == "ARG":
            name, _, default = rest[0].partition("=")
            variables.setdefault(name, default)
        elif keyword == "ENV":
            for pair in rest:
                name, _, value = pair.partition("=")
                variables[name] = expand(value, variables)
        elif keyword == "COPY":
            sources, target = [w for w in rest if not w.startswith("--")][:-1], rest[-1]
            origin = context
            if any(w.startswith("--from=") for w in rest):
                origin = root.parent / "builder"
            for source in sources:
                copy(under(origin, expand(source, variables)), under(root, target))


@pytest.fixture
def image(
    tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Path, dict[str, str]]:
    """The final stage under ``tmp_path``; build arguments by indirect
    parameter, as ``docker build --build-arg`` gives them."""
    builder, final = tmp_path / "builder", tmp_path / "final"
    under(builder, "/opt").mkdir(parents=True)
    under(builder, "/opt/venv").symlink_to(VENV)
    lay_out("builder", builder, ROOT, {})
    build_args: dict[str, str] = getattr(request, "param", {})
    variables = {"PATH": os.environ["PATH"], **build_args}
    lay_out("final", final, ROOT, variables)
    return final, variables


def test_the_image_copies_what_its_entrypoint_needs(
    image: tuple[Path, dict[str, str]],
) -> None:
    root, variables = image

    assert (root / "opt/sandbox/sandbox/__main__.py").is_file()
    assert (root / "opt/sandbox/sandbox/policy/schema").is_dir()
    assert (root / "policy/policy.yaml").is_file()
    assert os.access(root / "usr/local/bin/sandbox-entrypoint", os.X_OK)
    assert variables["PYTHONPATH"] == "/opt/sandbox"
    assert variables["PATH"].startswith("/opt/venv/bin:")


def image_environment(root: Path, variables: dict[str, str]) -> dict[str, str]:
    """The image's ENV, its absolute paths moved under ``root``."""
    return {
        **os.environ,
        "PATH": f"{under(root, '/opt/venv/bin')}:{os.environ['PATH']}",
        "PYTHONPATH": str(under(root, variables["PYTHONPATH"])),
        "PYTHONDONTWRITEBYTECODE": variables["PYTHONDONTWRITEBYTECODE"],
        "SANDBOX_APP_COMMAND": variables["SANDBOX_APP_COMMAND"],
    }


def test_the_images_python_imports_the_copied_sandbox(
    image: tuple[Path, dict[str, str]],
) -> None:
    root, variables = image
    python = under(root, "/opt/venv/bin/python")

    located = subprocess.run(
        [str(python), "-c", "import sandbox; print(sandbox.__file__)"],
        env=image_environment(root, variables),
        cwd=root / "app",
        capture_output=True,
        text=True,
        check=True,
    )

    assert located.stdout.strip() == str(root / "opt/sandbox/sandbox/__init__.py")


@asynccontextmanager
async def started(
    image: tuple[Path, dict[str, str]], log: Path
) -> AsyncIterator[tuple[str, list[int]]]:
    """The image's entrypoint, run with the image's environment on free
    loopback ports; yields the ingress URL and, once it stopped, its status."""
    root, variables = image
    port, admin, app_port = free_port(), free_port(), free_port()
    env = image_environment(root, variables)
    # The image's app command, on a port free here.
    env["SANDBOX_APP_COMMAND"] = env["SANDBOX_APP_COMMAND"].replace(
        "8081", str(app_port)
    )
    env.update(
        SANDBOX_ATTESTATION="simulated",
        SANDBOX_POLICY=str(root / "policy"),
        SANDBOX_UPSTREAM=f"http://127.0.0.1:{app_port}",
        SANDBOX_LISTEN=f"127.0.0.1:{port}",
        SANDBOX_ADMIN_LISTEN=f"127.0.0.1:{admin}",
        SANDBOX_EGRESS_LISTEN="127.0.0.1:0",
        SANDBOX_STATE_DIR=str(root / "var/lib/sandbox/state"),
        SANDBOX_AUDIT_LOG=str(root / "var/lib/sandbox/audit/decisions.jsonl"),
        # As the compose stack sets it, for its app in another container.
        SANDBOX_EGRESS_APP_BUNDLE=str(root / "var/lib/sandbox/trust/bundle.pem"),
    )
    status: list[int] = []
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            str(root / "usr/local/bin/sandbox-entrypoint"),
            env=env,
            cwd=root / "app",
            stderr=output,
        )
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz", process)
        yield f"https://127.0.0.1:{port}", status
    finally:
        process.send_signal(signal.SIGTERM)
        status.append(await asyncio.wait_for(process.wait(), 30))


async def test_the_entrypoint_starts_the_sandbox_before_the_default_app(
    image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = image

    async with started(image, tmp_path / "run.log") as (url, status):
        verified = await asyncio.to_thread(_verify, url, root / "policy")

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verdict: VERIFIED (simulated)" in verified.stdout
    assert status == [0], (tmp_path / "run.log").read_text()
    assert (root / "var/lib/sandbox/audit/decisions.jsonl").stat().st_size > 0
    bundle = (root / "var/lib/sandbox/trust/bundle.pem").read_bytes()
    # The CA comes after the system roots (one of which cryptography warns of).
    start = bundle.rindex(b"-----BEGIN CERTIFICATE-----")
    last = x509.load_pem_x509_certificate(bundle[start:])
    names = last.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [name.value for name in names] == [CA_NAME]


VENDOR_APP = {
    "APP_DIR": "enclave-image/example-app",
    "APP_COMMAND": "python server.py --port 8081",
}


@pytest.mark.parametrize("image", [VENDOR_APP], indirect=True)
async def test_a_vendors_app_brought_by_app_dir_runs_behind_the_policy(
    image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = image
    policy = await asyncio.to_thread(load_policy, root / "policy")
    expect = Expectations(policy_hash=policy.hash, allow_simulated=True)

    async with (
        started(image, tmp_path / "run.log") as (url, _),
        await AttestedClient.connect(url, expect) as client,
    ):
        async with client.request("GET", "/healthz") as health:
            answer = await health.json()
        async with client.request("POST", "/v1/classify", data=b"chest pain") as post:
            refused = post.status

    assert (root / "app/server.py").is_file()
    assert answer == {"app": "example-triage", "status": "ok"}
    # The example policy has no rule for the vendor's route: default deny.
    assert refused == 403


def _verify(url: str, policy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "sandbox", "verify", url),
            *("--policy", str(policy), "--allow-simulated"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
