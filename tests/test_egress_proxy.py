"""The egress proxy end to end: real mitmproxy, real origins, real TLS, loopback.

Names like ``models.example.com`` reach origins on 127.0.0.x through the
test resolver; rules open 127.0.0.0/8 by name where a test needs to reach
them, so the private-network check itself stays on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from sandbox.egress.proxy import EgressConfig
from tests.support import (
    EgressView,
    Origin,
    RecordingApp,
    StaticResolver,
    TokenFactory,
    client_tls,
    origin_tls,
    raw_connect,
    read_response,
    running_origins,
    running_sandbox,
    write_policy,
)

NAMES = [
    "models.example.com",
    "api.partner.example",
    "a.cdn.example.com",
    "a.b.cdn.example.com",
    "cdn.example.com",
    "evilcdn.example.com",
    "stream.partner.example",
]


@dataclass
class World(EgressView):
    resolver: StaticResolver
    origin_ca: trustme.CA
    models: Origin  # TLS, host rule only: passed through
    api: Origin  # TLS, method and path rules: intercepted
    plain: Origin  # plain HTTP


def policy_text(models: int, api: int, plain: int) -> str:
    return f"""\
egress:
  default: deny
  rules:
    - name: model-weights
      hosts: [models.example.com, "*.cdn.example.com"]
      ports: [{models}]
      allow_cidrs: [127.0.0.0/8]
    - name: reports-api
      hosts: [api.partner.example]
      ports: [{api}]
      schemes: [https]
      methods: [POST]
      paths: [/v1/reports/**]
      max_request_body: 1KiB
      allow_cidrs: [127.0.0.0/8]
    - name: streams
      hosts: [stream.partner.example]
      ports: [{api}]
      methods: [GET]
      paths: [/ws]
      allow_cidrs: [127.0.0.0/8]
    - name: plain
      hosts: [plain.example.com, 127.0.0.4]
      ports: [{plain}]
      allow_cidrs: [127.0.0.0/8]
    - name: uploads
      hosts: [uploads.example.com]
      ports: [{plain}]
      max_bytes_out: 100B/1h
      allow_cidrs: [127.0.0.0/8]
    - name: loopback-literal
      hosts: [127.0.0.1]
      ports: [{plain}]
    - name: private-name
      hosts: [sneaky.example.com, mixed.example.com]
      ports: [{plain}]
    - name: no-pastebin
      effect: deny
      hosts: ["*.pastebin.example"]
"""


@pytest.fixture
async def world(
    tmp_path: Path, policy_dir: Path, tokens: TokenFactory, app: RecordingApp
) -> AsyncIterator[World]:
    origin_ca, server_tls, ca_file = origin_tls(tmp_path, NAMES)
    models = Origin("127.0.0.2", server_tls, "models")
    api = Origin("127.0.0.3", server_tls, "api")
    plain = Origin("127.0.0.4", None, "plain")
    resolver = StaticResolver(
        {
            **{name: ["127.0.0.2"] for name in NAMES if "partner" not in name},
            "api.partner.example": ["127.0.0.3"],
            "stream.partner.example": ["127.0.0.3"],
            "plain.example.com": ["127.0.0.4"],
            "uploads.example.com": ["127.0.0.4"],
            "sneaky.example.com": ["127.0.0.4"],
            # A public address beside a private one: the name is refused whole.
            "mixed.example.com": ["192.0.2.10", "127.0.0.4"],
        }
    )
    async with running_origins(models, api, plain):
        text = policy_text(models.port, api.port, plain.port)
        # Loading reads files: off the loop, like the CLI does before it starts.
        policy = await asyncio.to_thread(write_policy, policy_dir, text, tokens.jwks)
        egress = EgressConfig(
            listen=("127.0.0.1", 0),
            upstream_ca_file=str(ca_file),
            resolver=resolver,
            app_bundle_copy=str(tmp_path / "trust" / "app-ca-bundle.pem"),
        )
        async with running_sandbox(
            policy, app.url, tmp_path / "audit.jsonl", egress=egress
        ) as sandbox:
            yield World(sandbox, resolver, origin_ca, models, api, plain)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(
    client: aiohttp.ClientSession, world: World, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with client.request(method, url, proxy=world.proxy, **kwargs) as response:
        body = await response.read()
        if response.content_type == "application/json":
            return response.status, json.loads(body)
        return response.status, body


# Plain HTTP and host rules


async def test_allowed_plain_request_reaches_the_checked_address_and_is_audited(
    world: World, client: aiohttp.ClientSession
) -> None:
    url = f"http://plain.example.com:{world.plain.port}/hello"
    status, body = await fetch(client, world, "POST", url, data=b"12345")

    assert status == 200 and body["origin"] == "plain" and body["body_length"] == 5
    assert (
        world.plain.seen[-1].headers["Host"] == f"plain.example.com:{world.plain.port}"
    )
    decision = world.decisions()[-1]
    assert decision["decision"] == "allow" and decision["rule"] == "plain"
    assert decision["host"] == "plain.example.com"
    assert decision["port"] == world.plain.port
    assert decision["address"] == "127.0.0.4"
    assert decision["method"] == "POST" and decision["path"] == "/hello"
    assert decision["bytes_out"] == 5
    await _until(lambda: bool(world.ends()))
    end = world.ends()[-1]
    assert end["request_id"] == decision["request_id"]
    assert end["status"] == 200 and end["bytes_out"] == 5 and end["bytes_in"] > 0


async def test_denied_host_gets_403_json_and_is_never_looked_up(
    world: World, client: aiohttp.ClientSession
) -> None:
    url = f"http://evil.example.com:{world.plain.port}/x"
    status, body = await fetch(client, world, "GET", url)

    assert status == 403 and body["error"] == "forbidden"
    assert (
        body["reason"]
        == f"no rule allows GET http://evil.example.com:{world.plain.port}/x"
    )
    assert "evil.example.com" not in world.resolver.asked
    decision = world.decisions()[-1]
    assert decision["decision"] == "deny" and decision["rule"] == "default"
    assert decision["request_id"] == body["request_id"]
    assert decision["status"] == 403 and decision["address"] is None


async def test_deny_rule_wins_and_names_itself(world: World) -> None:
    status, body, _, writer = await raw_connect(world.proxy, "x.pastebin.example:443")
    writer.close()

    assert status == 403
    reason = "rule 'no-pastebin' denies a connection to x.pastebin.example:443"
    assert json.loads(body)["reason"] == reason
    assert world.decisions()[-1]["rule"] == "no-pastebin"


async def test_connect_to_allowed_host_on_another_port_is_refused(
    world: World,
) -> None:
    status, body, _, writer = await raw_connect(world.proxy, "models.example.com:8443")
    writer.close()

    assert status == 403
    assert "no rule allows a connection to models.example.com:8443" in body.decode()
    assert (
        "(rule 'model-weights' allows this host only for other ports or requests)"
        in (body.decode())
    )
    record = world.decisions()[-1]
    assert (record["decision"], record["port"]) == ("deny", 8443)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("a.cdn.example.com", True),
        ("a.b.cdn.example.com", True),
        ("A.CDN.Example.COM.", True),
        ("cdn.example.com", False),
        ("evilcdn.example.com", False),
    ],
)
async def test_wildcard_matches_subdomains_only(
    world: World, host: str, allowed: bool
) -> None:
    status, _, _, writer = await raw_connect(world.proxy, f"{host}:{world.models.port}")
    writer.close()

    assert status == (200 if allowed else 403)
    record = world.decisions()[-1]
    assert record["host"] == host.lower().rstrip(".")
    assert record["decision"] == ("allow" if allowed else "deny")


# TLS: passed through for host rules, intercepted for request rules


async def test_host_rule_passes_tls_through_with_the_origins_own_certificate(
    world: World,
) -> None:
    authority = f"models.example.com:{world.models.port}"
    status, _, reader, writer = await raw_connect(world.proxy, authority)
    assert status == 200
    # Trusting only the origin's CA works: the sandbox did not intercept.
    await writer.start_tls(
        client_tls(world.origin_ca), server_hostname="models.example.com"
    )
    peer = writer.get_extra_info("ssl_object").getpeercert()
    writer.write(b"GET /weights HTTP/1.1\r\nHost: models.example.com\r\n\r\n")
    response_status, body = await read_response(reader)
    writer.close()

    issuer = dict(item[0] for item in peer["issuer"])
    assert "trustme" in issuer["organizationName"]
    assert response_status == 200 and json.loads(body)["origin"] == "models"
    record = world.decisions()[-1]
    assert record["rule"] == "model-weights" and record["status"] == 200
    assert record["method"] is None and record["address"] == "127.0.0.2"


async def test_request_rules_intercept_and_decide_each_request(
    world: World, client: aiohttp.ClientSession
) -> None:
    base = f"https://api.partner.example:{world.api.port}"
    tls = client_tls(world.sandbox_ca)  # the sandbox CA only: intercepted

    allowed = await fetch(client, world, "POST", f"{base}/v1/reports/7", ssl=tls)
    wrong_method = await fetch(client, world, "GET", f"{base}/v1/reports/7", ssl=tls)
    wrong_path = await fetch(client, world, "POST", f"{base}/v2/other", ssl=tls)
    too_big = await fetch(
        client, world, "POST", f"{base}/v1/reports/8", data=b"x" * 2048, ssl=tls
    )

    assert allowed[0] == 200 and allowed[1]["origin"] == "api"
    assert wrong_method[0] == 403 and wrong_path[0] == 403
    assert too_big[0] == 413
    assert too_big[1]["reason"] == (
        "body of 2048 bytes exceeds the 1024 bytes rule 'reports-api' allows"
    )
    assert [seen.path for seen in world.api.seen] == ["/v1/reports/7"]
    requests = [r for r in world.decisions() if r["method"] is not None]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/v1/reports/7", None),
        ("GET", "/v1/reports/7", 403),
        ("POST", "/v2/other", 403),
        ("POST", "/v1/reports/8", 413),
    ]
    assert requests[0]["scheme"] == "https"


async def test_an_app_elsewhere_trusts_interception_through_the_published_bundle(
    world: World, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # What the compose stack's app container is given: a copy of the bundle,
    # outside the private state folder that holds the CA key.
    published = tmp_path / "trust" / "app-ca-bundle.pem"
    base = f"https://api.partner.example:{world.api.port}"

    status, body = await fetch(
        client, world, "POST", f"{base}/v1/reports/9", ssl=client_tls(published)
    )

    assert status == 200 and body["origin"] == "api"
    assert published.stat().st_mode & 0o777 == 0o644
    assert world.sandbox_ca.read_bytes() in published.read_bytes()
    assert not (published.parent / f".{published.name}.new").exists()


async def test_intercepted_request_with_another_host_header_is_refused(
    world: World,
) -> None:
    authority = f"api.partner.example:{world.api.port}"
    _, _, reader, writer = await raw_connect(world.proxy, authority)
    await writer.start_tls(
        client_tls(world.sandbox_ca), server_hostname="api.partner.example"
    )
    writer.write(
        b"POST /v1/reports/1 HTTP/1.1\r\nHost: models.example.com\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    status, body = await read_response(reader)
    writer.close()

    assert status == 403
    assert json.loads(body)["reason"] == (
        f"Host header 'models.example.com' differs from the destination {authority}"
    )
    assert world.api.seen == []


async def test_intercepted_tls_naming_another_server_is_refused(world: World) -> None:
    authority = f"api.partner.example:{world.api.port}"
    _, _, reader, writer = await raw_connect(world.proxy, authority)
    await writer.start_tls(
        client_tls(world.sandbox_ca), server_hostname="models.example.com"
    )
    writer.write(
        f"POST /v1/reports/1 HTTP/1.1\r\nHost: {authority}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    status, body = await read_response(reader)
    writer.close()

    assert status == 403
    assert "TLS server name 'models.example.com' differs" in json.loads(body)["reason"]
    assert world.decisions()[-1]["decision"] == "deny"


async def test_plain_request_with_another_host_header_is_refused(
    world: World,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(world.proxy))
    writer.write(
        f"GET http://plain.example.com:{world.plain.port}/ HTTP/1.1\r\n"
        "Host: evil.example.com\r\n\r\n".encode()
    )
    status, body = await read_response(reader)
    writer.close()

    assert status == 403 and "Host header 'evil.example.com'" in body.decode()
    assert world.plain.seen == []


# Addresses: literals in every spelling, names that resolve to private ranges


@pytest.mark.parametrize(
    "spelling", ["2130706433", "0x7f.1", "017700000001", "127.1", "127.0.0.1"]
)
async def test_ip_literals_are_normalised_then_checked(
    world: World, spelling: str
) -> None:
    authority = f"{spelling}:{world.plain.port}"
    status, body, _, writer = await raw_connect(world.proxy, authority)
    writer.close()

    # The rule names 127.0.0.1 but opens no private range: refused by address.
    assert status == 403
    reason = json.loads(body)["reason"]
    assert reason.endswith("but address 127.0.0.1 is in loopback 127.0.0.0/8")
    record = world.decisions()[-1]
    assert record["host"] == "127.0.0.1" and record["rule"] == "loopback-literal"


async def test_ipv6_mapped_loopback_is_checked_as_ipv4(world: World) -> None:
    authority = f"[::ffff:127.0.0.1]:{world.plain.port}"
    status, body, _, writer = await raw_connect(world.proxy, authority)
    writer.close()

    assert status == 403
    assert json.loads(body)["reason"] == (
        f"no rule allows a connection to [::ffff:7f00:1]:{world.plain.port}"
    )
    assert world.decisions()[-1]["host"] == "::ffff:7f00:1"


async def test_literal_spelling_of_an_opened_address_reaches_it(
    world: World,
) -> None:
    status, _, reader, writer = await raw_connect(
        world.proxy, f"0x7f.0.0.4:{world.plain.port}"
    )
    writer.write(b"GET /literal HTTP/1.1\r\nHost: 127.0.0.4\r\n\r\n")
    response_status, _ = await read_response(reader)
    writer.close()

    assert status == 200 and response_status == 200
    assert world.plain.seen[-1].path == "/literal"
    assert world.decisions()[-1]["host"] == "127.0.0.4"


@pytest.mark.parametrize("name", ["sneaky.example.com", "mixed.example.com"])
async def test_name_resolving_to_a_private_address_is_refused(
    world: World, client: aiohttp.ClientSession, name: str
) -> None:
    status, body = await fetch(
        client, world, "GET", f"http://{name}:{world.plain.port}/"
    )

    assert status == 403
    assert body["reason"].endswith("but address 127.0.0.4 is in loopback 127.0.0.0/8")
    assert world.plain.seen == []
    assert world.decisions()[-1]["rule"] == "private-name"


# Redirects, budgets, WebSockets


async def test_each_redirect_hop_is_decided_on_its_own(
    world: World, client: aiohttp.ClientSession
) -> None:
    target = f"http://evil.example.com:{world.plain.port}/stolen"
    url = f"http://plain.example.com:{world.plain.port}/redirect"
    status, body = await fetch(client, world, "GET", url, params={"to": target})

    assert status == 403
    assert body["reason"] == f"no rule allows GET {target}"
    hops = [(r["host"], r["decision"]) for r in world.decisions()]
    assert hops == [("plain.example.com", "allow"), ("evil.example.com", "deny")]


async def test_byte_budget_refuses_requests_past_it(
    world: World, client: aiohttp.ClientSession
) -> None:
    url = f"http://uploads.example.com:{world.plain.port}/up"

    first = await fetch(client, world, "POST", url, data=b"a" * 60)
    too_much = await fetch(client, world, "POST", url, data=b"b" * 60)
    rest = await fetch(client, world, "POST", url, data=b"c" * 40)
    spent = await fetch(client, world, "GET", url)

    assert [first[0], too_much[0], rest[0], spent[0]] == [200, 403, 200, 403]
    assert spent[1]["reason"].startswith(
        f"rule 'uploads' lets the app send 100 bytes to uploads.example.com:"
        f"{world.plain.port} per 3600s; 100 are spent"
    )
    assert [seen.body_length for seen in world.plain.seen] == [60, 40]
    assert [r["decision"] for r in world.decisions()] == [
        "allow",
        "deny",
        "allow",
        "deny",
    ]


async def test_tunnel_crossing_its_budget_is_cut(world: World) -> None:
    authority = f"uploads.example.com:{world.plain.port}"
    status, _, reader, writer = await raw_connect(world.proxy, authority)
    assert status == 200
    writer.write(b"x" * 150)
    await writer.drain()
    remainder = await asyncio.wait_for(reader.read(), 10)
    writer.close()

    assert remainder == b""
    await _until(lambda: bool(world.ends()))
    end = world.ends()[-1]
    assert end["bytes_out"] == 0 and end["cut"].startswith(
        "rule 'uploads' lets the app send 100 bytes"
    )


async def test_websocket_to_allowed_host_works_and_is_counted(
    world: World, client: aiohttp.ClientSession
) -> None:
    url = f"wss://stream.partner.example:{world.api.port}/ws"
    tls = client_tls(world.sandbox_ca)
    async with client.ws_connect(url, proxy=world.proxy, ssl=tls) as socket_:
        await socket_.send_str("hello")
        reply = await socket_.receive_str()

    assert reply == "echo:hello"
    await _until(lambda: bool(world.ends()))
    upgrade = world.decisions()[-1]
    assert (upgrade["rule"], upgrade["method"], upgrade["path"]) == (
        "streams",
        "GET",
        "/ws",
    )
    end = world.ends()[-1]
    assert end["request_id"] == upgrade["request_id"]
    assert end["status"] == 101 and end["bytes_out"] == 5 and end["bytes_in"] == 10


async def test_websocket_to_denied_host_or_path_is_refused(
    world: World, client: aiohttp.ClientSession
) -> None:
    tls = client_tls(world.sandbox_ca)
    denied_host = f"wss://evil.example.com:{world.api.port}/ws"
    denied_path = f"wss://stream.partner.example:{world.api.port}/other"

    with pytest.raises(aiohttp.ClientHttpProxyError) as host_refused:
        await client.ws_connect(denied_host, proxy=world.proxy, ssl=tls)
    with pytest.raises(aiohttp.WSServerHandshakeError) as path_refused:
        await client.ws_connect(denied_path, proxy=world.proxy, ssl=tls)

    assert host_refused.value.status == 403 and path_refused.value.status == 403
    records = world.decisions()
    assert (records[-3]["host"], records[-3]["decision"]) == (
        "evil.example.com",
        "deny",
    )
    assert (records[-1]["path"], records[-1]["decision"]) == ("/other", "deny")
    assert world.api.seen == []


# The environment the app is given


async def test_app_environment_points_everything_at_egress(world: World) -> None:
    env = world.sandbox.app_environment()

    for name in ("HTTP_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        assert env[name] == world.proxy
    assert env["NO_PROXY"] == "" and env["no_proxy"] == ""
    bundle = await asyncio.to_thread(Path(env["SSL_CERT_FILE"]).read_bytes)
    assert await asyncio.to_thread(world.sandbox_ca.read_bytes) in bundle
    assert (
        env["REQUESTS_CA_BUNDLE"]
        == env["NODE_EXTRA_CA_CERTS"]
        == str(env["CURL_CA_BUNDLE"])
    )
    state = world.sandbox_ca.parent
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _until(check: Any, seconds: float = 5.0) -> None:
    """Records written after the response was released take a moment."""
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still false after {seconds}s: {check}")


async def test_unwritable_audit_log_refuses_everything(
    policy_dir: Path, tokens: TokenFactory, app: RecordingApp
) -> None:
    text = "egress:\n  default: allow\n  block_private_networks: false\n"
    policy = await asyncio.to_thread(write_policy, policy_dir, text, tokens.jwks)
    resolver = StaticResolver({"models.example.com": ["127.0.0.2"]})
    egress = EgressConfig(listen=("127.0.0.1", 0), resolver=resolver)
    async with running_sandbox(
        policy, app.url, Path("/dev/full"), egress=egress
    ) as sandbox:
        assert sandbox.egress is not None
        status, body, _, writer = await raw_connect(
            sandbox.egress.url, "models.example.com:443"
        )
        writer.close()

    assert status == 503
    assert json.loads(body)["reason"] == (
        "the audit log cannot be written, so nothing leaves the sandbox"
    )
    assert resolver.asked == []
