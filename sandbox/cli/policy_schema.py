"""``sandbox policy schema``: print the JSON Schema of the policy format.

Editors that speak the YAML language server validate a policy.yaml against
it as the data owner types; the loader stays the authority.
"""

from __future__ import annotations

import argparse
from importlib import resources

SCHEMA_PACKAGE = "sandbox.policy.schema"
SCHEMA_FILE = "policy-v1.schema.json"


def schema_text() -> str:
    """The schema shipped in the package, as its JSON text."""
    return resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_FILE).read_text("utf-8")


def schema_command(args: argparse.Namespace) -> int:
    print(schema_text(), end="")
    return 0
