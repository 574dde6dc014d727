"""A vendor app for process-level tests: slow answers and a byte sink."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from aiohttp import web


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.json_response({"slow": True})


async def sink(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_chunked(1 << 20):
        received += len(chunk)
    return web.json_response({"received": received})


async def health(_: web.Request) -> web.Response:
    return web.json_response({"pid": os.getpid()})


async def exit_now(_: web.Request) -> web.Response:
    # Dies the way a crashing app does: abruptly, with a non-zero status.
    asyncio.get_running_loop().call_later(0.05, os._exit, 3)
    return web.json_response({"exiting": 3})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=0)
    app.router.add_get("/slow", slow)
    app.router.add_put("/sink", sink)
    app.router.add_get("/healthz", health)
    app.router.add_post("/exit", exit_now)
    print(f"app on {args.port}", file=sys.stderr, flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
