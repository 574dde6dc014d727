"""Load a policy bundle: read, validate every field, compile, hash.

All problems are collected and raised together as one ``PolicyError`` whose
lines read ``file:line: field.path: message``. Unknown fields are errors,
because a misspelt condition must never silently widen access.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sandbox.errors import PolicyError, PolicyProblem
from sandbox.policy import bundle
from sandbox.policy.egress_rules import read_egress_rules
from sandbox.policy.fields import FieldReader
from sandbox.policy.model import (
    DEFAULT_AUDIT_PATH,
    EFFECTS,
    MODES,
    AuditConfig,
    EgressSection,
    IdentityConfig,
    IngressSection,
    Issuer,
    Policy,
)
from sandbox.policy.rego_section import read_rego_section
from sandbox.policy.rules import read_ingress_rules
from sandbox.policy.source import compose_located

SUPPORTED_VERSIONS = (1,)
_TOP_FIELDS = {
    "version",
    "name",
    "mode",
    "identity",
    "ingress",
    "egress",
    "audit",
    "rego",
}
# Test cases beside the policy (``sandbox policy test``) are part of the bundle.
TESTS_FILE = "tests.yaml"


def load_policy(path: str | Path) -> Policy:
    """Load the policy at ``path`` (a file, or a folder holding policy.yaml)."""
    policy_file = bundle.locate_policy_file(Path(path))
    root = policy_file.parent
    shown = str(path if Path(path).is_file() else policy_file)
    raw = _read_bytes(policy_file, shown)
    reader = _reader_for(raw, shown)
    policy = _read_policy(reader, root)
    if reader.problems or policy is None:
        raise PolicyError(sorted(reader.problems, key=lambda p: p.line or 0))
    return policy


def _read_bytes(policy_file: Path, shown: str) -> bytes:
    try:
        return policy_file.read_bytes()
    except OSError as exc:
        problem = PolicyProblem(shown, None, "", f"cannot read: {exc.strerror or exc}")
        raise PolicyError([problem]) from exc


def _reader_for(raw: bytes, shown: str) -> FieldReader:
    try:
        document = compose_located(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = PolicyProblem(shown, None, "", f"not UTF-8 text: {exc}")
        raise PolicyError([problem]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        message = f"not valid YAML: {getattr(exc, 'problem', None) or exc}"
        raise PolicyError([PolicyProblem(shown, line, "", message)]) from exc
    reader = FieldReader(shown, document, raw)
    for field_path, line, first in document.duplicates:
        reader.problem_at(
            line, field_path, f"duplicate key (first given on line {first})"
        )
    return reader


def _read_policy(reader: FieldReader, root: Path) -> Policy | None:
    top = reader.mapping("", reader.document.value, _TOP_FIELDS, {"version", "name"})
    if top is None:
        return None
    version = reader.choice("version", top.get("version"), SUPPORTED_VERSIONS)
    name = reader.identifier("name", top.get("name"))
    mode = reader.choice("mode", top.get("mode", "enforce"), MODES)
    identity = _read_identity(reader, top.get("identity", {}), root)
    ingress = _read_ingress(reader, top.get("ingress", {}), identity)
    egress = _read_egress(reader, top.get("egress", {}))
    audit = _read_audit(reader, top.get("audit", {}))
    rego = read_rego_section(reader, top, root)
    _read_tests_file(reader, root)
    if reader.problems:
        return None
    files = bundle.bundle_files(reader.bundle_contents())
    return Policy(
        version=version,
        name=name,
        mode=mode,
        identity=identity,
        ingress=ingress,
        egress=egress,
        audit=audit,
        root=str(root),
        files=files,
        hash=bundle.bundle_hash(files),
        rego=rego,
    )


def _read_tests_file(reader: FieldReader, root: Path) -> None:
    if (root / TESTS_FILE).is_file():
        reader.bundle_reference(TESTS_FILE, TESTS_FILE, root)


def _read_identity(reader: FieldReader, value: Any, root: Path) -> IdentityConfig:
    section = reader.mapping(
        "identity", value, {"leeway", "issuers", "forward_token"}, set()
    )
    if section is None:
        return IdentityConfig()
    issuers = [
        _read_issuer(reader, f"identity.issuers[{index}]", item, root)
        for index, item in enumerate(
            reader.sequence("identity.issuers", section.get("issuers", []))
        )
    ]
    reader.unique(
        "identity.issuers", [i.issuer if i else None for i in issuers], "issuer"
    )
    return IdentityConfig(
        leeway=reader.duration("identity.leeway", section.get("leeway", 0)),
        issuers=tuple(issuer for issuer in issuers if issuer is not None),
        forward_token=reader.boolean(
            "identity.forward_token", section.get("forward_token", False)
        ),
    )


def _read_issuer(
    reader: FieldReader, path: str, value: Any, root: Path
) -> Issuer | None:
    fields = {"issuer", "audiences", "algorithms", "jwks"}
    item = reader.mapping(path, value, fields, fields)
    if item is None:
        return None
    algorithms = reader.algorithms(f"{path}.algorithms", item.get("algorithms"))
    jwks_path = reader.bundle_reference(f"{path}.jwks", item.get("jwks"), root)
    keys = _read_jwks(reader, f"{path}.jwks", root, jwks_path, algorithms)
    return Issuer(
        issuer=reader.string(f"{path}.issuer", item.get("issuer")),
        audiences=tuple(reader.strings(f"{path}.audiences", item.get("audiences"))),
        algorithms=tuple(algorithms),
        jwks_path=jwks_path,
        keys=keys,
    )


def _read_jwks(
    reader: FieldReader, path: str, root: Path, jwks_path: str, algorithms: list[str]
) -> dict[str, Any]:
    from sandbox.identity.keys import parse_jwks

    if not jwks_path or not algorithms:
        return {}
    try:
        document = json.loads(reader.referenced[jwks_path])
        return parse_jwks(document, algorithms)
    except (OSError, ValueError) as exc:
        reader.problem(path, f"key set {jwks_path!r} is not usable: {exc}")
        return {}


def _read_ingress(
    reader: FieldReader, value: Any, identity: IdentityConfig
) -> IngressSection:
    section = reader.mapping("ingress", value, {"default", "rules"}, set())
    if section is None:
        return IngressSection()
    rules = read_ingress_rules(reader, section.get("rules", []), identity)
    default = reader.choice("ingress.default", section.get("default", "deny"), EFFECTS)
    return IngressSection(default=default, rules=rules)


def _read_egress(reader: FieldReader, value: Any) -> EgressSection:
    fields = {"default", "rules", "block_private_networks"}
    section = reader.mapping("egress", value, fields, set())
    if section is None:
        return EgressSection()
    return EgressSection(
        default=reader.choice(
            "egress.default", section.get("default", "deny"), EFFECTS
        ),
        block_private_networks=reader.boolean(
            "egress.block_private_networks", section.get("block_private_networks", True)
        ),
        rules=read_egress_rules(reader, section.get("rules", [])),
    )


def _read_audit(reader: FieldReader, value: Any) -> AuditConfig:
    section = reader.mapping("audit", value, {"path", "fsync"}, set())
    if section is None:
        return AuditConfig()
    return AuditConfig(
        path=reader.string("audit.path", section.get("path", DEFAULT_AUDIT_PATH)),
        fsync=reader.boolean("audit.fsync", section.get("fsync", False)),
    )
