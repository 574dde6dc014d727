"""Egress decisions: pure functions of the policy, a destination and its
addresses.

A decision has two steps, so that a name no rule allows is never even
looked up in DNS (a lookup alone can leak data):

1. :func:`select_rules` matches host and port (and, for a request, scheme,
   method and path). A deny rule that matches ends it; otherwise it names
   the allow rules that match, or none (the section's default applies).
2. :func:`check_addresses` takes the resolved addresses and keeps the first
   allow rule under which every address may be reached: with
   ``block_private_networks`` a private or special address is refused
   unless the rule's ``allow_cidrs`` opens it. A declared destination
   (its address set by the operator, see ``sandbox.egress.declared``) skips
   this check; its rules still decide by name.

Deny rules override allow rules. Every decision names its rule (or
``default``) and a reason a person can read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sandbox.policy.addresses import IPAddress, blocked_range, in_networks
from sandbox.policy.decision import DEFAULT_RULE
from sandbox.policy.model import EgressRule, EgressSection


@dataclass(frozen=True, slots=True)
class EgressTarget:
    """Where the app wants to go; method and path only once a request is seen."""

    host: str  # canonical (see sandbox.policy.addresses.canonical_host)
    port: int
    scheme: str | None = None  # None for a CONNECT tunnel not (yet) opened
    method: str | None = None
    path: str | None = None  # normalised
    # For decision engines that read the whole request; the YAML rules do not.
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    # The operator declared the address: private ranges are no reason to refuse.
    declared: bool = False

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def describe(self) -> str:
        where = f"{_shown_host(self.host)}:{self.port}"
        if not self.is_request:
            return f"a connection to {where}"
        return f"{self.method} {self.scheme}://{where}{self.path}"


@dataclass(frozen=True, slots=True)
class EgressDecision:
    allow: bool
    rule: str
    reason: str
    # The rule that allowed, for its limits; None for a refusal or a default.
    allowed_by: EgressRule | None = None
    # The checked address to connect to (never looked up again).
    address: IPAddress | None = None
    # A CONNECT whose requests must be seen: TLS is intercepted.
    intercept: bool = False


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of matching rules, before any address is known."""

    refusal: EgressDecision | None
    candidates: tuple[EgressRule, ...] = ()

    @property
    def needs_addresses(self) -> bool:
        return self.refusal is None


def select_rules(section: EgressSection, target: EgressTarget) -> Selection:
    what = target.describe()
    for rule in section.rules:
        if rule.effect == "deny" and _destination_matches(rule, target):
            reason = f"rule {rule.name!r} denies {what}"
            return Selection(EgressDecision(False, rule.name, reason))
    candidates = tuple(
        rule
        for rule in section.rules
        if rule.effect == "allow"
        and _destination_matches(rule, target)
        and _request_matches(rule, target)
    )
    if candidates or section.default == "allow":
        return Selection(None, candidates)
    return Selection(EgressDecision(False, DEFAULT_RULE, _unmatched(section, target)))


def check_addresses(
    section: EgressSection,
    target: EgressTarget,
    selection: Selection,
    addresses: Sequence[IPAddress],
) -> EgressDecision:
    """Decide on ``selection`` now that ``target.host`` resolved to ``addresses``."""
    if selection.refusal is not None:
        return selection.refusal
    if not addresses:
        reason = f"{_shown_host(target.host)} has no address to connect to"
        return EgressDecision(False, DEFAULT_RULE, reason)
    what = target.describe()
    first_refusal: EgressDecision | None = None
    for rule in selection.candidates:
        blocked = _blocked_address(section, rule, target, addresses)
        if blocked is None:
            return _allowed(rule, target, selection, addresses[0], what)
        first_refusal = first_refusal or EgressDecision(
            False, rule.name, f"rule {rule.name!r} matches {what} but {blocked}"
        )
    if first_refusal is not None:
        return first_refusal
    blocked = _blocked_address(section, None, target, addresses)
    if blocked is not None:
        return EgressDecision(False, DEFAULT_RULE, f"{what} is refused: {blocked}")
    reason = f"no rule matches {what}; default allows"
    return EgressDecision(True, DEFAULT_RULE, reason, address=addresses[0])


def decide_egress(
    section: EgressSection, target: EgressTarget, addresses: Sequence[IPAddress]
) -> EgressDecision:
    """Both steps at once, for callers that already hold the addresses."""
    return check_addresses(section, target, select_rules(section, target), addresses)


def address_refusal(
    section: EgressSection, target: EgressTarget, addresses: Sequence[IPAddress]
) -> EgressDecision | None:
    """The sandbox's own refusal of ``addresses``, whatever the rules say.

    Where Rego decides egress there are no rules to open a range, so with
    ``block_private_networks`` every private or special address is refused,
    unless the operator declared it for the destination.
    """
    if not addresses:
        reason = f"{_shown_host(target.host)} has no address to connect to"
        return EgressDecision(False, DEFAULT_RULE, reason)
    blocked = _blocked_address(section, None, target, addresses)
    if blocked is None:
        return None
    reason = (
        f"{target.describe()} is refused: {blocked} "
        "(egress.block_private_networks is on)"
    )
    return EgressDecision(False, DEFAULT_RULE, reason)


def host_matches(pattern: str, host: str) -> bool:
    """``*.suffix`` matches names one or more labels below suffix, never suffix."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def _allowed(
    rule: EgressRule,
    target: EgressTarget,
    selection: Selection,
    address: IPAddress,
    what: str,
) -> EgressDecision:
    # A tunnel is opened blind only when no matching rule needs to see requests.
    intercept = not target.is_request and any(
        candidate.intercepts for candidate in selection.candidates
    )
    reason = f"rule {rule.name!r} allows {what}"
    if intercept:
        reason += " (requests inside are checked)"
    return EgressDecision(True, rule.name, reason, rule, address, intercept)


def _destination_matches(rule: EgressRule, target: EgressTarget) -> bool:
    if rule.ports and target.port not in rule.ports:
        return False
    return any(host_matches(pattern, target.host) for pattern in rule.hosts)


def _request_matches(rule: EgressRule, target: EgressTarget) -> bool:
    """At CONNECT time only host and port are known, so any allow rule may hold."""
    if not target.is_request:
        return True
    if rule.schemes and target.scheme not in rule.schemes:
        return False
    if rule.methods and target.method not in rule.methods:
        return False
    path = target.path or "/"
    return not rule.paths or any(pattern.matches(path) for pattern in rule.paths)


def _blocked_address(
    section: EgressSection,
    rule: EgressRule | None,
    target: EgressTarget,
    addresses: Sequence[IPAddress],
) -> str | None:
    """Why one of ``addresses`` may not be reached under ``rule``, or None."""
    if not section.block_private_networks or target.declared:
        return None
    opened = rule.allow_cidrs if rule is not None else ()
    for address in addresses:
        label = blocked_range(address)
        if label is not None and not in_networks(address, opened):
            return f"address {address} is in {label}"
    return None


def _unmatched(section: EgressSection, target: EgressTarget) -> str:
    what = target.describe()
    near = [
        rule.name
        for rule in section.rules
        if rule.effect == "allow"
        and any(host_matches(pattern, target.host) for pattern in rule.hosts)
    ]
    if not near:
        return f"no rule allows {what}"
    names = ", ".join(repr(name) for name in near)
    which = "rule" if len(near) == 1 else "rules"
    # "rule 'a' allows this host only for ..." reads right for one or many.
    allows = "allows" if len(near) == 1 else "allow"
    return (
        f"no rule allows {what} ({which} {names} {allows} this host only for "
        "other ports or requests)"
    )


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
