"""What the app's own network namespace costs ingress, beside a shared network.

``sandbox run`` starts nginx as its confined app, once with ``--app-network
isolated`` (every connection to the app is a socket the sandbox makes inside
the app's namespace) and once with ``--app-network shared``; wrk loads
ingress. Each twice: with nginx keeping connections alive (the sandbox's
pool reuses them) and with nginx closing after every answer (a new socket
per request, the namespace's worst case). Also times making one socket in
the namespace against making one here.

    sudo .venv/bin/python -m bench.app_network_bench [--seconds 5] [--runs 3]

Needs root (a network namespace), a kernel that confines, wrk and nginx.
Everything listens on 127.0.0.1; every run is bounded in time. Prints the
median of the runs and the ratio of isolated to shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ingress_bench import NGINX_CONF, free_port, wait_for, wrk
from sandbox.confine.netns import AppNetwork
from sandbox.confine.plan import unsupported_reason

POLICY = """\
version: 1
name: app-network-bench
ingress:
  rules:
    - name: open
      methods: [GET]
      paths: [/open]
      anonymous: true
"""


def socket_costs(count: int = 20_000) -> tuple[float, float]:
    """Microseconds to make and close a socket here, and in the namespace."""
    network = AppNetwork.create()
    try:
        started = time.perf_counter()
        for _ in range(count):
            socket.socket().close()
        here = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(count):
            network.open_socket().close()
        there = time.perf_counter() - started
    finally:
        network.close()
    return here / count * 1e6, there / count * 1e6


def one_run(
    work: Path, network: str, keepalive: int, args: argparse.Namespace
) -> float:
    """Requests per second through ingress to nginx as the confined app."""
    app_port, port, admin = free_port(), free_port(), free_port()
    conf = work / f"nginx-{network}-{keepalive}.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=app_port, keepalive=keepalive))
    nginx = shutil.which("nginx") or "nginx"
    sandbox = subprocess.Popen(
        [
            *(sys.executable, "-m", "sandbox", "--log-level", "WARNING", "run"),
            *("--policy", str(work / "policy")),
            *("--upstream", f"http://127.0.0.1:{app_port}"),
            *("--listen", f"127.0.0.1:{port}"),
            *("--admin-listen", f"127.0.0.1:{admin}"),
            *("--audit-log", str(work / "audit.jsonl")),
            *("--egress-listen", "127.0.0.1:0"),
            *("--confine-app", "required", "--app-network", network),
            *("--", nginx, "-c", str(conf)),
        ]
    )
    try:
        wait_for(f"http://127.0.0.1:{admin}/readyz")
        figures = wrk(
            f"http://127.0.0.1:{port}/open", args.seconds, args.connections, None
        )
        return float(figures["rps"])
    finally:
        sandbox.send_signal(signal.SIGTERM)
        sandbox.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("a network namespace needs root: run with sudo")
    if (reason := unsupported_reason()) is not None:
        raise SystemExit(f"this kernel cannot confine: {reason}")
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install wrk nginx-light")

    here, there = socket_costs()
    print(f"socket(): {here:.1f} us here, {there:.1f} us in the app's namespace")
    work = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    work.chmod(0o755)
    (work / "policy").mkdir()
    (work / "policy/policy.yaml").write_text(POLICY)
    print(
        f"wrk -t2 -c{args.connections} -d{args.seconds}s through ingress, "
        f"median of {args.runs} runs, req/s"
    )
    try:
        for keepalive, label in ((75, "app keeps connections"), (0, "app closes each")):
            medians = {
                network: statistics.median(
                    one_run(work, network, keepalive, args) for _ in range(args.runs)
                )
                for network in ("shared", "isolated")
            }
            ratio = medians["isolated"] / medians["shared"]
            print(
                f"  {label:24} shared {medians['shared']:8.0f}  "
                f"isolated {medians['isolated']:8.0f}  ({ratio:.2f} of shared)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
