"""A vendor's app brought into the image with APP_DIR (way 1 of README.md).

Standard library only, so it needs nothing installed beside it: a toy
triage classifier that labels a clinical note by the words it carries and
streams its reasoning line by line. Copy this folder, replace the model,
keep the shape: listen on 127.0.0.1, trust the sandbox for identity (the
X-Sandbox-Subject header), and make any outside call through the proxy the
environment names.
"""

from __future__ import annotations

import argparse
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LABELS = {
    "urgent": {"chest", "pain", "bleeding", "unconscious", "sepsis"},
    "routine": {"follow-up", "review", "stable", "normal"},
}


def classify(note: str) -> tuple[str, dict[str, int]]:
    words = set(re.findall(r"[a-z-]+", note.lower()))
    scores = {label: len(words & cues) for label, cues in LABELS.items()}
    return max(scores, key=lambda label: scores[label]), scores


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path != "/healthz":
            self._send(404, {"error": "not found"})
            return
        self._send(200, {"app": "example-triage", "status": "ok"})

    def do_POST(self) -> None:
        if self.path != "/v1/classify":
            self._send(404, {"error": "not found"})
            return
        length = min(int(self.headers.get("Content-Length", "0")), 100_000)
        label, scores = classify(self.rfile.read(length).decode(errors="replace"))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        caller = self.headers.get("X-Sandbox-Subject", "anonymous")
        for line in ({"caller": caller}, {"scores": scores}, {"label": label}):
            self._chunk(json.dumps(line).encode() + b"\n")
        self._chunk(b"")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the sandbox's audit log is the record of each request."""

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send(self, status: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
