"""The validated policy: plain, immutable data the request path can trust.

Everything here was checked by the loader; nothing in this module does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal

from sandbox.policy.paths import PathPattern

Effect = Literal["allow", "deny"]
Mode = Literal["enforce", "report"]
ClaimValue = str | int | float | bool
EFFECTS: tuple[Effect, ...] = ("allow", "deny")
MODES: tuple[Mode, ...] = ("enforce", "report")
DEFAULT_AUDIT_PATH = "audit/decisions.jsonl"


@dataclass(frozen=True, slots=True)
class Issuer:
    """One token issuer the data owner trusts, with its pinned keys."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_path: str
    # kid -> public key (a ``jwt.PyJWK``), parsed and checked at load.
    keys: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    leeway: float = 0.0
    issuers: tuple[Issuer, ...] = ()
    # Whether the caller's bearer token is passed on to the app; by default
    # the app sees only the verified identity headers.
    forward_token: bool = False


@dataclass(frozen=True, slots=True)
class ClaimCondition:
    """``role: [a, b]`` (equals one of) or ``groups: {contains: x}``."""

    claim: str
    equals_any: tuple[ClaimValue, ...] = ()
    contains: ClaimValue | None = None

    def describe(self) -> str:
        if self.contains is not None:
            return f"claim {self.claim!r} to contain {self.contains!r}"
        return f"claim {self.claim!r} to be one of {list(self.equals_any)!r}"


@dataclass(frozen=True, slots=True)
class CallerKey:
    """Whose requests a limit counts together."""

    kind: Literal["subject", "source", "claim"]
    claim: str = ""

    def describe(self) -> str:
        return f"claim {self.claim!r}" if self.kind == "claim" else self.kind


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate: {per_second: 5, burst: 10, key: subject}``."""

    per_second: float
    burst: float
    key: CallerKey


@dataclass(frozen=True, slots=True)
class Quota:
    """``quota: {requests: 1000, per: 1d}`` or ``{bytes: 10MiB, per: 1h}``."""

    limit: int
    unit: Literal["requests", "bytes"]
    window: float  # seconds
    key: CallerKey


@dataclass(frozen=True, slots=True)
class IngressRule:
    name: str
    effect: Effect
    methods: frozenset[str]  # {"*"} for any method
    paths: tuple[PathPattern, ...]
    anonymous: bool = False
    claims: tuple[ClaimCondition, ...] = ()
    max_body: int | None = None
    rate: RateLimit | None = None
    quota: Quota | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class IngressSection:
    default: Effect = "deny"
    rules: tuple[IngressRule, ...] = ()


@dataclass(frozen=True, slots=True)
class EgressRule:
    name: str
    effect: Effect
    hosts: tuple[str, ...]  # lower-case punycode; "*.suffix" for subdomains
    ports: tuple[int, ...] = ()  # empty: any port
    line: int | None = None
    # Empty: any. Naming schemes, methods, paths or a body limit means the
    # rule must see requests, so TLS to its hosts is intercepted.
    schemes: frozenset[str] = frozenset()
    methods: frozenset[str] = frozenset()
    paths: tuple[PathPattern, ...] = ()
    max_request_body: int | None = None
    # Bytes the app may send to one destination (host:port) per window.
    max_bytes_out: int | None = None
    bytes_out_window: float = 0.0
    # Private ranges this rule opens despite block_private_networks.
    allow_cidrs: tuple[IPv4Network | IPv6Network, ...] = ()

    @property
    def intercepts(self) -> bool:
        return bool(
            self.schemes
            or self.methods
            or self.paths
            or self.max_request_body is not None
        )


@dataclass(frozen=True, slots=True)
class EgressSection:
    default: Effect = "deny"
    block_private_networks: bool = True
    rules: tuple[EgressRule, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditConfig:
    # Relative paths are resolved against the working directory of
    # ``sandbox run``, never inside the policy bundle.
    path: str = DEFAULT_AUDIT_PATH
    fsync: bool = False


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One file covered by the policy hash, by its path inside the bundle."""

    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class RegoModule:
    """One Rego module: its path in the bundle and the exact text hashed."""

    path: str
    source: str


@dataclass(frozen=True, slots=True)
class RegoConfig:
    """Directions decided by Rego, with the modules and data that decide."""

    modules: tuple[RegoModule, ...]
    # The data files merged into one document (their top-level keys differ),
    # as JSON text, in the order given.
    data_paths: tuple[str, ...] = ()
    data_json: str = "{}"
    decides: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    name: str
    mode: Mode
    identity: IdentityConfig
    ingress: IngressSection
    egress: EgressSection
    audit: AuditConfig
    # Folder that relative references resolve against, and the hashed files.
    root: str = ""
    files: tuple[BundleFile, ...] = field(default_factory=tuple)
    hash: str = ""
    # None: every direction is decided by the YAML rules.
    rego: RegoConfig | None = None
