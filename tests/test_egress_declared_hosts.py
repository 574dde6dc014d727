"""Declared egress hosts (``--egress-host NAME=IP``): the proxy connects to the
operator's address for a name without looking it up, while the policy still
decides by name and TLS is still verified for the name.

Origins listen on 127.0.0.1x, as a Nitro enclave's vsock bridges would. The
policies keep ``block_private_networks`` on and open no range, so only the
declaration lets a connection reach them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trustme

from sandbox.cli import run
from sandbox.cli.main import build_parser, main
from sandbox.egress.proxy import EgressConfig
from sandbox.policy.egress_decision import EgressTarget, decide_egress
from sandbox.policy.input_document import egress_document
from sandbox.policy.model import EgressRule, EgressSection
from tests.support import (
    EgressView,
    Origin,
    RecordingApp,
    StaticResolver,
    TokenFactory,
    client_tls,
    fetch_through,
    origin_tls,
    raw_connect,
    read_response,
    running_origins,
    running_sandbox,
    write_policy,
)

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = "127.0.0.10"  # plain origin
TLS_BRIDGE = "127.0.0.11"  # certificate for the declared names
WRONG_BRIDGE = "127.0.0.12"  # certificate for another name only
DECLARED = {
    # Written as an operator might; the proxy keeps the canonical name.
    "Plain.Example.COM.": BRIDGE,
    "denied.example.com": BRIDGE,
    "models.example.com": TLS_BRIDGE,
    "api.partner.example": TLS_BRIDGE,
    "wrong.example.com": WRONG_BRIDGE,
}


@dataclass
class World(EgressView):
    resolver: StaticResolver
    origin_ca: trustme.CA
    plain: Origin
    tls: Origin
    wrong: Origin


def policy_text(plain: int, tls: int, wrong: int) -> str:
    return f"""\
