"""The policy bundle as clients fetch it: every file, byte for byte.

Read once at start and checked against the hashes the loader computed, so
what is served is exactly what is enforced; a file changed since loading
stops the start instead of serving something else.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from sandbox.errors import PolicyError, PolicyProblem
from sandbox.policy.model import Policy

MEDIA_TYPE = "application/vnd.policy-sandbox.bundle+json"


def read_bundle(policy: Policy) -> dict[str, Any]:
    """The JSON document ``GET /.well-known/sandbox/policy`` returns."""
    files = []
    for file in policy.files:
        content = (Path(policy.root) / file.path).read_bytes()
        if hashlib.sha256(content).hexdigest() != file.sha256:
            problem = PolicyProblem(
                str(Path(policy.root) / file.path),
                None,
                "",
                "changed since the policy was loaded; restart to enforce it",
            )
            raise PolicyError([problem])
        files.append(
            {
                "path": file.path,
                "sha256": file.sha256,
                "content": base64.b64encode(content).decode("ascii"),
            }
        )
    return {"name": policy.name, "hash": policy.hash, "files": files}
