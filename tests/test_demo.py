"""The README's main command: the demo runs the whole story and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sandbox.confine.plan import landlock_reason, unsupported_reason

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_each_decision_and_a_verified_chain() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )

    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Client verified https://127.0.0.1:" in out
    assert "(as expected)" in out and "checks passed" in out
    assert "200, the app streams its answer:" in out
    assert "401 unauthorized - rule 'clinicians-summarize'" in out
    assert "the token has 'intern'" in out
    assert "403 forbidden - rule 'no-admin' denies GET /admin/users" in out
    assert "the app fetched model weights from the registry: 200" in out
    assert "the app's copy of the note to a paste site: 403 - no rule allows" in out
    if unsupported_reason() is None and landlock_reason() is None:
        assert (
            "the same copy, bypassing the proxy: cannot connect: Permission denied "
            "(the kernel's answer: the app is confined to the egress proxy)"
        ) in out
    elif unsupported_reason() is None and os.geteuid() == 0:
        assert "cannot connect: Connection refused (nothing listens there" in out
    else:
        assert "this kernel cannot confine the app" in out
    assert "egress  deny  403 POST app -> 127.0.0.1:" in out
    assert "sandbox audit verify: ok: 14 records" in out
    assert "sandbox run stopped on SIGTERM with status 0" in out
