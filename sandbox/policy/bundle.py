"""The policy bundle: which files it holds and the hash a client checks.

Hash formula (recomputable with coreutils, see the README)::

    manifest = for each bundle file, sorted by path in byte order:
                   "<sha256 hex of its bytes>  <path relative to the folder>\\n"
    policy hash = "sha256:" + sha256 hex of the manifest

which is exactly ``sha256sum FILES... | sha256sum`` run in the policy folder
with the file names in ``LC_ALL=C sort`` order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from sandbox.errors import PolicyError, PolicyProblem
from sandbox.policy.model import BundleFile

POLICY_FILE_NAMES = ("policy.yaml", "policy.yml")


def locate_policy_file(path: Path) -> Path:
    """``path`` itself, or the policy file inside the folder ``path``."""
    if path.is_dir():
        for name in POLICY_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        names = " or ".join(POLICY_FILE_NAMES)
        raise PolicyError(
            [PolicyProblem(str(path), None, "", f"folder holds no {names}")]
        )
    if not path.exists():
        raise PolicyError(
            [PolicyProblem(str(path), None, "", "no such file or folder")]
        )
    return path


def bundle_files(contents: Mapping[str, bytes]) -> tuple[BundleFile, ...]:
    """The hashed files, in manifest order, from the bytes that were parsed."""
    names = sorted(contents, key=lambda name: name.encode())
    return tuple(
        BundleFile(name, hashlib.sha256(contents[name]).hexdigest()) for name in names
    )


def bundle_hash(files: Iterable[BundleFile]) -> str:
    return "sha256:" + hashlib.sha256(manifest(files).encode()).hexdigest()


def manifest(files: Iterable[BundleFile]) -> str:
    return "".join(f"{file.sha256}  {file.path}\n" for file in files)
