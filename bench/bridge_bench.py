"""Throughput and connection rate of ``sandbox bridge`` on loopback, beside
a direct connection and, where installed, socat doing the same relay.

    .venv/bin/python -m bench.bridge_bench [--mib 256] [--connections 2000]
        [--concurrency 16] [--runs 3]

Each relay runs as its own process (as in an enclave) between a client and
a sink on 127.0.0.1; TCP stands in for vsock, which cannot be reached here.
Prints the median of the runs for each path.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

CHUNK = b"\0" * (256 * 1024)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads to EOF, then answers with the count: one round trip per stream."""
    total = 0
    while chunk := await reader.read(1 << 16):
        total += len(chunk)
    writer.write(f"{total}\n".encode())
    await writer.drain()
    writer.close()


async def stream(port: int, size: int) -> float:
    """MiB/s sending ``size`` bytes to the sink through ``port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    for _ in range(size // len(CHUNK)):
        writer.write(CHUNK)
        await writer.drain()
    writer.write_eof()
    answer = await reader.readline()
    elapsed = time.perf_counter() - started
    writer.close()
    assert int(answer) == size, answer
    return size / (1 << 20) / elapsed


async def connection_rate(port: int, total: int, workers: int) -> tuple[float, int]:
    """Connections per second, each sending one byte and reading the count
    back; and how many got a wrong count (the relay lost the byte or the end)."""
    queue = iter(range(total))
    wrong = 0

    async def worker() -> None:
        nonlocal wrong
        for _ in queue:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            writer.write_eof()
            wrong += await reader.readline() != b"1\n"
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return total / (time.perf_counter() - started), wrong


@contextmanager
def relay(command: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(10)


def relays(target: int) -> dict[str, tuple[list[str], int]]:
    bridge_port, socat_port = free_port(), free_port()
    found = {
        "sandbox bridge": (
            [
                sys.executable,
                "-m",
                "sandbox",
                "--log-level",
                "WARNING",
                "bridge",
                "--max-connections",
                "1024",
                f"tcp:127.0.0.1:{bridge_port}=tcp:127.0.0.1:{target}",
            ],
            bridge_port,
        )
    }
    if shutil.which("socat"):
        found["socat"] = (
            [
                "socat",
                f"TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr",
                f"TCP:127.0.0.1:{target}",
            ],
            socat_port,
        )
    return found


async def measure(port: int, args: argparse.Namespace) -> tuple[float, float, int]:
    size = args.mib << 20
    throughput = [await stream(port, size) for _ in range(args.runs)]
    rates = [
        await connection_rate(port, args.connections, args.concurrency)
        for _ in range(args.runs)
    ]
    return (
        statistics.median(throughput),
        statistics.median(rate for rate, _ in rates),
        sum(wrong for _, wrong in rates),
    )


async def main(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    results = {"direct": await measure(target, args)}
    for name, (command, port) in relays(target).items():
        with relay(command, port):
            results[name] = await measure(port, args)
    server.close()
    await server.wait_closed()
    print(
        f"{'path':16} {'MiB/s':>8} {'conn/s':>8} {'wrong':>6}  "
        f"(median of {args.runs} runs; wrong: answers lost, all runs)"
    )
    for name, (throughput, rate, wrong) in results.items():
        print(f"{name:16} {throughput:8.1f} {rate:8.0f} {wrong:6d}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
