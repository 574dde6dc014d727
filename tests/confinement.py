"""What the confinement tests share: the probe app, how to start it confined,
and what a confined app may and may not do whatever ports it is allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.confine.plan import landlock_reason, unsupported_reason
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
PROBE = ["-m", "tests.apps.confined_probe"]
UNSUPPORTED = unsupported_reason()
NO_LANDLOCK = UNSUPPORTED or landlock_reason()
needs_seccomp = pytest.mark.skipif(
    UNSUPPORTED is not None, reason=f"this machine cannot confine: {UNSUPPORTED}"
)
needs_confinement = pytest.mark.skipif(
    NO_LANDLOCK is not None, reason=f"this kernel cannot confine: {NO_LANDLOCK}"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing users needs root")

# Ways out that are refused whatever ports the plan allows.
ALWAYS_REFUSED = {
    "udp": "EACCES",
    "udp6": "EACCES",
    "vsock": "EACCES",
    "sctp": "EACCES",
    "packet": "EACCES",
    "bind_other_port": "EACCES",
    "io_uring": "ENOSYS",
    "signal_parent": "EPERM",
    "setns": "EPERM",
}
ALWAYS_ALLOWED = {"unix": "ok", "tcp": "ok", "tcp6": "ok"}


def run(
    command: list[str], pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        pass_fds=pass_fds,
    )


def launcher(*options: str) -> list[str]:
    return [sys.executable, "-m", "sandbox.confine", *options, "--"]


EGRESS_POLICY = """\
egress:
  default: deny
  rules:
    - name: origin
      hosts: ["127.0.0.1"]
      ports: [{port}]
      allow_cidrs: [127.0.0.1/32]
"""


def sandbox_run(policy: Path, audit: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sandbox",
        "run",
        "--policy",
        str(policy),
        "--upstream",
        f"http://127.0.0.1:{free_port()}",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--audit-log",
        str(audit),
        "--egress-listen",
        "127.0.0.1:0",
        *extra,
    ]


def run_sandboxed_probe(
    command: list[str],
    python: str,
    result: Path,
    origin_port: int,
    targets: dict[str, tuple[str, int]] | None = None,
) -> tuple[dict[str, Any], str]:
    """The probe's findings and the sandbox's log; ``targets`` are more
    connections for the probe to try, by name."""
    probe = [python, *PROBE, str(result), str(origin_port), "1"]
    if targets:
        probe.append(json.dumps(targets))
    completed = run([*command, "--", *probe])
    # The app exits once it has written its findings; the sandbox follows.
    assert completed.returncode == 1, completed.stderr
    return json.loads(result.read_text()), completed.stderr
