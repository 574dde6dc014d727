"""Egress decided by Rego end to end: real mitmproxy, real origins on
loopback, real TLS; the example policy ``policies/egress-example-rego`` with
its destinations rewritten to the origins' ports, embedded or on OPA (the
fake server of tests/fake_opa.py).

Names reach origins on 127.0.0.x through the test resolver, so most worlds
set ``egress.block_private_networks: false``; the one that keeps it on shows
the sandbox refusing a private address before Rego is asked.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from sandbox.egress.proxy import EgressConfig
from sandbox.engines.base import EgressAnswer, read_decision
from sandbox.errors import PolicyError
from sandbox.policy.loader import load_policy
from sandbox.policy.model import Policy
from tests.fake_opa import FakeOpa
from tests.support import (
    EgressView,
    Origin,
    RecordingApp,
    StaticResolver,
    client_tls,
    fetch_through,
    origin_tls,
    raw_connect,
    read_response,
    running_origins,
    running_sandbox,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "policies/egress-example-rego"
NAMES = ["models.example.com", "api.partner.example", "paste.example"]
UNDEFINED_MODULE = """\
package sandbox.egress

import rego.v1

decision := {"allow": true, "reason": "never"} if input.destination.port == 1
"""


@dataclass
class Origins:
    ca: trustme.CA
    ca_file: Path
    models: Origin  # TLS: passed through
    api: Origin  # TLS: intercepted, each request decided
    plain: Origin  # plain HTTP
    resolver: StaticResolver


@dataclass
class World(EgressView):
    origins: Origins


@pytest.fixture
async def origins(tmp_path: Path) -> AsyncIterator[Origins]:
    ca, server_tls, ca_file = origin_tls(tmp_path, NAMES)
    models = Origin("127.0.0.2", server_tls, "models")
    api = Origin("127.0.0.3", server_tls, "api")
    plain = Origin("127.0.0.4", None, "plain")
    resolver = StaticResolver(
        {
            "models.example.com": ["127.0.0.2"],
            "api.partner.example": ["127.0.0.3"],
            "plain.example.com": ["127.0.0.4"],
            "paste.example": ["127.0.0.5"],
        }
    )
    async with running_origins(models, api, plain):
        yield Origins(ca, ca_file, models, api, plain, resolver)


def example_policy(
    folder: Path, origins: Origins, block_private: bool, module: str | None = None
) -> Policy:
    """The example, its destinations on the origins' ports; ``module`` replaces
    its Rego when given."""
    shutil.copytree(EXAMPLE, folder)
    rules = [
        {"name": "model-weights", "hosts": [NAMES[0]], "ports": [origins.models.port]},
        {
            "name": "reports-api",
            "hosts": [NAMES[1]],
            "ports": [origins.api.port],
            "requests": [{"methods": ["POST"], "path_prefix": "/v1/reports/"}],
        },
        {
            "name": "plain",
            "hosts": ["plain.example.com"],
            "ports": [origins.plain.port],
        },
    ]
    (folder / "destinations.json").write_text(json.dumps({"egress": {"rules": rules}}))
    text = (folder / "policy.yaml").read_text()
    setting = "block_private_networks: true"
    assert setting in text
    text = text.replace(
        setting, f"block_private_networks: {str(block_private).lower()}"
    )
    (folder / "policy.yaml").write_text(text)
    if module is not None:
        (folder / "egress.rego").write_text(module)
    return load_policy(folder)


@asynccontextmanager
async def running_world(
    tmp_path: Path,
    origins: Origins,
    app: RecordingApp,
    *,
    block_private: bool = False,
    module: str | None = None,
    **options: Any,
) -> AsyncIterator[World]:
    # Loading reads files and compiles Rego: off the loop, as the CLI does.
    policy = await asyncio.to_thread(
        example_policy, tmp_path / "policy", origins, block_private, module
    )
    egress = EgressConfig(
        listen=("127.0.0.1", 0),
        upstream_ca_file=str(origins.ca_file),
        resolver=origins.resolver,
    )
    audit = tmp_path / "audit.jsonl"
    async with running_sandbox(
        policy, app.url, audit, egress=egress, **options
    ) as sandbox:
        yield World(sandbox, origins)


@pytest.fixture
async def world(
    tmp_path: Path, origins: Origins, app: RecordingApp
) -> AsyncIterator[World]:
    async with running_world(tmp_path, origins, app) as running:
        yield running


@pytest.fixture
async def opa_world(
    tmp_path: Path, origins: Origins, app: RecordingApp, opa: FakeOpa
) -> AsyncIterator[World]:
    async with running_world(
        tmp_path, origins, app, opa_url=opa.url, opa_timeout=0.3
    ) as running:
        yield running


async def test_allowed_host_passes_tls_through_with_the_origins_certificate(
    world: World,
) -> None:
    authority = f"models.example.com:{world.origins.models.port}"
    status, _, reader, writer = await raw_connect(world.proxy, authority)
    assert status == 200
    # Trusting only the origin's CA works: the sandbox did not intercept.
    await writer.start_tls(
        client_tls(world.origins.ca), server_hostname="models.example.com"
    )
    peer = writer.get_extra_info("ssl_object").getpeercert()
    writer.write(b"GET /weights HTTP/1.1\r\nHost: models.example.com\r\n\r\n")
    response_status, body = await read_response(reader)
    writer.close()

    issuer = dict(item[0] for item in peer["issuer"])
    assert "trustme" in issuer["organizationName"]
    assert response_status == 200 and json.loads(body)["origin"] == "models"
    record = world.decisions()[-1]
    assert (record["decision"], record["rule"], record["status"]) == (
        "allow",
        "model-weights",
        200,
    )
    assert record["reason"] == f"rule model-weights allows a connection to {authority}"
    assert record["address"] == "127.0.0.2" and record["method"] is None
    assert record["port"] == world.origins.models.port


async def test_denied_host_gets_403_with_the_rego_reason_after_one_lookup(
    world: World,
) -> None:
    status, body, _, writer = await raw_connect(world.proxy, "paste.example:443")
    writer.close()

    reason = "no rule in data.egress allows a connection to paste.example:443"
    assert status == 403 and json.loads(body)["reason"] == reason
    record = world.decisions()[-1]
    assert (record["decision"], record["rule"], record["reason"]) == (
        "deny",
        "default",
        reason,
    )
    assert (record["host"], record["port"], record["status"]) == (
        "paste.example",
        443,
        403,
    )
    # Rego is asked with the addresses, so the name was looked up, once.
    assert world.origins.resolver.asked == ["paste.example"]


async def test_intercepted_tunnel_decides_each_request_by_method_and_path(
    world: World,
) -> None:
    base = f"https://api.partner.example:{world.origins.api.port}"
    tls = client_tls(world.sandbox_ca)  # the sandbox CA only: intercepted

    allowed = await fetch_through(world.proxy, "POST", f"{base}/v1/reports/7", ssl=tls)
    wrong_method = await fetch_through(
        world.proxy, "GET", f"{base}/v1/reports/7", ssl=tls
    )
    wrong_path = await fetch_through(world.proxy, "POST", f"{base}/v2/other", ssl=tls)

    assert allowed[0] == 200 and allowed[1]["origin"] == "api"
    assert wrong_method[0] == 403 and wrong_path[0] == 403
    assert wrong_method[1]["reason"] == (
        "no rule in data.egress allows GET "
        f"https://api.partner.example:{world.origins.api.port}/v1/reports/7"
    )
    assert [seen.path for seen in world.origins.api.seen] == ["/v1/reports/7"]
    records = world.decisions()
    tunnels = [r for r in records if r["method"] is None]
    assert tunnels and all(r["rule"] == "reports-api" for r in tunnels)
    requests = [r for r in records if r["method"] is not None]
    assert [(r["method"], r["path"], r["rule"], r["status"]) for r in requests] == [
        ("POST", "/v1/reports/7", "reports-api", None),
        ("GET", "/v1/reports/7", "default", 403),
        ("POST", "/v2/other", "default", 403),
    ]
    assert all(r["address"] == "127.0.0.3" for r in requests[:1])


async def test_plain_request_is_decided_once_with_its_request(world: World) -> None:
    url = f"http://plain.example.com:{world.origins.plain.port}/hello?x=1"
    status, body = await fetch_through(world.proxy, "GET", url)

    assert status == 200 and body["origin"] == "plain"
    record = world.decisions()[-1]
    assert (record["rule"], record["method"], record["path"]) == (
        "plain",
        "GET",
        "/hello",
    )
    assert record["scheme"] == "http" and record["address"] == "127.0.0.4"


async def test_undefined_egress_decision_is_a_deny_with_its_reason(
    tmp_path: Path, origins: Origins, app: RecordingApp
) -> None:
    async with running_world(tmp_path, origins, app, module=UNDEFINED_MODULE) as world:
        authority = f"models.example.com:{origins.models.port}"
        status, body, _, writer = await raw_connect(world.proxy, authority)
        writer.close()

        reason = "data.sandbox.egress.decision is undefined, so the request is denied"
        assert status == 403 and json.loads(body)["reason"] == reason
        record = world.decisions()[-1]
        assert (record["decision"], record["rule"], record["reason"]) == (
            "deny",
            "engine",
            reason,
        )


async def test_opa_gets_the_documented_input_for_tunnel_and_requests(
    opa_world: World, opa: FakeOpa
) -> None:
    base = f"https://api.partner.example:{opa_world.origins.api.port}"
    tls = client_tls(opa_world.sandbox_ca)
    url = f"{base}/v1/reports/7?draft=1"
    headers = {"X-Trace": "t1", "Authorization": "Bearer secret"}

    status, _ = await fetch_through(
        opa_world.proxy, "POST", url, ssl=tls, headers=headers
    )

    assert status == 200
    documents = [body["input"] for path, body in opa.queries if "egress" in path]
    tunnel, request = documents
    assert tunnel["destination"] == {
        "scheme": None,
        "host": "api.partner.example",
        "port": opa_world.origins.api.port,
        "addresses": ["127.0.0.3"],
        "declared": False,
    }
    assert tunnel["request"] is None
    assert request["destination"]["scheme"] == "https"
    assert request["request"]["path"] == "/v1/reports/7"
    assert request["request"]["segments"] == ["v1", "reports", "7"]
    assert request["request"]["query"] == "draft=1"
    assert request["request"]["headers"]["x-trace"] == "t1"
    assert "authorization" not in request["request"]["headers"]


@pytest.mark.parametrize("failure", ["down", "slow", "failing"])
async def test_opa_unavailable_refuses_connect_and_audits(
    opa_world: World, opa: FakeOpa, failure: str
) -> None:
    if failure == "down":
        await opa.stop()
    elif failure == "slow":
        opa.delay = 2.0
    else:
        opa.fail = True
    authority = f"models.example.com:{opa_world.origins.models.port}"

    status, body, _, writer = await raw_connect(opa_world.proxy, authority)
    writer.close()

    answer = json.loads(body)
    assert status == 503 and answer["error"] == "unavailable"
    assert answer["reason"].startswith(f"OPA at {opa.url}")
    record = opa_world.decisions()[-1]
    assert (record["decision"], record["rule"], record["status"]) == (
        "deny",
        "engine",
        503,
    )
    assert record["reason"] == answer["reason"]
    assert opa_world.origins.models.seen == []


async def test_opa_failing_inside_an_intercepted_tunnel_is_a_503(
    opa_world: World, opa: FakeOpa
) -> None:
    authority = f"api.partner.example:{opa_world.origins.api.port}"
    status, _, reader, writer = await raw_connect(opa_world.proxy, authority)
    assert status == 200
    await writer.start_tls(
        client_tls(opa_world.sandbox_ca), server_hostname="api.partner.example"
    )
    opa.fail = True
    writer.write(
        f"POST /v1/reports/1 HTTP/1.1\r\nHost: {authority}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    response_status, body = await read_response(reader)
    writer.close()

    assert response_status == 503 and json.loads(body)["error"] == "unavailable"
    record = opa_world.decisions()[-1]
    assert (record["method"], record["rule"], record["status"]) == (
        "POST",
        "engine",
        503,
    )
    assert opa_world.origins.api.seen == []


async def test_engine_that_raises_is_refused_and_never_allows(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def raising(document: dict[str, Any]) -> None:
        raise RuntimeError("broken engine")

    monkeypatch.setattr(world.sandbox.engine, "decide_egress", raising)
    authority = f"models.example.com:{world.origins.models.port}"

    status, body, _, writer = await raw_connect(world.proxy, authority)
    writer.close()

    assert status == 503
    assert json.loads(body)["reason"] == (
        "the yaml+rego engine failed: RuntimeError('broken engine')"
    )
    assert world.decisions()[-1]["rule"] == "engine"


async def test_private_address_is_refused_before_rego_is_asked(
    tmp_path: Path, origins: Origins, app: RecordingApp, opa: FakeOpa
) -> None:
    async with running_world(
        tmp_path, origins, app, block_private=True, opa_url=opa.url
    ) as world:
        authority = f"models.example.com:{origins.models.port}"
        status, body, _, writer = await raw_connect(world.proxy, authority)
        writer.close()

        reason = f"a connection to {authority} is refused: address 127.0.0.2 is in "
        assert status == 403 and json.loads(body)["reason"].startswith(reason)
        assert "(egress.block_private_networks is on)" in json.loads(body)["reason"]
        record = world.decisions()[-1]
        assert (record["decision"], record["rule"]) == ("deny", "default")
        assert [path for path, _ in opa.queries if "egress" in path] == []
        assert origins.models.seen == []


# The egress answer, read alone


def test_egress_answer_may_ask_to_intercept() -> None:
    answer = read_decision(
        {"allow": True, "reason": "ok", "intercept": True}, "here", "egress"
    )

    assert isinstance(answer, EgressAnswer) and answer.intercept and answer.allow


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            {"allow": True, "reason": "ok", "intercept": "yes"},
            "here gave intercept 'yes', expected true or false",
        ),
        (
            {"allow": False, "reason": "no", "intercept": True},
            "here gave intercept true with allow false; intercept is for allows",
        ),
        (
            {"allow": True, "reason": "ok", "max_body": 5},
            "here gave unknown fields ['max_body'] (expected: allow, intercept, "
            "reason, rule)",
        ),
    ],
)
def test_unusable_egress_answer_is_a_deny(value: dict[str, Any], problem: str) -> None:
    answer = read_decision(value, "here", "egress")

    assert not answer.allow and answer.rule == "engine" and not answer.unavailable
    assert answer.reason == f"{problem}, so the request is denied"


def test_ingress_answers_know_no_intercept() -> None:
    answer = read_decision({"allow": True, "reason": "ok", "intercept": True}, "here")

    assert not answer.allow and "unknown fields ['intercept']" in answer.reason


# Loading


def test_egress_rules_beside_rego_egress_are_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    shutil.copytree(EXAMPLE, folder)
    text = (folder / "policy.yaml").read_text()
    (folder / "policy.yaml").write_text(
        text.replace("egress:\n", "egress:\n  default: allow\n")
    )

    with pytest.raises(PolicyError) as caught:
        load_policy(folder)

    assert "(block_private_networks alone may stay)" in str(caught.value)