egress:
  default: deny
  rules:
    - name: plain
      hosts: [plain.example.com, resolved.example.com, {BRIDGE}]
      ports: [{plain}]
    - name: model-weights
      hosts: [models.example.com]
      ports: [{tls}]
    - name: reports-api
      hosts: [api.partner.example, wrong.example.com]
      ports: [{tls}, {wrong}]
      methods: [GET]
      paths: [/v1/**]
"""


def declared() -> dict[str, Any]:
    return {name: ipaddress.ip_address(address) for name, address in DECLARED.items()}


@pytest.fixture
async def world(
    tmp_path: Path, policy_dir: Path, tokens: TokenFactory, app: RecordingApp
) -> AsyncIterator[World]:
    origin_ca, server_tls, ca_file = origin_tls(
        tmp_path, ["models.example.com", "api.partner.example"]
    )
    # Trusted, but for another name: only the name check can refuse it.
    wrong_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    origin_ca.issue_cert("other.example.org").configure_cert(wrong_tls)
    plain = Origin(BRIDGE, None, "plain")
    tls = Origin(TLS_BRIDGE, server_tls, "tls")
    wrong = Origin(WRONG_BRIDGE, wrong_tls, "wrong")
    # Only the undeclared name has an answer; a declared one must never ask.
    resolver = StaticResolver({"resolved.example.com": [BRIDGE]})
    async with running_origins(plain, tls, wrong):
        text = policy_text(plain.port, tls.port, wrong.port)
        policy = await asyncio.to_thread(write_policy, policy_dir, text, tokens.jwks)
        egress = EgressConfig(
            listen=("127.0.0.1", 0),
            upstream_ca_file=str(ca_file),
            resolver=resolver,
            hosts=declared(),
        )
        async with running_sandbox(
            policy, app.url, tmp_path / "audit.jsonl", egress=egress
        ) as sandbox:
            yield World(sandbox, resolver, origin_ca, plain, tls, wrong)


# Plain HTTP


async def test_declared_name_reaches_its_address_unresolved_and_unblocked(
    world: World,
) -> None:
    status, body = await fetch_through(
        world.proxy, "GET", f"http://plain.example.com:{world.plain.port}/a"
    )

    assert status == 200 and body["origin"] == "plain"
    assert world.plain.seen[-1].headers["Host"] == (
        f"plain.example.com:{world.plain.port}"
    )
    assert world.resolver.asked == []
    record = world.decisions()[-1]
    assert (record["decision"], record["rule"]) == ("allow", "plain")
    assert record["address"] == BRIDGE and record["address_source"] == "declared"


async def test_declaring_a_name_does_not_allow_it(world: World) -> None:
    url = f"http://denied.example.com:{world.plain.port}/a"
    status, body = await fetch_through(world.proxy, "GET", url)

    assert status == 403
    assert body["reason"] == f"no rule allows GET {url}"
    assert world.plain.seen == [] and world.resolver.asked == []
    record = world.decisions()[-1]
    assert record["decision"] == "deny" and record["address_source"] == "declared"


async def test_undeclared_name_is_resolved_and_its_private_address_refused(
    world: World,
) -> None:
    url = f"http://resolved.example.com:{world.plain.port}/a"
    status, body = await fetch_through(world.proxy, "GET", url)

    assert status == 403
    assert body["reason"] == (
        f"rule 'plain' matches GET {url} but address {BRIDGE} is in loopback "
        "127.0.0.0/8"
    )
    assert world.resolver.asked == ["resolved.example.com"]
    assert world.plain.seen == []
    record = world.decisions()[-1]
    assert record["address_source"] == "resolved"


async def test_literal_of_a_declared_address_is_checked_as_a_literal(
    world: World,
) -> None:
    status, body = await fetch_through(
        world.proxy, "GET", f"http://{BRIDGE}:{world.plain.port}/a"
    )

    assert status == 403
    assert f"address {BRIDGE} is in loopback 127.0.0.0/8" in body["reason"]
    assert world.plain.seen == []
    record = world.decisions()[-1]
    assert record["address_source"] == "literal" and record["rule"] == "plain"


# TLS: the connection goes to the declared address, TLS stays on the name


async def test_host_rule_passes_tls_through_to_the_declared_address(
    world: World,
) -> None:
    authority = f"models.example.com:{world.tls.port}"
    status, _, reader, writer = await raw_connect(world.proxy, authority)
    assert status == 200
    await writer.start_tls(
        client_tls(world.origin_ca), server_hostname="models.example.com"
    )
    writer.write(b"GET /weights HTTP/1.1\r\nHost: models.example.com\r\n\r\n")
    response_status, body = await read_response(reader)
    writer.close()

    assert response_status == 200 and json.loads(body)["origin"] == "tls"
    record = world.decisions()[-1]
    assert record["rule"] == "model-weights" and record["address"] == TLS_BRIDGE
    assert record["address_source"] == "declared"
    assert world.resolver.asked == []


async def test_intercepted_request_verifies_the_origin_for_the_name(
    world: World,
) -> None:
    url = f"https://api.partner.example:{world.tls.port}/v1/reports"
    status, body = await fetch_through(
        world.proxy, "GET", url, ssl=client_tls(world.sandbox_ca)
    )

    assert status == 200 and body["origin"] == "tls"
    assert [seen.path for seen in world.tls.seen] == ["/v1/reports"]
    sources = {record["address_source"] for record in world.decisions()}
    assert sources == {"declared"}
    assert world.resolver.asked == []


async def test_origin_certificate_for_another_name_is_refused(world: World) -> None:
    url = f"https://wrong.example.com:{world.wrong.port}/v1/reports"
    status, body = await fetch_through(
        world.proxy, "GET", url, ssl=client_tls(world.sandbox_ca)
    )

    assert status == 502
    assert b"Certificate verify failed: hostname mismatch" in body
    assert world.wrong.seen == []


# Rego sees the declaration

DECLARED_ONLY = """\
package sandbox.egress

import rego.v1

decision := {"allow": true, "rule": "declared-only", "reason": "declared"} if {
	input.destination.declared
} else := {"allow": false, "rule": "declared-only", "reason": "not declared"}
"""


@pytest.fixture
async def rego_world(
    tmp_path: Path, policy_dir: Path, tokens: TokenFactory, app: RecordingApp
) -> AsyncIterator[World]:
    plain = Origin(BRIDGE, None, "plain")
    resolver = StaticResolver({"public.example.com": ["203.0.113.7"]})
    body = """\
rego: {modules: [egress.rego], decides: [egress]}
egress:
  block_private_networks: true
"""
    (policy_dir / "egress.rego").write_text(DECLARED_ONLY)
    async with running_origins(plain):
        policy = await asyncio.to_thread(write_policy, policy_dir, body, tokens.jwks)
        egress = EgressConfig(
            listen=("127.0.0.1", 0), resolver=resolver, hosts=declared()
        )
        async with running_sandbox(
            policy, app.url, tmp_path / "audit.jsonl", egress=egress
        ) as sandbox:
            yield World(sandbox, resolver, trustme.CA(), plain, plain, plain)


async def test_rego_decides_on_the_declared_flag(rego_world: World) -> None:
    port = rego_world.plain.port
    allowed = await fetch_through(
        rego_world.proxy, "GET", f"http://plain.example.com:{port}/a"
    )
    refused = await fetch_through(
        rego_world.proxy, "GET", f"http://public.example.com:{port}/a"
    )

    assert allowed[0] == 200 and allowed[1]["origin"] == "plain"
    assert refused[0] == 403 and refused[1]["reason"] == "not declared"
    assert rego_world.resolver.asked == ["public.example.com"]
    sources = [record["address_source"] for record in rego_world.decisions()]
    assert sources == ["declared", "resolved"]


def test_egress_document_with_declared_flag_fits_the_schema() -> None:
    schema = json.loads((ROOT / "docs/input-document.schema.json").read_text())
    document = egress_document(
        host="models.example.com", port=443, addresses=[BRIDGE], declared=True
    )

    jsonschema.validate(document, schema)
    assert document["destination"]["declared"] is True
    plain = egress_document(host="a.example", port=80, addresses=["192.0.2.1"])
    assert plain["destination"]["declared"] is False


# The pure decision


def test_declared_target_skips_only_the_address_check() -> None:
    rule = EgressRule(name="bridge", effect="allow", hosts=("models.example.com",))
    section = EgressSection(rules=(rule,))
    loopback = [ipaddress.ip_address(BRIDGE)]
    target = EgressTarget("models.example.com", 443)

    assert not decide_egress(section, target, loopback).allow
    allowed = decide_egress(section, _declared(target), loopback)
    assert allowed.allow and allowed.address == loopback[0]
    other = _declared(EgressTarget("other.example.com", 443))
    assert not decide_egress(section, other, loopback).allow


def _declared(target: EgressTarget) -> EgressTarget:
    return EgressTarget(target.host, target.port, declared=True)


# The command line


def test_egress_host_options_become_the_config_mapping() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--policy",
            "p",
            "--upstream",
            "http://127.0.0.1:1",
            "--egress-host",
            "Models.Example.COM.=127.0.0.10",
            "--egress-host",
            "api.partner.example=::1",
        ]
    )
    config = run._egress_config(args)

    assert config is not None
    assert config.hosts == {
        "models.example.com": ipaddress.ip_address("127.0.0.10"),
        "api.partner.example": ipaddress.ip_address("::1"),
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["10.0.0.1=10.0.0.2"], "got the IP address '10.0.0.1'"),
        (["*.x.com=127.0.0.1"], "(no wildcard, scheme, port or IPv6 address)"),
        (["https://a.com=127.0.0.1"], "got 'https://a.com'"),
        (["a.com:443=127.0.0.1"], "got 'a.com:443'"),
        (["a.com=not-an-ip"], "expected an IP address after 'a.com=', got"),
        (["a.com"], "expected NAME=IP, got 'a.com'"),
        (["a.com=127.0.0.1", "A.com.=127.0.0.2"], "got 'a.com' twice"),
        (["a.com=127.0.0.1", "a.com=127.0.0.1"], "got 'a.com' twice"),
    ],
)
def test_bad_egress_host_exits_2_saying_what_was_expected(
    values: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--policy", "p", "--upstream", "http://127.0.0.1:1"]
    for value in values:
        argv += ["--egress-host", value]

    with pytest.raises(SystemExit) as exit_:
        main(argv)

    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "argument --egress-host:" in error and message in error


def test_policy_test_cases_may_declare_a_destination(
    policy_dir: Path, tokens: TokenFactory
) -> None:
    body = """\
egress:
  rules:
    - name: bridge
      hosts: [models.example.com]
      ports: [443]
"""
    write_policy(policy_dir, body, tokens.jwks)
    (policy_dir / "tests.yaml").write_text(
        f"""\
cases:
  - name: declared bridge on loopback
    direction: egress
    destination: {{host: models.example.com, port: 443, addresses: [{BRIDGE}],
                  declared: true}}
    expect: {{allow: true, rule: bridge}}
  - name: the same address resolved is private
    direction: egress
    destination: {{host: models.example.com, port: 443, addresses: [{BRIDGE}]}}
    expect: {{allow: false, rule: bridge}}
"""
    )

    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "policy", "test", str(policy_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 cases, 0 failed" in result.stdout
