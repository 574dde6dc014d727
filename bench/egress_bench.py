"""Throughput of the egress proxy on loopback: plain HTTP requests per second,
and megabytes per second through a passed-through CONNECT tunnel.

    .venv/bin/python -m bench.egress_bench [--requests 2000] [--concurrency 16]
        [--tunnel-mib 64] [--runs 3]

Everything listens on 127.0.0.x; names resolve through a fixed test resolver.
Prints the median of the runs. The audit log goes to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from sandbox.egress.proxy import EgressConfig
from tests.support import (
    Origin,
    StaticResolver,
    TokenFactory,
    raw_connect,
    running_origins,
    running_sandbox,
    write_policy,
)

POLICY = """\
egress:
  rules:
    - name: plain
      hosts: [bench.example]
      ports: [{port}]
      allow_cidrs: [127.0.0.0/8]
    - name: tunnel
      hosts: [sink.example]
      ports: [{sink}]
      allow_cidrs: [127.0.0.0/8]
"""
CHUNK = b"\0" * (256 * 1024)


async def requests_per_second(proxy: str, url: str, total: int, workers: int) -> float:
    queue = iter(range(total))
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in queue:
                async with session.get(url, proxy=proxy) as response:
                    await response.read()
                    assert response.status == 200, response.status

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return total / (time.perf_counter() - started)


async def tunnel_mib_per_second(proxy: str, authority: str, mib: int) -> float:
    status, _, reader, writer = await raw_connect(proxy, authority)
    assert status == 200, status
    started = time.perf_counter()
    writer.write(f"{mib * 1024 * 1024}\n".encode())
    for _ in range(mib * 4):
        writer.write(CHUNK)
        await writer.drain()
    # The sink answers with the byte count once it has read them all.
    received = int(await asyncio.wait_for(reader.readline(), 60))
    elapsed = time.perf_counter() - started
    writer.close()
    assert received == mib * 1024 * 1024, received
    return mib / elapsed


async def start_sink() -> asyncio.Server:
    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        expected = int(await reader.readline())
        count = 0
        while count < expected and (chunk := await reader.read(1 << 16)):
            count += len(chunk)
        writer.write(f"{count}\n".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(sink, "127.0.0.5", 0)


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="egress-bench-"))
    (folder / "policy").mkdir()
    origin = Origin("127.0.0.4", None, "bench")
    sink = await start_sink()
    sink_port = sink.sockets[0].getsockname()[1]
    async with running_origins(origin):
        text = POLICY.format(port=origin.port, sink=sink_port)
        policy = write_policy(folder / "policy", text, TokenFactory().jwks)
        resolver = StaticResolver(
            {"bench.example": ["127.0.0.4"], "sink.example": ["127.0.0.5"]}
        )
        egress = EgressConfig(listen=("127.0.0.1", 0), resolver=resolver)
        async with running_sandbox(
            policy, origin_url(origin), folder / "audit.jsonl", egress=egress
        ) as sandbox:
            assert sandbox.egress is not None
            proxy = sandbox.egress.url
            url = f"http://bench.example:{origin.port}/bench"
            rates = [
                await requests_per_second(proxy, url, args.requests, args.concurrency)
                for _ in range(args.runs)
            ]
            speeds = [
                await tunnel_mib_per_second(
                    proxy, f"sink.example:{sink_port}", args.tunnel_mib
                )
                for _ in range(args.runs)
            ]
    sink.close()
    print(
        f"plain HTTP via egress: median {statistics.median(rates):.0f} req/s "
        f"({args.requests} requests, concurrency {args.concurrency}, runs: "
        + ", ".join(f"{rate:.0f}" for rate in rates)
        + ")"
    )
    print(
        f"CONNECT tunnel (passthrough): median {statistics.median(speeds):.1f} MiB/s "
        f"({args.tunnel_mib} MiB per run, runs: "
        + ", ".join(f"{speed:.1f}" for speed in speeds)
        + ")"
    )


def origin_url(origin: Origin) -> str:
    return f"http://{origin.host}:{origin.port}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tunnel-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
