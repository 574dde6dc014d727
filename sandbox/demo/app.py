"""The demo vendor app: a tiny clinical-notes summariser that streams.

It trusts the sandbox for identity: it reads the verified caller from the
X-Sandbox-Subject header and never sees a bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter

from aiohttp import web

_WORD = re.compile(r"[a-z]{4,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
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


async def health_handler(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def admin_handler(_: web.Request) -> web.Response:
    return web.json_response({"users": ["every", "patient", "record"]})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/summarize", summarize_handler)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/admin/users", admin_handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="demo notes summariser")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
