"""What one policy allows that another refused, found by probing both.

Pure: two loaded :class:`~sandbox.policy.model.Policy` values go in, a
:class:`PolicyDiff` comes out. The probes are a finite set of requests and
destinations built from the rules of *both* policies (every method, path
pattern, claim value, host, port and range they name, plus one of each that
none names), each decided under OLD and NEW by the same pure functions the
YAML engine uses. A probe set is representative, not exhaustive: a
difference found is real, an empty diff is not a proof of equivalence.

A direction Rego decides in either policy is not probed (Rego is not
analysed) unless both policies carry the same Rego modules and data.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sandbox.policy.addresses import IPAddress
from sandbox.policy.decision import decide_ingress
from sandbox.policy.egress_decision import EgressTarget, decide_egress
from sandbox.policy.input_document import EGRESS, INGRESS
from sandbox.policy.inputs import Identity, IngressRequest
from sandbox.policy.model import ClaimValue, EgressRule, IngressRule, Policy
from sandbox.policy.paths import PathPattern

PUBLIC_ADDRESS = ipaddress.ip_address("203.0.113.10")  # data only, never contacted
PRIVATE_ADDRESSES = tuple(
    ipaddress.ip_address(text) for text in ("10.255.0.1", "192.168.255.1")
)
SPARE_METHODS = ("DELETE", "PATCH", "PUT", "POST", "GET", "OPTIONS", "TRACE")
SPARE_PORTS = (443, 80, 8443, 9)
SPARE_SCHEMES = ("https", "http", "wss", "ws")
UNNAMED_PATH = "/unnamed-by-any-rule"
UNNAMED_HOST = "unnamed-by-any-rule.example"
SAMPLE_SEGMENTS = ("x", "y")
# Beyond this many tokens, claims are varied one at a time instead of jointly.
MAX_IDENTITIES = 512
_DIRECTION_WORDS = {INGRESS: "inbound requests", EGRESS: "outbound connections"}


@dataclass(frozen=True, slots=True)
class Outcome:
    allow: bool
    rule: str
    max_body: int | None = None

    def same_as(self, other: Outcome) -> bool:
        """The same verdict and limit; which rule decided does not matter."""
        return (self.allow, self.max_body) == (other.allow, other.max_body)

    def describe(self) -> str:
        verdict = "allow" if self.allow else "deny"
        limit = f", max_body {self.max_body}" if self.max_body is not None else ""
        return f"{verdict} ({self.rule}{limit})"


@dataclass(frozen=True, slots=True)
class Change:
    """One probe decided differently: where it goes, who asks, and both outcomes."""

    where: str
    who: str
    old: Outcome
    new: Outcome

    def describe(self) -> str:
        subject = f"{self.where}, {self.who}" if self.who else self.where
        return f"{subject}: OLD {self.old.describe()} -> NEW {self.new.describe()}"


@dataclass(frozen=True, slots=True)
class Comparison:
    """One direction: the probes compared and what differed, or why not compared."""

    direction: str
    compared: int = 0
    changes: tuple[Change, ...] = ()
    not_compared: str = ""
    # Rego decides and was not analysed: nothing can be said either way.
    unknown: bool = False


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    old_hash: str
    new_hash: str
    comparisons: tuple[Comparison, ...]

    def _changes(self) -> Iterator[Change]:
        for comparison in self.comparisons:
            yield from comparison.changes

    @property
    def widened(self) -> tuple[Change, ...]:
        return tuple(c for c in self._changes() if c.new.allow and not c.old.allow)

    @property
    def narrowed(self) -> tuple[Change, ...]:
        return tuple(c for c in self._changes() if c.old.allow and not c.new.allow)

    @property
    def limits_changed(self) -> tuple[Change, ...]:
        return tuple(c for c in self._changes() if c.old.allow == c.new.allow)

    @property
    def compared(self) -> int:
        return sum(comparison.compared for comparison in self.comparisons)

    @property
    def has_differences(self) -> bool:
        return any(comparison.changes for comparison in self.comparisons)

    @property
    def fully_compared(self) -> bool:
        return not any(comparison.unknown for comparison in self.comparisons)


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """Probe ``old`` and ``new`` alike and keep every probe they decide apart."""
    comparisons = (
        _rego_comparison(old, new, INGRESS) or _compare_ingress(old, new),
        _rego_comparison(old, new, EGRESS) or _compare_egress(old, new),
    )
    return PolicyDiff(old.hash, new.hash, comparisons)


def _rego_comparison(old: Policy, new: Policy, direction: str) -> Comparison | None:
    deciders = [
        label
        for label, policy in (("OLD", old), ("NEW", new))
        if policy.rego is not None and direction in policy.rego.decides
    ]
    if not deciders:
        return None
    what = _DIRECTION_WORDS[direction]
    if len(deciders) == 2 and _same_rego(old, new):
        same = f"{what}: the same Rego modules and data in both, so unchanged"
        return Comparison(direction, not_compared=same)
    where = " and ".join(deciders)
    reason = f"{what}: Rego decides in {where}; not compared (Rego is not analysed)"
    return Comparison(direction, not_compared=reason, unknown=True)


def _same_rego(old: Policy, new: Policy) -> bool:
    if old.rego is None or new.rego is None:
        return False
    return (
        old.rego.modules == new.rego.modules
        and old.rego.data_json == new.rego.data_json
        and old.egress.block_private_networks == new.egress.block_private_networks
    )


# Ingress


@dataclass(frozen=True, slots=True)
class _IngressProbe:
    route: str
    request: IngressRequest
    who: str


def _compare_ingress(old: Policy, new: Policy) -> Comparison:
    rules = old.ingress.rules + new.ingress.rules
    changes = []
    probes = list(_ingress_probes(rules))
    for probe in probes:
        before = _ingress_outcome(old, probe.request)
        after = _ingress_outcome(new, probe.request)
        if not before.same_as(after):
            changes.append(Change(probe.route, probe.who, before, after))
    return Comparison(INGRESS, len(probes), tuple(changes))


def _ingress_outcome(policy: Policy, request: IngressRequest) -> Outcome:
    decision = decide_ingress(policy.ingress, request)
    limit = decision.max_body if decision.allow else None
    return Outcome(decision.allow, decision.rule, limit)


def _ingress_probes(rules: Sequence[IngressRule]) -> Iterator[_IngressProbe]:
    named = {method for rule in rules for method in rule.methods if method != "*"}
    methods = [*sorted(named), _spare(SPARE_METHODS, named, "PROBE")]
    routes = list(_sample_paths(p for rule in rules for p in rule.paths))
    identities = list(_identities(rules))
    seen: set[tuple[str, str, str]] = set()
    for method, (label, path), (who, identity) in itertools.product(
        methods, routes, identities
    ):
        if (method, path, who) in seen:
            continue
        seen.add((method, path, who))
        request = IngressRequest(method, path, identity)
        yield _IngressProbe(f"{method} {label}", request, who)


def _sample_paths(patterns: Iterable[PathPattern]) -> Iterator[tuple[str, str]]:
    """(label, path) pairs: each pattern's sample paths, then one no rule names."""
    for pattern in patterns:
        for path in _expand(pattern.text):
            shown = pattern.text if path == pattern.text else f"{pattern.text} ({path})"
            yield shown, path
    yield f"{UNNAMED_PATH} (a path no rule names)", UNNAMED_PATH


