"""Ingress overhead: wrk against nginx directly, then through ``sandbox run``.

Everything listens on 127.0.0.1 and every run is bounded in time. Needs
``wrk`` and ``nginx`` (Debian: ``apt-get install wrk nginx-light``).

    .venv/bin/python bench/ingress_bench.py [--seconds 10] [--connections 32]

Prints requests per second and latency percentiles for each scenario, and
the throughput ratio against nginx alone. The machine is shared and noisy:
compare figures from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sandbox.identity.issue import generate_key, issue_token

ISSUER = "https://bench.example"
AUDIENCE = "bench"
POLICY = f"""\
version: 1
name: bench
identity:
  issuers:
    - issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      algorithms: [ES256]
      jwks: keys/bench.jwks.json
ingress:
  rules:
    - name: open
      methods: [GET]
      paths: [/open]
      anonymous: true
    - name: members
      methods: [GET]
      paths: [/members/**]
      claims:
        role: [member]
    - name: no-admin
      effect: deny
      paths: [/admin/**]
"""
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_timeout {keepalive};
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  fastcgi_temp_path {dir};
  uwsgi_temp_path {dir};
  scgi_temp_path {dir};
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(url: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {seconds} s")


def wrk(url: str, seconds: int, connections: int, header: str | None) -> dict[str, str]:
    command = [
        shutil.which("wrk") or "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]
    if header:
        command[1:1] = ["-H", header]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    figures = {"rps": re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)}  # type: ignore[union-attr]
    for percentile in ("50", "99"):
        found = re.search(rf"^\s+{percentile}%\s+(\S+)", output, re.MULTILINE)
        figures[f"p{percentile}"] = found.group(1) if found else "?"
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install wrk nginx-light")

    work = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    nginx_port, port, admin = free_port(), free_port(), free_port()
    (work / "nginx.conf").write_text(
        NGINX_CONF.format(dir=work, port=nginx_port, keepalive=75)
    )
    policy = work / "policy"
    (policy / "keys").mkdir(parents=True)
    private_key, jwks = generate_key("ES256")
    (policy / "keys/bench.jwks.json").write_text(json.dumps(jwks))
    (policy / "policy.yaml").write_text(POLICY)
    token = issue_token(
        private_key,
        issuer=ISSUER,
        audience=AUDIENCE,
        subject="bench",
        claims={"role": "member"},
        expires_in=3600,
    )

    nginx = shutil.which("nginx") or "nginx"
    processes = [subprocess.Popen([nginx, "-c", str(work / "nginx.conf")])]
    processes.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox",
                "--log-level",
                "WARNING",
                "run",
                "--policy",
                str(policy),
                "--upstream",
                f"http://127.0.0.1:{nginx_port}",
                "--listen",
                f"127.0.0.1:{port}",
                "--admin-listen",
                f"127.0.0.1:{admin}",
                "--audit-log",
                str(work / "audit.jsonl"),
                # Ingress alone is measured here; bench/egress_bench.py does egress.
                "--no-egress",
            ],
        )
    )
    try:
        wait_for(f"http://127.0.0.1:{nginx_port}/")
        wait_for(f"http://127.0.0.1:{admin}/readyz")
        scenarios = [
            ("nginx alone", f"http://127.0.0.1:{nginx_port}/open", None),
            ("sandbox, anonymous rule", f"http://127.0.0.1:{port}/open", None),
            (
                "sandbox, JWT + claims rule",
                f"http://127.0.0.1:{port}/members/a",
                f"Authorization: Bearer {token}",
            ),
            ("sandbox, refused by deny rule", f"http://127.0.0.1:{port}/admin/x", None),
        ]
        baseline = None
        print(f"wrk -t2 -c{args.connections} -d{args.seconds}s, one run each")
        for name, url, header in scenarios:
            figures = wrk(url, args.seconds, args.connections, header)
            rps = float(figures["rps"])
            baseline = baseline or rps
            print(
                f"  {name:32} {rps:10.0f} req/s  p50 {figures['p50']:>8}  "
                f"p99 {figures['p99']:>8}  ({rps / baseline:.2f} of nginx alone)"
            )
        records = sum(1 for _ in (work / "audit.jsonl").open())
        print(f"  audit records written: {records}")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
