"""The Nitro scripts: what the enclave and its parent would run.

``SANDBOX_DRY_RUN=1`` makes both print their commands instead of running them:
no enclave, vsock peer or socat is needed to check the wiring. entrypoint.sh
is run for real with a stand-in ``python`` that prints its arguments.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

IMAGE = Path(__file__).resolve().parent.parent / "enclave-image"
TWO_HOSTS = "models.example.com:443=8001 api.example.org:8443=8002"


def run_script(
    script: str, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(IMAGE / script), *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=10,
    )


def dry_run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_script(script, {"SANDBOX_DRY_RUN": "1", **env})


def test_enclave_bridges_ingress_and_each_destination() -> None:
    result = dry_run("nitro-entrypoint.sh", SANDBOX_EGRESS_BRIDGES=TWO_HOSTS)

    assert result.returncode == 0, result.stderr
    bridge, sandbox = result.stdout.splitlines()
    assert shlex.split(bridge) == [
        "python",
        "-m",
        "sandbox",
        "bridge",
        "--loopback-up",
        "--user",
        "65534:65534",
        "vsock:any:8443=tcp:127.0.0.1:8443",
        "tcp:127.0.0.10:443=vsock:3:8001",
        "tcp:127.0.0.11:8443=vsock:3:8002",
    ]
    assert shlex.split(sandbox) == [
        "exec",
        "env",
        "SANDBOX_ATTESTATION=nitro",
        "/usr/local/bin/sandbox-entrypoint",
        "--egress-host",
        "models.example.com=127.0.0.10",
        "--egress-host",
        "api.example.org=127.0.0.11",
    ]


def test_enclave_settings_override_the_defaults() -> None:
    result = dry_run(
        "nitro-entrypoint.sh",
        SANDBOX_VSOCK_INGRESS_PORT="9000",
        SANDBOX_ATTESTATION="simulated",
    )

    assert result.returncode == 0, result.stderr
    bridge, sandbox = result.stdout.splitlines()
    assert bridge.endswith(" vsock:any:9000=tcp:127.0.0.1:8443")
    assert "SANDBOX_ATTESTATION=simulated" in sandbox.split()
    assert "--egress-host" not in sandbox


@pytest.mark.parametrize(
    ("bridges", "message"),
    [
        ("models.example.com:443", "expected HOST:PORT=VSOCKPORT"),
        ("models.example.com=8001", "expected HOST:PORT=VSOCKPORT"),
        (":443=8001", "(HOST a DNS name)"),
        ("bad_name:443=8001", "(HOST a DNS name)"),
        ("a.example:0=8001", "expected PORT 1-65535 in 'a.example:0=8001', got '0'"),
        ("a.example:99999=8001", "expected PORT 1-65535"),
        ("a.example:443=x", "expected VSOCKPORT 1-4294967294"),
        ("a.example:443=1 a.example:80=2", "expected each HOST once"),
        ("a.example:443=1 b.example:443=1", "expected each VSOCKPORT once"),
        ("* a.example:443=1", "got '*'"),
    ],
)
def test_malformed_bridges_exit_2_saying_what_was_expected(
    bridges: str, message: str
) -> None:
    for script in ("nitro-entrypoint.sh", "nitro-parent.sh"):
        result = dry_run(script, SANDBOX_EGRESS_BRIDGES=bridges)

        assert result.returncode == 2, (script, result.stdout)
        assert message in result.stderr, (script, result.stderr)
        assert result.stdout == ""


def test_a_destination_on_the_egress_proxy_port_is_refused() -> None:
    # The confined app may connect to that port on any loopback address.
    result = dry_run(
        "nitro-entrypoint.sh",
        SANDBOX_EGRESS_BRIDGES="a.example:3128=8001",
    )

    assert result.returncode == 2
    assert "expected a PORT other than the egress proxy's (3128)" in result.stderr


def test_a_bad_ingress_port_exits_2() -> None:
    result = dry_run("nitro-entrypoint.sh", SANDBOX_VSOCK_INGRESS_PORT="08443")

    assert result.returncode == 2
    assert "SANDBOX_VSOCK_INGRESS_PORT: expected a vsock port" in result.stderr


def test_parent_relays_ingress_to_the_enclave_and_each_destination_out() -> None:
    result = dry_run("nitro-parent.sh", SANDBOX_EGRESS_BRIDGES=TWO_HOSTS)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "socat TCP-LISTEN:8443,fork,reuseaddr VSOCK-CONNECT:16:8443",
        "socat VSOCK-LISTEN:8001,fork,reuseaddr TCP:models.example.com:443",
        "socat VSOCK-LISTEN:8002,fork,reuseaddr TCP:api.example.org:8443",
    ]


def test_parent_settings_override_the_defaults() -> None:
    result = dry_run(
        "nitro-parent.sh",
        SANDBOX_PARENT_INGRESS_PORT="443",
        SANDBOX_ENCLAVE_CID="21",
        SANDBOX_VSOCK_INGRESS_PORT="9000",
    )

    assert result.stdout.splitlines() == [
        "socat TCP-LISTEN:443,fork,reuseaddr VSOCK-CONNECT:21:9000"
    ]


@pytest.fixture
def fake_python(tmp_path: Path) -> dict[str, str]:
    """A PATH whose ``python`` prints its arguments, one a line."""
    folder = tmp_path / "bin"
    folder.mkdir()
    python = folder / "python"
    python.write_text('#!/bin/sh\nfor word in "$@"; do echo "$word"; done\n')
    python.chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin"}


def run_entrypoint(
    path: dict[str, str], app_command: str, *args: str, **env: str
) -> list[str]:
    result = subprocess.run(
        ["/bin/sh", str(IMAGE / "entrypoint.sh"), *args],
        env={**path, "SANDBOX_APP_COMMAND": app_command, **env},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.splitlines()


def test_entrypoint_passes_extra_arguments_before_the_app_command(
    fake_python: dict[str, str],
) -> None:
    argv = run_entrypoint(fake_python, "app --port 8081", "--app-user", "10001:10001")

    assert argv[:3] == ["-m", "sandbox", "run"]
    assert argv[-6:] == ["--app-user", "10001:10001", "--", "app", "--port", "8081"]
    assert argv[argv.index("--policy") + 1] == "/policy"


def test_entrypoint_without_arguments_is_unchanged(
    fake_python: dict[str, str],
) -> None:
    argv = run_entrypoint(fake_python, "", SANDBOX_OPA_URL="http://opa:8181")

    assert argv == [
        "-m",
        "sandbox",
        "run",
        "--policy",
        "/policy",
        "--upstream",
        "http://127.0.0.1:8081",
        "--listen",
        "0.0.0.0:8443",
        "--admin-listen",
        "127.0.0.1:9901",
        "--egress-listen",
        "127.0.0.1:3128",
        "--attestation",
        "nitro",
        "--state-dir",
        "/var/lib/sandbox/state",
        "--audit-log",
        "/var/lib/sandbox/audit/decisions.jsonl",
        "--opa-url",
        "http://opa:8181",
    ]


def test_the_nitro_entrypoint_hands_its_flags_to_sandbox_run(
    fake_python: dict[str, str],
) -> None:
    planned = dry_run(
        "nitro-entrypoint.sh", SANDBOX_EGRESS_BRIDGES=TWO_HOSTS
    ).stdout.splitlines()[1]
    exec_, env, attestation, _entrypoint, *args = shlex.split(planned)
    name, _, value = attestation.partition("=")

    # The image's confined stage sets the app's user.
    env_vars = {name: value, "SANDBOX_APP_USER": "10001:10001"}
    argv = run_entrypoint(fake_python, "", *args, **env_vars)

    assert (exec_, env) == ("exec", "env")
    assert argv[argv.index("--attestation") + 1] == "nitro"
    assert argv[-6:] == [
        "--egress-host",
        "models.example.com=127.0.0.10",
        "--egress-host",
        "api.example.org=127.0.0.11",
        "--app-user",
        "10001:10001",
    ]