def _expand(text: str) -> list[str]:
    choices: list[list[list[str]]] = []
    for segment in text[1:].split("/"):
        if segment == "**":
            choices.append([[], [SAMPLE_SEGMENTS[0]], list(SAMPLE_SEGMENTS)])
        elif segment == "*":
            choices.append([[SAMPLE_SEGMENTS[0]]])
        else:
            choices.append([[segment]])
    joined = (itertools.chain.from_iterable(p) for p in itertools.product(*choices))
    paths = ["/" + "/".join(parts) for parts in joined]
    return list(dict.fromkeys(paths))


def _identities(rules: Sequence[IngressRule]) -> Iterator[tuple[str, Identity | None]]:
    yield "anonymous", None
    values = _claim_values(rules)
    names = list(values)
    for combination in _claim_combinations([values[name] for name in names]):
        claims = dict(zip(names, combination, strict=True))
        shown = ", ".join(f"{name}={value!r}" for name, value in claims.items())
        who = f"token with {shown}" if shown else "token with no claims"
        yield who, Identity("policy-diff", "probe", claims)


def _claim_values(rules: Sequence[IngressRule]) -> dict[str, list[object]]:
    """Per claim: each value a condition names, lists for ``contains``, one more."""
    scalars: dict[str, list[ClaimValue]] = {}
    members: dict[str, list[ClaimValue]] = {}
    for condition in (c for rule in rules for c in rule.claims):
        scalars.setdefault(condition.claim, []).extend(condition.equals_any)
        members.setdefault(condition.claim, [])
        if condition.contains is not None:
            members[condition.claim].append(condition.contains)
    values: dict[str, list[object]] = {}
    for claim, named in scalars.items():
        listed = _unique(members[claim])
        unnamed = _spare_value(named + listed)
        options: list[object] = list(_unique(named))
        if listed:
            options += [[member] for member in listed]
            options += [listed] if len(listed) > 1 else []
            options.append([unnamed])
        values[claim] = options + ([unnamed] if named or not listed else [])
    return values


