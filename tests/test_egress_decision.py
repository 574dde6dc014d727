"""Egress rules as the loader reads them, and the decisions made on them (pure)."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from sandbox.egress.budget import ByteBudgets
from sandbox.errors import PolicyError
from sandbox.policy.egress_decision import (
    EgressTarget,
    decide_egress,
    host_matches,
    select_rules,
)
from sandbox.policy.loader import load_policy
from sandbox.policy.model import EgressSection

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = [ipaddress.ip_address("93.184.216.34")]

EXAMPLE = """\
version: 1
name: egress-example
egress:
  default: deny
  block_private_networks: true
  rules:
    - name: model-weights
      hosts: [models.example.com, "*.cdn.example.com"]
      ports: [443]
    - name: reports-api
      hosts: [api.partner.example]
      ports: [443]
      schemes: [https]
      methods: [POST]
      paths: [/v1/reports/**]
      max_request_body: 1MiB
      max_bytes_out: 10MiB/1h
    - name: internal-metrics
      hosts: [metrics.internal]
      ports: [8080]
      allow_cidrs: [10.20.0.0/16]
    - name: no-pastebin
      effect: deny
      hosts: ["*.pastebin.example"]
"""


def load(tmp_path: Path, text: str) -> EgressSection:
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(text))
    return load_policy(tmp_path).egress


@pytest.fixture
def section(tmp_path: Path) -> EgressSection:
    return load(tmp_path, EXAMPLE)


def connect(host: str, port: int = 443) -> EgressTarget:
    return EgressTarget(host, port)


def request(method: str, path: str, host: str = "api.partner.example") -> EgressTarget:
    return EgressTarget(host, 443, "https", method, path)


def test_the_example_rules_load_with_every_field(section: EgressSection) -> None:
    api = section.rules[1]

    assert api.schemes == {"https"} and api.methods == {"POST"}
    assert api.max_request_body == 1024**2
    assert (api.max_bytes_out, api.bytes_out_window) == (10 * 1024**2, 3600.0)
    assert api.intercepts and not section.rules[0].intercepts
    assert section.rules[2].allow_cidrs == (ipaddress.ip_network("10.20.0.0/16"),)


def test_shipped_example_policies_still_load() -> None:
    assert load_policy(ROOT / "policies" / "acme-clinical-notes").egress.rules
    egress = load_policy(ROOT / "policies" / "egress-example").egress
    assert [rule.name for rule in egress.rules] == [
        "model-weights",
        "reports-api",
        "internal-metrics",
        "no-pastebin",
    ]


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("*.cdn.example.com", "a.cdn.example.com", True),
        ("*.cdn.example.com", "a.b.cdn.example.com", True),
        ("*.cdn.example.com", "cdn.example.com", False),
        ("*.cdn.example.com", "evilcdn.example.com", False),
        ("*.cdn.example.com", "cdn.example.com.evil", False),
        ("models.example.com", "models.example.com", True),
        ("models.example.com", "x.models.example.com", False),
    ],
)
def test_host_patterns(pattern: str, host: str, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


def test_host_rule_allows_a_tunnel_passed_through(section: EgressSection) -> None:
    decision = decide_egress(section, connect("a.cdn.example.com"), PUBLIC)

    assert decision.allow and decision.rule == "model-weights"
    assert not decision.intercept and decision.address == PUBLIC[0]
    assert decision.reason == (
        "rule 'model-weights' allows a connection to a.cdn.example.com:443"
    )


def test_request_rule_makes_the_tunnel_intercepted(section: EgressSection) -> None:
    decision = decide_egress(section, connect("api.partner.example"), PUBLIC)

    assert decision.allow and decision.intercept
    assert decision.reason.endswith("(requests inside are checked)")


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        (request("POST", "/v1/reports/2026/q1"), True),
        (request("GET", "/v1/reports/1"), False),
        (request("POST", "/v1/other"), False),
        (
            EgressTarget("api.partner.example", 443, "http", "POST", "/v1/reports/1"),
            False,
        ),
    ],
)
def test_request_rules_check_scheme_method_and_path(
    section: EgressSection, target: EgressTarget, allowed: bool
) -> None:
    decision = decide_egress(section, target, PUBLIC)

    assert decision.allow is allowed
    assert decision.rule == ("reports-api" if allowed else "default")


def test_deny_rule_overrides_and_needs_no_lookup(section: EgressSection) -> None:
    selection = select_rules(section, connect("paste.pastebin.example"))

    assert not selection.needs_addresses
    assert selection.refusal is not None and selection.refusal.rule == "no-pastebin"


def test_unknown_host_is_refused_by_default_without_lookup(
    section: EgressSection,
) -> None:
    selection = select_rules(section, connect("evil.example"))

    assert selection.refusal is not None
    assert selection.refusal.reason == "no rule allows a connection to evil.example:443"


def test_any_private_address_refuses_the_name(section: EgressSection) -> None:
    addresses = [PUBLIC[0], ipaddress.ip_address("169.254.169.254")]
    decision = decide_egress(section, connect("models.example.com"), addresses)

    assert not decision.allow and decision.rule == "model-weights"
    assert decision.reason.endswith(
        "but address 169.254.169.254 is in link-local 169.254.0.0/16 "
        "(cloud metadata lives here)"
    )


def test_allow_cidrs_open_only_their_ranges_for_their_rule(
    section: EgressSection,
) -> None:
    inside = [ipaddress.ip_address("10.20.3.4")]
    outside = [ipaddress.ip_address("10.30.3.4")]

    assert decide_egress(section, connect("metrics.internal", 8080), inside).allow
    refused = decide_egress(section, connect("metrics.internal", 8080), outside)
    assert not refused.allow and "10.30.3.4 is in private network" in refused.reason
    other = decide_egress(section, connect("models.example.com"), inside)
    assert not other.allow


def test_default_allow_still_blocks_private_networks(tmp_path: Path) -> None:
    section = load(tmp_path, "version: 1\nname: open\negress:\n  default: allow\n")
    private = [ipaddress.ip_address("127.0.0.1")]

    assert decide_egress(section, connect("any.example"), PUBLIC).allow
    refused = decide_egress(section, connect("any.example"), private)
    assert not refused.allow and refused.rule == "default"


def test_private_networks_open_when_the_policy_says_so(tmp_path: Path) -> None:
    section = load(
        tmp_path,
        """\
        version: 1
        name: open
        egress:
          block_private_networks: false
          rules:
            - {name: lan, hosts: [db.lan], ports: [5432]}
        """,
    )

    decision = decide_egress(
        section, connect("db.lan", 5432), [ipaddress.ip_address("192.168.1.5")]
    )
    assert decision.allow


def test_every_problem_is_reported_with_line_and_field(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as refused:
        load(
            tmp_path,
            """\
            version: 1
            name: broken
            egress:
              rules:
                - name: a
                  hosts: [a.example]
                  ports: [443]
                  schemes: [wss]
                  methods: [post]
                  paths: [v1]
                  max_bytes_out: 10MiB
                  allow_cidrs: [10.0.0.1/8, 8.8.8.0/24]
                  colour: blue
                - name: b
                  effect: deny
                  hosts: ["*.x.example"]
                  max_request_body: 1KiB
            """,
        )

    lines = str(refused.value).splitlines()
    assert lines == [
        f"{tmp_path / 'policy.yaml'}:8: egress.rules[0].schemes[0]: expected one of "
        "['http', 'https'], got 'wss' (WebSockets follow: ws is http, wss is https)",
        f"{tmp_path / 'policy.yaml'}:9: egress.rules[0].methods[0]: 'post' is not a "
        "method: upper-case like 'GET' (write 'POST')",
        f"{tmp_path / 'policy.yaml'}:10: egress.rules[0].paths[0]: 'v1' is not a "
        "valid path pattern: must start with '/'",
        f"{tmp_path / 'policy.yaml'}:11: egress.rules[0].max_bytes_out: expected a "
        "size per window like '10MiB/1h', got '10MiB'",
        f"{tmp_path / 'policy.yaml'}:12: egress.rules[0].allow_cidrs[0]: "
        "'10.0.0.1/8' is not a network: 10.0.0.1/8 has host bits set",
        f"{tmp_path / 'policy.yaml'}:12: egress.rules[0].allow_cidrs[1]: "
        "'8.8.8.0/24' holds no private or special addresses, so there is nothing "
        "to open; public addresses need no allow_cidrs",
        f"{tmp_path / 'policy.yaml'}:13: egress.rules[0].colour: unknown field "
        "'colour' (expected one of: allow_cidrs, effect, hosts, max_bytes_out, "
        "max_request_body, methods, name, paths, ports, schemes)",
        f"{tmp_path / 'policy.yaml'}:17: egress.rules[1].max_request_body: applies "
        "to allow rules only",
    ]


def test_budget_window_reopens_after_its_length(tmp_path: Path) -> None:
    now = [0.0]
    budgets = ByteBudgets(clock=lambda: now[0])
    section = load(
        tmp_path,
        """\
        version: 1
        name: budget
        egress:
          rules:
            - {name: up, hosts: [u.example], ports: [443], max_bytes_out: 100B/1m}
        """,
    )
    rule = section.rules[0]

    assert budgets.spend(rule, "u.example:443", 60)
    assert not budgets.spend(rule, "u.example:443", 41)
    assert budgets.spend(rule, "other.example:443", 100)
    assert budgets.remaining(rule, "u.example:443") == 40
    now[0] = 61.0
    assert budgets.remaining(rule, "u.example:443") == 100
