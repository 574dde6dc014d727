"""``sandbox bridge``: endpoints, the relay on loopback, and the command.

Every byte goes over loopback (or inside a network namespace the test makes).
vsock is only ever listened on, never connected: a connect could reach the
hypervisor host.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest

from sandbox.bridge.endpoints import (
    VMADDR_CID_ANY,
    BridgePair,
    Endpoint,
    TcpEndpoint,
    VsockEndpoint,
    parse_endpoint,
    parse_pair,
)
from sandbox.bridge.relay import Relay, RelayOptions
from sandbox.users import UserIds
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
LOCAL = "127.0.0.1"
MiB = 1 << 20

# --- parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "listening", "expected"),
    [
        ("tcp:127.0.0.1:8443", False, TcpEndpoint("127.0.0.1", 8443)),
        ("tcp:[::1]:443", False, TcpEndpoint("::1", 443)),
        ("tcp:models.example.com:443", False, TcpEndpoint("models.example.com", 443)),
        ("vsock:any:8443", True, VsockEndpoint(VMADDR_CID_ANY, 8443)),
        ("vsock:3:8001", False, VsockEndpoint(3, 8001)),
    ],
)
def test_endpoints_parse(text: str, listening: bool, expected: Endpoint) -> None:
    endpoint = parse_endpoint(text, listening)

    assert endpoint == expected
    assert str(endpoint) == text


def test_a_pair_listens_left_and_connects_right() -> None:
    pair = parse_pair("vsock:any:8443=tcp:127.0.0.1:8443")

    assert pair == BridgePair(
        VsockEndpoint(VMADDR_CID_ANY, 8443), TcpEndpoint("127.0.0.1", 8443)
    )
    assert str(pair) == "vsock:any:8443=tcp:127.0.0.1:8443"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp:127.0.0.1:8443", "expected one LISTEN=CONNECT pair"),
        ("tcp:127.0.0.1:1=tcp:127.0.0.1:2=tcp:127.0.0.1:3", "LISTEN=CONNECT"),
        ("=tcp:127.0.0.1:1", "LISTEN=CONNECT"),
        ("udp:127.0.0.1:1=tcp:127.0.0.1:2", "expected an endpoint tcp:HOST:PORT"),
        ("tcp:127.0.0.1:70000=tcp:127.0.0.1:2", "expected HOST:PORT"),
        ("tcp:127.0.0.1:0=tcp:127.0.0.1:2", "expected a port 1-65535, got 0"),
        ("tcp:::1:80=tcp:127.0.0.1:2", "IPv6 address in brackets"),
        ("tcp:127.0.0.1:1=vsock:any:8001", "'any' is only valid on the listening"),
        ("vsock:any=tcp:127.0.0.1:2", "expected vsock:CID:PORT, got 'vsock:any'"),
        ("vsock:x:1=tcp:127.0.0.1:2", "expected a CID 1-4294967294, got 'x'"),
        ("vsock:any:0=tcp:127.0.0.1:2", "expected a port 1-4294967294, got '0'"),
        ("vsock:any:4294967295=tcp:127.0.0.1:2", "got '4294967295'"),
    ],
)
def test_bad_pairs_say_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_pair(text)


def test_users_are_numeric_pairs() -> None:
    assert UserIds.parse("65534:65534").uid == 65534
    with pytest.raises(ValueError, match="expected UID:GID as numbers"):
        UserIds.parse("nobody")


# --- the relay, in process ---------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends back what comes, then half-closes when the client does."""
    while chunk := await reader.read(MiB):
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    await _finish(writer)