def _claim_combinations(options: list[list[object]]) -> Iterator[tuple[object, ...]]:
    total = 1
    for choice in options:
        total *= len(choice)
    if total <= MAX_IDENTITIES:
        yield from itertools.product(*options)
        return
    base = tuple(choice[0] for choice in options)
    yield base
    for index, choice in enumerate(options):
        for value in choice[1:]:
            yield (*base[:index], value, *base[index + 1 :])


def _unique(values: Iterable[ClaimValue]) -> list[ClaimValue]:
    # 1 and True are equal in Python but not as claims (see decision._same).
    return list({(type(value), value): value for value in values}.values())


def _spare_value(named: Sequence[object]) -> str:
    shown = {str(value) for value in named}
    candidates = ("other", *(f"other{n}" for n in range(1, len(shown) + 1)))
    return next(value for value in candidates if value not in shown)


def _spare(candidates: Sequence[str], named: set[str], fallback: str) -> str:
    return next((c for c in candidates if c not in named), fallback)


# Egress


@dataclass(frozen=True, slots=True)
class _EgressProbe:
    target: EgressTarget
    address: IPAddress

    @property
    def where(self) -> str:
        return f"{self.target.describe()} at {self.address}"


def _compare_egress(old: Policy, new: Policy) -> Comparison:
    rules = old.egress.rules + new.egress.rules
    probes = list(_egress_probes(rules))
    tunnels_differ: set[tuple[str, int, IPAddress]] = set()
    changes = []
    for probe in probes:
        before = _egress_outcome(old, probe)
        after = _egress_outcome(new, probe)
        key = (probe.target.host, probe.target.port, probe.address)
        if before.same_as(after) or key in tunnels_differ:
            continue
        if not probe.target.is_request:
            # Requests inside a tunnel decided apart would only repeat it.
            tunnels_differ.add(key)
        changes.append(Change(probe.where, "", before, after))
    return Comparison(EGRESS, len(probes), tuple(changes))


def _egress_outcome(policy: Policy, probe: _EgressProbe) -> Outcome:
    decided = decide_egress(policy.egress, probe.target, [probe.address])
    return Outcome(decided.allow, decided.rule)


def _egress_probes(rules: Sequence[EgressRule]) -> Iterator[_EgressProbe]:
    addresses = _addresses(rules)
    destinations = list(itertools.product(_hosts(rules), _ports(rules), addresses))
    for host, port, address in destinations:
        yield _EgressProbe(EgressTarget(host, port), address)
    requests = list(_requests(rules))
    for (host, port, address), (scheme, method, path) in itertools.product(
        destinations, requests
    ):
        yield _EgressProbe(EgressTarget(host, port, scheme, method, path), address)


def _hosts(rules: Sequence[EgressRule]) -> list[str]:
    hosts: list[str] = []
    for pattern in (p for rule in rules for p in rule.hosts):
        suffix = pattern[2:] if pattern.startswith("*.") else ""
        hosts += [f"a.{suffix}", suffix] if suffix else [pattern]
    return list(dict.fromkeys([*hosts, UNNAMED_HOST]))


def _ports(rules: Sequence[EgressRule]) -> list[int]:
    named = {port for rule in rules for port in rule.ports}
    spare = next((p for p in SPARE_PORTS if p not in named), max(named, default=0) + 1)
    return [*sorted(named), spare]


def _addresses(rules: Sequence[EgressRule]) -> list[IPAddress]:
    networks = [net for rule in rules for net in rule.allow_cidrs]
    inside = [net[1] if net.num_addresses > 1 else net[0] for net in networks]
    outside = [
        address
        for address in PRIVATE_ADDRESSES
        if not any(address in net for net in networks if net.version == 4)
    ]
    return list(dict.fromkeys([PUBLIC_ADDRESS, *inside, *outside[:1]]))


def _requests(rules: Sequence[EgressRule]) -> Iterator[tuple[str, str, str]]:
    """(scheme, method, path) for rules that look inside; none when no rule does."""
    looking = [rule for rule in rules if rule.intercepts]
    if not looking:
        return
    schemes = {s for rule in looking for s in rule.schemes}
    methods = {m for rule in looking for m in rule.methods}
    scheme_list = [*sorted(schemes), _spare(SPARE_SCHEMES, schemes, "ftp")]
    method_list = [*sorted(methods), _spare(SPARE_METHODS, methods, "PROBE")]
    paths = [path for _, path in _sample_paths(p for r in looking for p in r.paths)]
    yield from itertools.product(scheme_list, method_list, dict.fromkeys(paths))
