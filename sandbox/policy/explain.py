"""A plain-language account of a loaded policy, and the rules worth a look.

Pure: a :class:`~sandbox.policy.model.Policy` goes in, an :class:`Account`
comes out (sections of sentences, and risks naming their rule). Rendering
for a terminal or Markdown is the command line's business.

The coverage checks (a rule shadowed by a deny rule, or made redundant by
an earlier allow rule) compare patterns as text: equal patterns, or
``/**`` and ``/prefix/**`` over what lies below the prefix. When they
cannot tell, they stay silent, so a flag is always a real finding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sandbox.policy.input_document import EGRESS, INGRESS
from sandbox.policy.model import (
    ClaimCondition,
    EgressRule,
    EgressSection,
    IdentityConfig,
    IngressRule,
    IngressSection,
    Policy,
    RegoConfig,
)
from sandbox.policy.paths import PathPattern

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE", "*"})
MAX_QUIET_LEEWAY = 300.0
_SIZE_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DURATION_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    sentences: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Risk:
    """One risky setting: a short kind, where it sits, and why it matters."""

    kind: str
    where: str
    message: str


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    hash: str
    sections: tuple[Section, ...]
    risks: tuple[Risk, ...]


def explain(policy: Policy) -> Account:
    """Who may call what, where the app may connect, and what looks risky."""
    sections = (
        Section("Overview", tuple(_overview(policy))),
        Section("Identity", tuple(_identity(policy.identity))),
        Section("Ingress: who may call the app", tuple(_ingress(policy))),
        Section("Egress: where the app may connect", tuple(_egress(policy))),
    )
    return Account(policy.name, policy.hash, sections, tuple(find_risks(policy)))


def find_risks(policy: Policy) -> list[Risk]:
    risks = list(_setting_risks(policy))
    if not _rego_decides(policy, INGRESS):
        risks += _ingress_risks(policy.ingress)
    if not _rego_decides(policy, EGRESS):
        risks += _egress_risks(policy.egress)
    return risks


def _overview(policy: Policy) -> Iterable[str]:
    if policy.mode == "report":
        yield (
            "Mode: report. Every request and connection is let through; what "
            "enforce mode would refuse is only recorded in the audit log."
        )
    else:
        yield "Mode: enforce. Refusals are enforced."
    fsync = "on" if policy.audit.fsync else "off"
    yield f"Decisions are recorded in {policy.audit.path} (fsync {fsync})."


def _identity(identity: IdentityConfig) -> Iterable[str]:
    if not identity.issuers:
        yield "No token issuer is trusted: only anonymous rules can let callers in."
    for issuer in identity.issuers:
        yield (
            f"Tokens from {issuer.issuer} are accepted for audience "
            f"{_either(issuer.audiences)}, signed with "
            f"{_either(issuer.algorithms)} by a key in {issuer.jwks_path}."
        )
    if identity.issuers:
        yield f"Clock leeway on exp, nbf and iat: {_duration(identity.leeway)}."
        forwarded = "is" if identity.forward_token else "is not"
        yield f"The caller's bearer token {forwarded} passed on to the app."


def _ingress(policy: Policy) -> Iterable[str]:
    if _rego_decides(policy, INGRESS):
        yield _rego_sentence(policy.rego, "inbound requests")
        return
    section = policy.ingress
    yield from (_ingress_rule(rule) for rule in section.rules)
    if any(rule.effect == "deny" for rule in section.rules):
        yield "Deny rules override allow rules wherever they sit in the list."
    if section.default == "allow":
        yield "Any other request is allowed (default: allow)."
    else:
        yield "Any other request is refused (default: deny)."


def _ingress_rule(rule: IngressRule) -> str:
    what = f"{_methods(rule.methods)} on {', '.join(p.text for p in rule.paths)}"
    if rule.effect == "deny":
        return f"Rule {rule.name!r} denies {what} to {_callers(rule, 'everyone')}."
    sentence = f"Rule {rule.name!r} allows {what} to {_callers(rule, None)}"
    if rule.max_body is not None:
        sentence += f", with bodies up to {_size(rule.max_body)}"
    if rule.rate is not None:
        sentence += (
            f", at most {rule.rate.per_second:g} requests a second (bursts of "
            f"{rule.rate.burst:g}) per {rule.rate.key.describe()}"
        )
    if rule.quota is not None:
        quota = rule.quota
        amount = (
            f"{quota.limit} requests"
            if quota.unit == "requests"
            else (_size(quota.limit))
        )
        sentence += (
            f", at most {amount} per {_duration(quota.window)} per "
            f"{quota.key.describe()}"
        )
    return sentence + "."


def _callers(rule: IngressRule, unconditional: str | None) -> str:
    if rule.anonymous:
        return "anyone, without a token"
    if rule.claims:
        conditions = " and ".join(_claim(claim) for claim in rule.claims)
        return f"callers whose verified token has {conditions}"
    return unconditional or "any caller with a verified token"


def _claim(claim: ClaimCondition) -> str:
    if claim.contains is not None:
        return f"{claim.claim!r} containing {claim.contains!r}"
    return f"{claim.claim!r} equal to {_either(repr(v) for v in claim.equals_any)}"


def _egress(policy: Policy) -> Iterable[str]:
    if _rego_decides(policy, EGRESS):
        yield _rego_sentence(policy.rego, "outbound connections")
    else:
        yield from (_egress_rule(rule) for rule in policy.egress.rules)
        if policy.egress.default == "allow":
            yield "Any other connection is allowed (default: allow)."
        else:
            yield "Any other connection is refused (default: deny)."
    if policy.egress.block_private_networks:
        yield (
            "Private and special addresses are refused unless a rule's "
            "allow_cidrs opens them."
        )
    else:
        yield "Private and special addresses are not blocked."


def _egress_rule(rule: EgressRule) -> str:
    hosts = ", ".join(rule.hosts)
    ports = f"port {_either(str(p) for p in rule.ports)}" if rule.ports else "any port"
    if rule.effect == "deny":
        return f"Rule {rule.name!r} denies connections to {hosts} on {ports}."
    sentence = f"Rule {rule.name!r} allows connections to {hosts} on {ports}"
    return sentence + "".join(_egress_details(rule)) + "."


def _egress_details(rule: EgressRule) -> Iterable[str]:
    if rule.intercepts:
        yield f"; the sandbox looks inside TLS and allows {_egress_requests(rule)}"
    else:
        yield "; TLS passes through untouched"
    if rule.max_request_body is not None:
        yield f"; request bodies up to {_size(rule.max_request_body)}"
    if rule.max_bytes_out is not None:
        window = _duration(rule.bytes_out_window)
        yield f"; at most {_size(rule.max_bytes_out)} per destination per {window}"
    if rule.allow_cidrs:
        yield f"; opens the private ranges {', '.join(map(str, rule.allow_cidrs))}"


def _egress_requests(rule: EgressRule) -> str:
    schemes = _either(sorted(rule.schemes)) if rule.schemes else "http or https"
    methods = _methods(rule.methods) if rule.methods else "any method"
    paths = ", ".join(p.text for p in rule.paths) if rule.paths else "any path"
    return f"{schemes} {methods} on {paths}"


def _rego_sentence(rego: RegoConfig | None, what: str) -> str:
    modules = ", ".join(module.path for module in rego.modules) if rego else ""
    data = f" (data: {', '.join(rego.data_paths)})" if rego and rego.data_paths else ""
    return f"Rego decides {what}, with the modules {modules}{data}."


def _setting_risks(policy: Policy) -> Iterable[Risk]:
    if policy.mode == "report":
        yield Risk("report-mode", "mode", "report mode enforces nothing")
    if policy.identity.leeway > MAX_QUIET_LEEWAY:
        yield Risk(
            "long-leeway",
            "identity.leeway",
            f"a leeway of {_duration(policy.identity.leeway)} (over 5 minutes) "
            "keeps expired tokens usable that long",
        )
    if not policy.egress.block_private_networks:
        yield Risk(
            "private-networks-open",
            "egress.block_private_networks",
            "false: the app may reach private and special addresses "
            "(cloud metadata, the host, the internal network)",
        )


def _ingress_risks(section: IngressSection) -> Iterable[Risk]:
    if section.default == "allow":
        yield Risk(
            "ingress-default-allow",
            "ingress.default",
            "allow: any request no rule names reaches the app",
        )
    rules = section.rules
    for index, rule in enumerate(rules):
        if rule.effect == "deny":
            continue
        where = f"ingress rule {rule.name!r}"
        if rule.anonymous and rule.methods & WRITE_METHODS:
            yield Risk(
                "anonymous-write",
                where,
                f"lets anyone, without a token, use {_methods(rule.methods)}",
            )
        yield from _coverage_risks(rule, rules[:index], rules, where)


def _coverage_risks(
    rule: IngressRule,
    earlier: tuple[IngressRule, ...],
    rules: tuple[IngressRule, ...],
    where: str,
) -> Iterable[Risk]:
    # A deny rule overrides allow rules wherever it sits, so every one counts.
    shadow = next((deny for deny in rules if _shadows(deny, rule)), None)
    if shadow is not None:
        yield Risk(
            "shadowed",
            where,
            f"never allows anything: deny rule {shadow.name!r} covers all its "
            "methods and paths",
        )
        return
    cover = next((allow for allow in earlier if _makes_redundant(allow, rule)), None)
    if cover is not None:
        yield Risk(
            "redundant",
            where,
            f"is redundant: the earlier rule {cover.name!r} already allows all "
            "its methods and paths, with no further condition",
        )


def _shadows(deny: IngressRule, rule: IngressRule) -> bool:
    return deny.effect == "deny" and not deny.claims and _covers(deny, rule)


def _makes_redundant(allow: IngressRule, rule: IngressRule) -> bool:
    unconditional = (
        allow.effect == "allow" and not allow.claims and allow.max_body is None
    )
    caller_covered = allow.anonymous or not rule.anonymous
    return unconditional and caller_covered and _covers(allow, rule)


def _covers(wide: IngressRule, narrow: IngressRule) -> bool:
    methods = "*" in wide.methods or (
        "*" not in narrow.methods and narrow.methods <= wide.methods
    )
    return methods and all(
        any(_pattern_covers(w, n) for w in wide.paths) for n in narrow.paths
    )


def _pattern_covers(wide: PathPattern, narrow: PathPattern) -> bool:
    """Whether ``wide`` surely matches every path ``narrow`` matches."""
    if wide.text in (narrow.text, "/**"):
        return True
    if not wide.text.endswith("/**"):
        return False
    prefix = wide.text[: -len("/**")]
    return narrow.text == prefix or narrow.text.startswith(prefix + "/")


def _egress_risks(section: EgressSection) -> Iterable[Risk]:
    if section.default == "allow":
        yield Risk(
            "egress-default-allow",
            "egress.default",
            "allow: the app may connect anywhere no deny rule names",
        )
    for rule in section.rules:
        if rule.effect == "allow":
            yield from _egress_rule_risks(rule)


def _egress_rule_risks(rule: EgressRule) -> Iterable[Risk]:
    where = f"egress rule {rule.name!r}"
    for host in rule.hosts:
        if host.startswith("*."):
            yield Risk(
                "wildcard-host",
                where,
                f"host {host!r} lets the app reach every name under "
                f"{host[2:]!r}, present or future",
            )
    if rule.allow_cidrs:
        ranges = ", ".join(map(str, rule.allow_cidrs))
        yield Risk("allow-cidrs", where, f"opens the private ranges {ranges}")


def _rego_decides(policy: Policy, direction: str) -> bool:
    return policy.rego is not None and direction in policy.rego.decides


def _methods(methods: Iterable[str]) -> str:
    names = sorted(methods)
    return "any method" if "*" in names else _either(names)


def _either(items: Iterable[str]) -> str:
    names = list(items)
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _size(count: int) -> str:
    for unit, factor in _SIZE_UNITS:
        if count and count % factor == 0:
            return f"{count // factor} {unit}"
    return f"{count} bytes"


def _duration(seconds: float) -> str:
    for unit, factor in _DURATION_UNITS:
        if seconds and seconds % factor == 0:
            return f"{seconds / factor:g}{unit}"
    return f"{seconds:g}s"
