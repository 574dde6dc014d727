"""The app's own network namespace: only loopback, and what the sandbox puts there.

Landlock limits the confined app's connects by port; the namespace takes away
every address but its own loopback, where the sandbox has placed the egress
proxy's listener and the relays it was asked for.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.confine.netns import AppNetwork
from sandbox.confine.plan import (
    ConfineOptions,
    check_supported,
    launcher_command,
    plan_for,
    shared_network_reason,
)
from sandbox.errors import ConfinementError
from tests.confinement import (
    ALWAYS_REFUSED,
    EGRESS_POLICY,
    PROBE,
    ROOT,
    launcher,
    needs_confinement,
    needs_seccomp,
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

needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0, reason="making a network namespace needs root"
)
OWN = "/proc/thread-self/ns/net"


@pytest.fixture
def network() -> Iterator[AppNetwork]:
    made = AppNetwork.create()
    yield made
    made.close()


@needs_namespaces
def test_sockets_made_for_the_app_live_in_its_network_not_ours(
    network: AppNetwork,
) -> None:
    home = os.readlink(OWN)
    listener = network.listener("127.0.0.1", 0)
    port = listener.getsockname()[1]

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # Connecting from inside works: there, lo is up and the listener is bound.
    with network.open_socket() as client:
        client.settimeout(5)
        client.connect(("127.0.0.1", port))
    assert os.readlink(OWN) == home
    listener.close()


@needs_confinement
@needs_namespaces
def test_the_launcher_puts_the_app_in_the_network_it_is_given(
    network: AppNetwork,
) -> None:
    script = "import socket; print(*sorted(n for _, n in socket.if_nameindex()))"
    command = [*launcher("--netns-fd", str(network.fd)), sys.executable, "-c", script]

    completed = run(command, pass_fds=(network.fd,))

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["lo"]


def test_an_app_network_for_a_non_loopback_upstream_is_impossible() -> None:
    isolated = ConfineOptions(network="isolated")

    assert "on loopback only" in str(
        shared_network_reason(ConfineOptions(), "10.0.0.5")
    )
    with pytest.raises(ConfinementError, match=r"--app-network isolated.*10\.0\.0\.5"):
        shared_network_reason(isolated, "10.0.0.5")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "localhost", None])
def test_loopback_and_unix_upstreams_can_be_isolated(host: str | None) -> None:
    assert shared_network_reason(ConfineOptions(network="isolated"), host) is None


def test_shared_network_is_what_was_asked() -> None:
    assert shared_network_reason(ConfineOptions(network="shared"), "127.0.0.1") == (
        "--app-network shared"
    )


def test_an_isolated_network_needs_the_confinement_it_is_part_of() -> None:
    options = ConfineOptions(mode="off", network="isolated")

    with pytest.raises(ConfinementError, match="--app-network isolated is applied"):
        check_supported(options, has_egress=True)


def test_the_launcher_is_told_which_network_to_enter() -> None:
    plan = plan_for(ConfineOptions(), egress_port=3128, app_port=None, netns_fd=7)

    command = launcher_command(plan, ["app"])

    assert command[-4:] == ["--netns-fd", "7", "--", "app"]


# Through `sandbox run`.


@dataclass
class Listener:
    """A server that counts its connections: a host the app must not reach."""

    accepted: int = 0


@asynccontextmanager
async def listening(host: str, port: int) -> AsyncIterator[Listener]:
    seen = Listener()

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.accepted += 1
        writer.close()

    server = await asyncio.start_server(accept, host, port)
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


@needs_confinement
@needs_namespaces
async def test_isolated_app_reaches_the_proxy_and_its_relays_and_nothing_else(
    policy_dir: Path, tokens: TokenFactory, tmp_path: Path
) -> None:
    egress_port, database_port = free_port(), free_port()
    audit = tmp_path / "audit.jsonl"
    # A listener on the egress port at another address stands for any host
    # that listens on that port: Landlock alone would let the app reach it.
    async with (
        running_origins(Origin("127.0.0.1")) as (origin,),
        listening("127.0.0.2", egress_port) as elsewhere,
        listening("127.0.0.1", database_port) as database,
    ):
        body = EGRESS_POLICY.format(port=origin.port)
        await asyncio.to_thread(write_policy, policy_dir, body, tokens.jwks)
        command = sandbox_run(
            policy_dir,
            audit,
            *("--egress-listen", f"127.0.0.1:{egress_port}"),
            *("--app-network", "isolated"),
            *("--app-connect-port", str(database_port)),
        )
        results, stderr = await asyncio.to_thread(
            run_sandboxed_probe,
            command,
            sys.executable,
            tmp_path / "r.json",
            origin.port,
            {
                "egress_port_elsewhere": ("127.0.0.2", egress_port),
                "database": ("127.0.0.1", database_port),
            },
        )

    assert results["interfaces"] == ["lo"]
    assert results["via_proxy"] == "ok"
    assert [r["decision"] for r in egress_records(audit)] == ["allow"]
    assert results["egress_port_elsewhere"] == "ECONNREFUSED"
    assert elsewhere.accepted == 0
    assert results["database"] == "ok" and database.accepted == 1
    assert results["direct_connect"] == "EACCES"
    for name, expected in ALWAYS_REFUSED.items():
        assert results[name] == expected, name
    assert "network of its own (loopback only)" in stderr


@needs_confinement
async def test_shared_app_reaches_the_egress_port_of_any_address(
    policy_dir: Path, tokens: TokenFactory, tmp_path: Path
) -> None:
    # The control for the test above: the hole the namespace closes is real.
    egress_port = free_port()
    async with listening("127.0.0.2", egress_port) as elsewhere:
        body = EGRESS_POLICY.format(port=1)
        await asyncio.to_thread(write_policy, policy_dir, body, tokens.jwks)
        command = sandbox_run(
            policy_dir,
            tmp_path / "audit.jsonl",
            *("--egress-listen", f"127.0.0.1:{egress_port}"),
            *("--app-network", "shared"),
        )
        results, stderr = await asyncio.to_thread(
            run_sandboxed_probe,
            command,
            sys.executable,
            tmp_path / "r.json",
            1,
            {"egress_port_elsewhere": ("127.0.0.2", egress_port)},
        )

    assert results["egress_port_elsewhere"] == "ok" and elsewhere.accepted == 1
    assert "the app shares the sandbox's network (--app-network shared)" in stderr


@needs_confinement
def test_run_refuses_an_isolated_app_behind_a_non_loopback_upstream(
    policy_dir: Path, tokens: TokenFactory, tmp_path: Path
) -> None:
    write_policy(policy_dir, EGRESS_POLICY.format(port=1), tokens.jwks)
    command = sandbox_run(policy_dir, tmp_path / "audit.jsonl", "--app-network")
    command = [*command, "isolated", "--upstream", "http://192.0.2.7:8081"]

    completed = run([*command, "--", "true"])

    assert completed.returncode == 2
    assert "--upstream names '192.0.2.7'" in completed.stderr


@needs_namespaces
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv here")
@pytest.mark.parametrize(
    ("dropped", "message"),
    [
        ("sys_admin", "expected CAP_SYS_ADMIN (run the sandbox as root"),
        ("net_admin", "cannot bring lo up: expected CAP_NET_ADMIN"),
    ],
)
def test_a_missing_capability_is_named(dropped: str, message: str) -> None:
    # Root without one capability: a container started without --cap-add.
    script = (
        "from sandbox.confine.netns import AppNetwork\n"
        "try:\n    AppNetwork.create()\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )

    setpriv = shutil.which("setpriv") or "setpriv"

    completed = subprocess.run(
        [setpriv, "--bounding-set", f"-{dropped}", sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert completed.stdout.startswith(
        "ConfinementError cannot give the app a network namespace of its own: "
    )
    assert message in completed.stdout


@needs_seccomp
@needs_namespaces
async def test_without_landlock_the_namespace_and_seccomp_still_hold_the_app(
    network: AppNetwork, tmp_path: Path
) -> None:
    # What AWS's own Nitro enclave kernels allow: no Landlock, so no port
    # rules; the app's own network and the seccomp filter are the boundary.
    result = tmp_path / "r.json"
    async with running_origins(Origin("127.0.0.1")) as (origin,):
        command = [
            *launcher("--netns-fd", str(network.fd), "--without-landlock"),
            *(sys.executable, *PROBE, str(result), str(origin.port), "1"),
        ]
        completed = await asyncio.to_thread(run, command, (network.fd,))

    assert completed.returncode == 0, completed.stderr
    results = json.loads(result.read_text())
    assert results["interfaces"] == ["lo"]
    assert results["direct_connect"] == "ECONNREFUSED"
    assert results["bind_other_port"] == "ok"  # Landlock's rule, absent here
    for name in ("udp", "udp6", "vsock", "sctp", "packet", "io_uring", "setns"):
        assert results[name] == ALWAYS_REFUSED[name], name
