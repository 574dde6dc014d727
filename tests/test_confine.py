"""The confined app: the kernel, not the app's goodwill, keeps it behind egress."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.confine import seccomp
from sandbox.confine.plan import (
    ConfineOptions,
    ConfinePlan,
    check_boundary,
    check_supported,
    launcher_command,
    plan_for,
)
from sandbox.errors import ConfinementError
from sandbox.users import UserIds
from tests.confinement import (
    ALWAYS_ALLOWED,
    ALWAYS_REFUSED,
    EGRESS_POLICY,
    PROBE,
    ROOT,
    launcher,
    needs_confinement,
    needs_root,
    run,
    run_sandboxed_probe,
    sandbox_run,
)
from tests.support import (
    Origin,
    TokenFactory,
    egress_records,
    free_port,
    running_origins,
    write_policy,
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can write to (pytest's tmp_path is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="sandbox-confine-"))
    directory.chmod(0o777)
    yield directory
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


def run_probe(prefix: list[str], result: Path, origin_port: int) -> dict[str, Any]:
    completed = run(
        [*prefix, sys.executable, *PROBE, str(result), str(origin_port), "1"]
    )
    assert completed.returncode == 0, completed.stderr
    loaded: dict[str, Any] = json.loads(result.read_text())
    return loaded


@needs_confinement
async def test_unconfined_probe_gets_out_every_way(tmp_path: Path) -> None:
    # The control: without the launcher the same probe reaches everything, so
    # the refusals below are the launcher's doing.
    async with running_origins(Origin("127.0.0.1")) as (origin,):
        results = await asyncio.to_thread(
            run_probe, [], tmp_path / "r.json", origin.port
        )

    assert results["udp"] == "ok" and results["direct_connect"] == "ok"
    assert results["bind_other_port"] == "ok" and results["signal_parent"] == "ok"


@needs_confinement
async def test_launcher_allows_the_listed_port_and_nothing_else(
    tmp_path: Path,
) -> None:
    async with running_origins(Origin("127.0.0.1")) as (origin,):
        prefix = launcher("--connect-port", str(origin.port))
        results = await asyncio.to_thread(
            run_probe, prefix, tmp_path / "r.json", origin.port
        )

    assert results["direct_connect"] == "ok"
    for name, expected in {**ALWAYS_REFUSED, **ALWAYS_ALLOWED}.items():
        assert results[name] == expected, name


@needs_confinement
async def test_launcher_refuses_tcp_connect_to_unlisted_ports(tmp_path: Path) -> None:
    async with running_origins(Origin("127.0.0.1")) as (origin,):
        prefix = launcher("--connect-port", str(free_port()))
        results = await asyncio.to_thread(
            run_probe, prefix, tmp_path / "r.json", origin.port
        )

    assert results["direct_connect"] == "EACCES"


@needs_confinement
@needs_root
def test_launcher_runs_the_app_as_its_own_user() -> None:
    script = "id -u; id -g; id -G; grep NoNewPrivs /proc/self/status"
    completed = run([*launcher("--user", "65534:65534"), "/bin/sh", "-c", script])
    assert completed.returncode == 0, completed.stderr

    assert completed.stdout.split() == ["65534", "65534", "65534", "NoNewPrivs:", "1"]


@needs_confinement
def test_confined_app_dies_with_the_process_that_started_it() -> None:
    # The shell stands in for the sandbox: killed outright, it cannot stop its
    # child, so only the parent-death signal ends the app.
    script = f"{shlex.join(launcher())} sleep 60 & echo $!; wait"
    with subprocess.Popen(
        ["/bin/sh", "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        app = int(parent.stdout.readline())
        try:
            assert wait_until(lambda: command_line(app).startswith("sleep"))
            parent.kill()
            parent.wait(10)

            assert wait_until(lambda: not alive(app)), "the app outlived its parent"
        finally:
            if alive(app):
                os.kill(app, signal.SIGKILL)


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode()


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its new parent to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_launcher_refuses_root_as_the_app_user() -> None:
    completed = run([*launcher("--user", "0:0"), "true"])

    assert completed.returncode == 2
    assert "expected a user other than root, got '0:0'" in completed.stderr


@needs_confinement
def test_launcher_reports_a_command_it_cannot_execute() -> None:
    completed = run([*launcher(), "/nonexistent/app"])

    assert completed.returncode == 126
    assert "cannot execute '/nonexistent/app'" in completed.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1000", "expected UID:GID as numbers, e.g. 65534:65534, got '1000'"),
        ("app:app", "got 'app:app'"),
        ("1000:0", "expected a user other than root, got '1000:0'"),
    ],
)
def test_app_user_must_be_numeric_and_not_root(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UserIds.parse(text)


def test_plan_allows_the_egress_port_and_the_apps_own_port() -> None:
    options = ConfineOptions(
        user=UserIds(10001, 10001),
        extra_connect_ports=frozenset({5432}),
        extra_bind_ports=frozenset({9000}),
    )

    plan = plan_for(options, egress_port=3128, app_port=8081)

    assert plan == ConfinePlan(
        frozenset({3128, 5432}), frozenset({8081, 9000}), UserIds(10001, 10001)
    )
    assert launcher_command(plan, ["app", "--port", "8081"])[2:] == [
        "sandbox.confine",
        "--connect-port",
        "3128",
        "--connect-port",
        "5432",
        "--bind-port",
        "8081",
        "--bind-port",
        "9000",
        "--user",
        "10001:10001",
        "--",
        "app",
        "--port",
        "8081",
    ]


def test_unix_socket_upstream_leaves_no_tcp_port_to_bind() -> None:
    plan = plan_for(ConfineOptions(), egress_port=3128, app_port=None)

    assert plan.bind_ports == frozenset()


def test_required_confinement_without_egress_refuses_to_start() -> None:
    with pytest.raises(ConfinementError, match="there is no egress proxy"):
        check_supported(ConfineOptions(mode="required"), has_egress=False)


def test_auto_confinement_without_egress_says_why_it_is_skipped() -> None:
    reason = check_supported(ConfineOptions(mode="auto"), has_egress=False)

    assert reason is not None and "--no-egress" in reason


def test_app_user_needs_the_confinement_it_is_part_of() -> None:
    options = ConfineOptions(mode="off", user=UserIds(10001, 10001))

    with pytest.raises(ConfinementError, match="--app-user 10001:10001"):
        check_supported(options, has_egress=True)


def test_required_confinement_on_a_machine_without_it_names_the_way_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The machine's answer is the only thing replaced: this one has seccomp.
    monkeypatch.setattr(
        "sandbox.confine.plan.unsupported_reason", lambda: "no seccomp here"
    )

    with pytest.raises(ConfinementError) as raised:
        check_supported(ConfineOptions(mode="required"), has_egress=True)

    assert str(raised.value) == (
        "the app must be confined (--confine-app required) but no seccomp "
        "here; pass --confine-app auto to run it unconfined"
    )


def test_without_landlock_only_a_network_of_its_own_bounds_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on AWS's own Nitro enclave kernels, which leave Landlock out.
    monkeypatch.setattr("sandbox.confine.plan.landlock_reason", lambda: "no Landlock")
    required = ConfineOptions(mode="required")

    assert check_boundary(required, isolated=True) is None
    with pytest.raises(ConfinementError) as raised:
        check_boundary(required, isolated=False)
    assert str(raised.value) == (
        "the app must be confined (--confine-app required) but no Landlock, and "
        "the app has no network namespace of its own; pass --confine-app auto "
        "to run it unconfined"
    )
    assert "no network namespace" in str(check_boundary(ConfineOptions(), False))


def test_without_landlock_the_plan_leaves_it_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sandbox.confine.plan.landlock_reason", lambda: "no Landlock")

    plan = plan_for(ConfineOptions(), egress_port=3128, app_port=None, netns_fd=5)

    assert plan.landlock is False
    assert launcher_command(plan, ["app"])[-3:] == ["--without-landlock", "--", "app"]


def test_launcher_refuses_to_skip_landlock_without_a_network_of_its_own() -> None:
    completed = run([*launcher("--without-landlock"), "true"])

    assert completed.returncode == 2
    assert "--without-landlock needs --netns-fd" in completed.stderr


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHITECTURES))
def test_seccomp_program_is_well_formed(machine: str) -> None:
    program = seccomp.socket_filter(seccomp.ARCHITECTURES[machine])
    instructions = list(struct.iter_unpack("=HBBI", program))

    assert 0 < len(instructions) < 64
    # Every path ends in a return: the last instruction is one.
    assert instructions[-1][0] == 0x06
    jumps = [
        (index, then, otherwise)
        for index, (code, then, otherwise, _) in enumerate(instructions)
        if code & 0x07 == 0x05
    ]
    assert jumps
    for index, then, otherwise in jumps:
        # Forward, and onto an instruction that exists.
        assert index + 1 + max(then, otherwise) < len(instructions)


# Through `sandbox run`: the app is confined to the egress proxy it was given.


@needs_confinement
async def test_sandboxed_app_reaches_the_outside_only_through_egress(
    policy_dir: Path, tokens: TokenFactory, tmp_path: Path
) -> None:
    async with running_origins(Origin("127.0.0.1")) as (origin,):
        body = EGRESS_POLICY.format(port=origin.port)
        await asyncio.to_thread(write_policy, policy_dir, body, tokens.jwks)
        audit = tmp_path / "audit.jsonl"
        command = sandbox_run(policy_dir, audit, "--confine-app", "required")
        results, stderr = await asyncio.to_thread(
            run_sandboxed_probe,
            command,
            sys.executable,
            tmp_path / "r.json",
            origin.port,
        )

    assert results["via_proxy"] == "ok"
    assert results["direct_connect"] == "EACCES"
    for name, expected in {**ALWAYS_REFUSED, **ALWAYS_ALLOWED}.items():
        assert results[name] == expected, name
    assert [r["decision"] for r in egress_records(audit)] == ["allow"]
    assert "app confined: TCP connect to ports" in stderr


@needs_confinement
@needs_root
async def test_sandboxed_app_as_its_own_user_cannot_read_the_egress_ca_key(
    policy_dir: Path, tokens: TokenFactory, tmp_path: Path, shared_dir: Path
) -> None:
    body = EGRESS_POLICY.format(port=1)
    await asyncio.to_thread(write_policy, policy_dir, body, tokens.jwks)
    command = sandbox_run(
        policy_dir, tmp_path / "audit.jsonl", "--app-user", "65534:65534"
    )
    # The project's interpreter lives under /root, which uid 65534 cannot
    # enter; the probe needs only the standard library.
    system_python = "/usr/bin/python3"
    if not os.access(system_python, os.X_OK):
        pytest.skip("no /usr/bin/python3 for the unprivileged app")

    results, _ = await asyncio.to_thread(
        run_sandboxed_probe, command, system_python, shared_dir / "r.json", 1
    )

    assert results["uid"] == 65534
    assert results["read_trust_bundle"] == "ok"
    assert results["read_ca_key"] == "EACCES"
    assert results["signal_parent"] == "EPERM"


def test_run_refuses_app_user_with_confinement_off(
    policy_dir: Path, tokens: TokenFactory, tmp_path: Path
) -> None:
    write_policy(policy_dir, EGRESS_POLICY.format(port=1), tokens.jwks)
    command = sandbox_run(
        policy_dir,
        tmp_path / "audit.jsonl",
        "--confine-app",
        "off",
        "--app-user",
        "1000:1000",
    )

    completed = run([*command, "--", "true"])

    assert completed.returncode == 2
    assert "--app-user 1000:1000 is applied by the confinement" in completed.stderr


@needs_root
@pytest.mark.parametrize("provider", ["nitro", "sev-snp"])
def test_run_refuses_a_root_app_in_a_real_enclave(
    policy_dir: Path, tokens: TokenFactory, tmp_path: Path, provider: str
) -> None:
    write_policy(policy_dir, EGRESS_POLICY.format(port=1), tokens.jwks)
    command = sandbox_run(
        policy_dir, tmp_path / "audit.jsonl", "--attestation", provider
    )

    completed = run([*command, "--", "true"])

    assert completed.returncode == 2
    assert "the sandbox runs as root, so the app would too" in completed.stderr
    assert "expected --app-user UID:GID" in completed.stderr