async def _digest_after_eof(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Replies only once it has seen EOF: the sha256 of everything received."""
    digest = hashlib.sha256()
    while chunk := await reader.read(MiB):
        digest.update(chunk)
    writer.write(digest.hexdigest().encode())
    await writer.drain()
    writer.close()
    await _finish(writer)


async def _finish(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()


@asynccontextmanager
async def serving(handler: object) -> AsyncIterator[TcpEndpoint]:
    server = await asyncio.start_server(handler, LOCAL, 0)  # type: ignore[arg-type]
    try:
        yield TcpEndpoint(LOCAL, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def relaying(connect: Endpoint, **options: float) -> AsyncIterator[Relay]:
    relay = Relay(
        BridgePair(TcpEndpoint(LOCAL, 0), connect),
        RelayOptions(**options),  # type: ignore[arg-type]
    )
    await relay.bind()
    await relay.serve()
    try:
        yield relay
    finally:
        await relay.stop()


async def connect_to(relay: Relay) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOCAL, relay.address[1])


async def test_32_mib_cross_both_ways_intact(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sandbox.bridge")
    payload = random.Random(7).randbytes(32 * MiB)

    async with serving(_echo) as target, relaying(target) as relay:
        reader, writer = await connect_to(relay)

        async def send() -> None:
            for start in range(0, len(payload), MiB):
                writer.write(payload[start : start + MiB])
                await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.read(-1), 30)
        await sending
        await _finish(writer)

    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    ended = [r for r in caplog.records if "ended" in r.getMessage()]
    assert len(ended) == 1 and ended[0].levelno == logging.INFO
    assert f"sent={32 * MiB} received={32 * MiB}" in ended[0].getMessage()
    assert "outcome=closed" in ended[0].getMessage()


async def test_a_half_closed_client_still_gets_the_reply() -> None:
    body = b"the whole request, then EOF"

    async with serving(_digest_after_eof) as target, relaying(target) as relay:
        reader, writer = await connect_to(relay)
        writer.write(body)
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(-1), 5)
        await _finish(writer)

    assert reply == hashlib.sha256(body).hexdigest().encode()


async def test_an_unreachable_target_closes_the_client_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with relaying(TcpEndpoint(LOCAL, free_port())) as relay:
        reader, writer = await connect_to(relay)
        received = await asyncio.wait_for(reader.read(-1), 5)
        await _finish(writer)

    assert received == b""
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cannot connect to tcp:127.0.0.1:" in warnings[0].getMessage()
    assert "ConnectionRefusedError" in warnings[0].getMessage()


async def test_connections_beyond_the_limit_are_closed_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(_echo) as target, relaying(target, max_connections=1) as relay:
        first_reader, first = await connect_to(relay)
        first.write(b"ping")
        assert await asyncio.wait_for(first_reader.readexactly(4), 5) == b"ping"

        second_reader, second = await connect_to(relay)
        refused = await asyncio.wait_for(second_reader.read(-1), 5)
        await _finish(second)

        first.write(b"still here")
        assert await asyncio.wait_for(first_reader.readexactly(10), 5) == b"still here"
        await _finish(first)

    assert refused == b""
    assert any(
        "refused" in r.getMessage() and "the limit" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )


@pytest.fixture
def never_accepting() -> Iterator[TcpEndpoint]:
    """A listener whose tiny backlog is full, so a new connect hangs in SYN."""
    listener = socket.socket()
    listener.bind((LOCAL, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex((LOCAL, port))
        fillers.append(filler)
    try:
        yield TcpEndpoint(LOCAL, port)
    finally:
        for sock in [*fillers, listener]:
            sock.close()


async def test_a_target_that_never_answers_times_out(
    never_accepting: TcpEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    async with relaying(never_accepting, connect_timeout=0.3) as relay:
        reader, writer = await connect_to(relay)
        received = await asyncio.wait_for(reader.read(-1), 5)
        await _finish(writer)

    assert received == b""
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("timed out" in message for message in warnings), warnings


async def test_stop_cuts_connections_left_open_after_the_grace() -> None:
    async with serving(_echo) as target:
        relay = Relay(
            BridgePair(TcpEndpoint(LOCAL, 0), target), RelayOptions(stop_grace=0.1)
        )
        await relay.bind()
        await relay.serve()
        reader, writer = await connect_to(relay)
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), 5)

        await asyncio.wait_for(relay.stop(), 5)

        with suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(-1), 5) == b""
        await _finish(writer)


def _vsock_unavailable() -> str | None:
    if not hasattr(socket, "AF_VSOCK"):
        return "this Python has no AF_VSOCK"
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as exc:
        return f"no vsock here: {exc}"
    return None


async def test_vsock_listens_on_any_cid() -> None:
    reason = _vsock_unavailable()
    if reason is not None:
        pytest.skip(reason)
    port = 40000 + secrets.randbelow(20000)
    pair = BridgePair(VsockEndpoint(VMADDR_CID_ANY, port), TcpEndpoint(LOCAL, 1))
    relay = Relay(pair, RelayOptions())

    try:
        await relay.bind()
    except OSError as exc:
        pytest.skip(f"cannot listen on vsock here: {exc}")
    await relay.serve()
    try:
        assert relay.address == (VMADDR_CID_ANY, port)
    finally:
        await relay.stop()


# --- the command, as a process -----------------------------------------------


class Bridge:
    """``sandbox bridge`` as a child process, ready once it logs listening."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log: list[str] = []

    async def ready(self, listeners: int = 1) -> None:
        assert self.process.stderr is not None
        while sum("listening on" in line for line in self.log) < listeners:
            line = await asyncio.wait_for(self.process.stderr.readline(), 10)
            assert line, f"the bridge exited early: {self.log}"
            self.log.append(line.decode())

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.stderr is not None
        rest = await asyncio.wait_for(self.process.stderr.read(), 10)
        self.log.extend(rest.decode().splitlines())
        return await asyncio.wait_for(self.process.wait(), 10)


@asynccontextmanager
async def bridge_process(
    *args: str, prefix: tuple[str, ...] = ()
) -> AsyncIterator[Bridge]:
    process = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "sandbox",
        "bridge",
        *args,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    bridge = Bridge(process)
    try:
        yield bridge
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def echo_through(port: int, message: bytes = b"over the bridge") -> bytes:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(message)
    writer.write_eof()
    reply = await asyncio.wait_for(reader.read(-1), 5)
    await _finish(writer)
    return reply


async def test_the_command_relays_and_stops_on_sigterm() -> None:
    listen = free_port()
    async with (
        serving(_echo) as target,
        bridge_process(f"tcp:{LOCAL}:{listen}={target}") as bridge,
    ):
        await bridge.ready()
        reply = await echo_through(listen)
        status = await bridge.stop()

    assert reply == b"over the bridge"
    assert status == 0, bridge.log
    assert any("outcome=closed" in line for line in bridge.log)
    assert any("bridge stopped" in line for line in bridge.log)


def run_bridge_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", "bridge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_a_bad_pair_exits_2_naming_it() -> None:
    result = run_bridge_command("tcp:127.0.0.1:1=vsock:any:2")

    assert result.returncode == 2
    assert "sandbox bridge: error: argument PAIR:" in result.stderr
    assert "'any' is only valid on the listening side" in result.stderr


def test_a_listener_that_cannot_bind_exits_2() -> None:
    with socket.socket() as taken:
        taken.bind((LOCAL, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_bridge_command(f"tcp:{LOCAL}:{port}=tcp:{LOCAL}:1")

    assert result.returncode == 2
    assert f"sandbox bridge: cannot listen on tcp:{LOCAL}:{port}:" in result.stderr


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def _low_free_port() -> int:
    for port in random.Random().sample(range(600, 1000), 50):
        with socket.socket() as probe:
            try:
                probe.bind((LOCAL, port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on loopback")


def _ids(pid: int) -> tuple[list[str], list[str]]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split()[1:] for line in status}
    return fields["Uid"], fields["Gid"]


async def test_user_drop_happens_after_binding_a_low_port() -> None:
    _needs_root()
    listen = _low_free_port()
    async with (
        serving(_echo) as target,
        bridge_process(
            "--user", "65534:65534", f"tcp:{LOCAL}:{listen}={target}"
        ) as bridge,
    ):
        await bridge.ready()
        uids, gids = _ids(bridge.process.pid)
        reply = await echo_through(listen)
        status = await bridge.stop()

    assert uids == ["65534"] * 4 and gids == ["65534"] * 4
    assert reply == b"over the bridge"
    assert status == 0, bridge.log


# --- --loopback-up in a fresh network namespace, where lo starts down --------

# Run inside the namespace: an echo target, then one exchange via the bridge.
ECHO_CLIENT = r"""
import socket, sys, threading

target = socket.create_server(("127.0.0.1", int(sys.argv[2])))
def echo():
    conn, _ = target.accept()
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=echo, daemon=True).start()
client = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
client.sendall(b"inside the namespace")
client.shutdown(socket.SHUT_WR)
reply = b""
while data := client.recv(65536):
    reply += data
print(reply.decode())
"""


def _ip(*args: str) -> str:
    return subprocess.run(
        ["ip", *args],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def fresh_namespace() -> Iterator[str]:
    _needs_root()
    if shutil.which("ip") is None:
        pytest.skip("needs the 'ip' command (iproute2)")
    name = f"sbxbr{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"'ip netns add' failed: {exc.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # noqa: S607


async def test_loopback_up_brings_lo_up_in_a_fresh_namespace(
    fresh_namespace: str,
) -> None:
    inside = ("ip", "netns", "exec", fresh_namespace)
    assert (
        "UP" not in _ip("-n", fresh_namespace, "-o", "link", "show", "lo").split(">")[0]
    )

    async with bridge_process(
        "--loopback-up", "tcp:127.0.0.1:8001=tcp:127.0.0.1:8002", prefix=inside
    ) as bridge:
        await bridge.ready()
        flags = _ip("-n", fresh_namespace, "-o", "link", "show", "lo")
        client = await asyncio.create_subprocess_exec(
            *inside,
            sys.executable,
            "-c",
            ECHO_CLIENT,
            "8001",
            "8002",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(client.communicate(), 10)
        status = await bridge.stop()

    assert "UP" in flags.split(">")[0], flags
    assert out.decode().strip() == "inside the namespace"
    assert status == 0, bridge.log
    assert any("brought the lo interface up" in line for line in bridge.log)
