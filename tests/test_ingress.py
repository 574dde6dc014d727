"""The ingress proxy end to end: real sandbox, real app, real client, loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import CIMultiDict

from sandbox.ingress.upstream import UpstreamTimeouts
from sandbox.policy.model import Policy
from tests.support import (
    AUDIENCE,
    ISSUER,
    RecordingApp,
    TokenFactory,
    audit_records,
    running_sandbox,
    write_policy,
)

POLICY = """\
ingress:
  default: deny
  rules:
    - name: health
      methods: [GET]
      paths: [/healthz]
      anonymous: true
    - name: clinicians-summarize
      methods: [POST]
      paths: [/v1/summarize, /v1/models/*/predict]
      claims:
        role: [clinician, researcher]
        groups: {contains: oncology}
      max_body: 1KiB
    - name: uploads
      methods: [PUT]
      paths: [/v1/uploads/**]
    - name: events
      methods: [GET]
      paths: [/sse, /slow, /v1/**]
      anonymous: true
    - name: no-admin
      effect: deny
      paths: [/admin/**]
    - name: admin-page
      methods: ["*"]
      paths: [/admin/**]
"""


@pytest.fixture
def policy(policy_dir: Path, tokens: TokenFactory) -> Policy:
    return write_policy(policy_dir, POLICY, tokens.jwks)


@pytest.fixture
async def sandbox(policy: Policy, app: RecordingApp, tmp_path: Path) -> Any:
    async with running_sandbox(policy, app.url, tmp_path / "audit.jsonl") as running:
        yield running


@pytest.fixture
async def client() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    client: aiohttp.ClientSession, sandbox: Any, method: str, path: str, **kwargs: Any
) -> tuple[int, CIMultiDict[str], Any]:
    url = sandbox.ingress_urls[0] + path
    async with client.request(
        method, url, skip_auto_headers=("Accept-Encoding",), **kwargs
    ) as response:
        body = await response.read()
        data = (
            json.loads(body)
            if body and response.content_type == "application/json"
            else body
        )
        return response.status, CIMultiDict(response.headers), data


def last_decision(sandbox: Any) -> dict[str, Any]:
    return audit_records(sandbox.audit_path)[-1]


async def test_allowed_call_reaches_the_app_with_the_verified_identity(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp, tokens: TokenFactory
) -> None:
    status, headers, body = await call(
        client,
        sandbox,
        "POST",
        "/v1/summarize",
        data=b"note",
        headers=bearer(tokens.clinician()),
    )

    assert status == 200 and body["app"] == "yes"
    seen = app.seen[-1]
    assert seen.headers["X-Sandbox-Subject"] == "alice"
    assert seen.headers["X-Sandbox-Issuer"] == ISSUER
    claims = json.loads(
        base64.urlsafe_b64decode(seen.headers["X-Sandbox-Claims"] + "==")
    )
    assert claims["role"] == "clinician" and claims["groups"] == ["oncology", "staff"]
    assert seen.headers["X-Sandbox-Rule"] == "clinicians-summarize"
    assert "Authorization" not in seen.headers
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert seen.headers["X-Request-Id"] == headers["X-Request-Id"]
    record = last_decision(sandbox)
    assert record["decision"] == "allow" and record["rule"] == "clinicians-summarize"
    assert record["sub"] == "alice" and record["iss"] == ISSUER
    assert record["status"] == 200 and record["path"] == "/v1/summarize"
    assert record["request_id"] == headers["X-Request-Id"]


async def test_anonymous_rule_needs_no_token_and_passes_no_identity(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp
) -> None:
    spoofed = {
        "X-Sandbox-Subject": "root",
        "x-sandbox-claims": "e30",
        "X-Forwarded-For": "10.9.9.9",
    }

    status, _, _ = await call(client, sandbox, "GET", "/healthz", headers=spoofed)

    assert status == 200
    seen = app.seen[-1].headers
    assert "X-Sandbox-Subject" not in seen and "X-Sandbox-Claims" not in seen
    assert seen["X-Sandbox-Rule"] == "health"
    assert seen["X-Forwarded-For"] == "127.0.0.1"


async def test_caller_identity_headers_are_replaced_by_the_verified_ones(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp, tokens: TokenFactory
) -> None:
    headers = {**bearer(tokens.clinician("bob")), "X-Sandbox-Subject": "admin"}

    status, _, _ = await call(
        client, sandbox, "POST", "/v1/models/m1/predict", headers=headers
    )

    assert status == 200
    assert app.seen[-1].headers["X-Sandbox-Subject"] == "bob"


@pytest.mark.parametrize(
    ("claims", "reason_part"),
    [
        ({"role": "intern", "groups": ["oncology"]}, "'role' to be one of"),
        (
            {"role": "clinician", "groups": ["cardiology"]},
            "'groups' to contain 'oncology'",
        ),
        ({"role": "clinician"}, "no such claim"),
        ({"role": "clinician", "groups": "oncology"}, "'groups' to contain"),
        ({"role": ["clinician"], "groups": ["oncology"]}, "'role' to be one of"),
    ],
)
async def test_token_without_the_required_claims_is_forbidden(
    sandbox: Any,
    client: aiohttp.ClientSession,
    app: RecordingApp,
    tokens: TokenFactory,
    claims: dict[str, Any],
    reason_part: str,
) -> None:
    token = tokens.issue("mallory", **claims)

    status, headers, body = await call(
        client, sandbox, "POST", "/v1/summarize", headers=bearer(token)
    )

    assert status == 403
    assert body["error"] == "forbidden" and reason_part in body["reason"]
    assert body["request_id"] == headers["X-Request-Id"]
    assert app.seen == []
    record = last_decision(sandbox)
    assert (record["decision"], record["rule"], record["status"]) == (
        "deny",
        "clinicians-summarize",
        403,
    )
    assert record["sub"] == "mallory"


async def test_missing_token_is_401_with_a_bearer_challenge(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp
) -> None:
    status, headers, body = await call(client, sandbox, "POST", "/v1/summarize")

    assert status == 401
    assert headers["WWW-Authenticate"].startswith(
        'Bearer realm="policy-sandbox", error="invalid_request"'
    )
    assert "needs a verified bearer token" in body["reason"]
    assert app.seen == []
    assert last_decision(sandbox)["status"] == 401


async def test_deny_rule_overrides_an_allow_rule(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp, tokens: TokenFactory
) -> None:
    status, _, body = await call(
        client, sandbox, "GET", "/admin/users", headers=bearer(tokens.clinician())
    )

    assert status == 403 and body["reason"] == "rule 'no-admin' denies GET /admin/users"
    assert app.seen == []
    assert last_decision(sandbox)["rule"] == "no-admin"


async def test_unmatched_route_is_denied_by_default(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp, tokens: TokenFactory
) -> None:
    status, _, body = await call(
        client, sandbox, "DELETE", "/v1/summarize", headers=bearer(tokens.clinician())
    )

    assert status == 403 and body["reason"] == "no rule allows DELETE /v1/summarize"
    assert app.seen == []
    assert last_decision(sandbox)["rule"] == "default"


async def test_body_over_max_body_is_413_before_the_app_sees_it(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp, tokens: TokenFactory
) -> None:
    status, _, body = await call(
        client,
        sandbox,
        "POST",
        "/v1/summarize",
        data=b"x" * 1025,
        headers=bearer(tokens.clinician()),
    )

    assert status == 413 and body["error"] == "payload_too_large"
    assert "1025 bytes exceeds the 1024 bytes" in body["reason"]
    assert app.seen == []


async def test_chunked_body_over_max_body_is_413_before_the_app_sees_it(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp, tokens: TokenFactory
) -> None:
    async def chunks() -> Any:
        for _ in range(5):
            yield b"y" * 300

    status, _, body = await call(
        client,
        sandbox,
        "POST",
        "/v1/summarize",
        data=chunks(),
        headers=bearer(tokens.clinician()),
    )

    assert status == 413 and "exceeds the 1024 bytes" in body["reason"]
    assert app.seen == []
    assert last_decision(sandbox)["status"] == 413


async def test_body_at_max_body_passes(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp, tokens: TokenFactory
) -> None:
    async def chunks() -> Any:
        yield b"z" * 1000
        yield b"z" * 24

    status, _, body = await call(
        client,
        sandbox,
        "POST",
        "/v1/summarize",
        data=chunks(),
        headers=bearer(tokens.clinician()),
    )

    assert status == 200 and body["body_length"] == 1024


def _hs256_with_public_key(tokens: TokenFactory) -> str:
    """The classic confusion attack: HMAC keyed with the issuer's public key."""
    public_pem = jwt.PyJWK(tokens.jwks["keys"][0]).key.public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": tokens.jwks["keys"][0]["kid"]}
    return _hand_signed(header, _claims(), public_pem)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "eve",
        "iat": now,
        "exp": now + 600,
        "role": "clinician",
        "groups": ["oncology"],
    }
    claims.update(overrides)
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _alg_none(tokens: TokenFactory) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": tokens.jwks["keys"][0]["kid"]}
    return (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}."
    )


HOSTILE_TOKENS = {
    "alg none": (_alg_none, "none"),
    "HS256 signed with the public key": (_hs256_with_public_key, "HS256"),
    "wrong issuer": (
        lambda t: t.issue(issuer="https://evil.example", role="clinician"),
        "not trusted",
    ),
    "wrong audience": (
        lambda t: t.issue(audience="other-app", role="clinician"),
        "audience",
    ),
    "expired beyond leeway": (
        lambda t: t.issue(now=time.time() - 7200, expires_in=60, role="clinician"),
        "expired",
    ),
    "nbf beyond leeway": (
        lambda t: t.issue(not_before=time.time() + 600, role="clinician"),
        "not valid before",
    ),
    "unknown kid": (lambda t: TokenFactory().clinician(), "kid"),
    "not a JWT": (lambda t: "hello-world", "JWT"),
    "one megabyte": (lambda t: "a" * 1_000_000, None),
    "issuer not in the policy, valid signature": (
        lambda t: TokenFactory().issue(
            issuer="https://other.example", role="clinician"
        ),
        "not trusted",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE_TOKENS))
async def test_hostile_token_is_refused_and_the_app_never_sees_it(
    sandbox: Any,
    client: aiohttp.ClientSession,
    app: RecordingApp,
    tokens: TokenFactory,
    name: str,
) -> None:
    make, reason_part = HOSTILE_TOKENS[name]

    status, headers, body = await call(
        client, sandbox, "POST", "/v1/summarize", headers=bearer(make(tokens))
    )

    assert app.seen == []
    if reason_part is None:
        # A 1 MB header never reaches the handler: the HTTP parser refuses it.
        assert status == 400
        return
    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert reason_part.lower() in body["reason"].lower()
    record = last_decision(sandbox)
    assert (record["status"], record["decision"], record["sub"]) == (401, "deny", None)


async def test_token_expired_within_leeway_is_accepted(
    sandbox: Any, client: aiohttp.ClientSession, tokens: TokenFactory
) -> None:
    token = tokens.issue(
        now=time.time() - 70, expires_in=60, role="clinician", groups=["oncology"]
    )

    status, _, _ = await call(
        client, sandbox, "POST", "/v1/summarize", headers=bearer(token)
    )

    assert status == 200


async def test_bad_token_on_an_anonymous_route_is_still_refused(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp
) -> None:
    status, _, _ = await call(
        client, sandbox, "GET", "/healthz", headers=bearer("not.a.jwt")
    )

    assert status == 401 and app.seen == []


async def test_non_bearer_authorization_is_invalid_request(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp
) -> None:
    status, headers, _ = await call(
        client,
        sandbox,
        "POST",
        "/v1/summarize",
        headers={"Authorization": "Basic YTpi"},
    )

    assert status == 401 and 'error="invalid_request"' in headers["WWW-Authenticate"]
    assert app.seen == []


HOSTILE_PATHS = [
    ("/v1/../admin", 403, "no-admin"),
    ("/v1/%2e%2e/admin", 403, "no-admin"),
    ("//admin", 403, "no-admin"),
    ("/admin/", 403, "no-admin"),
    ("/ADMIN", 403, "default"),
    ("/v1/%2fadmin", 400, "-"),
    ("/v1/%2Fadmin", 400, "-"),
    ("/v1\\admin", 400, "-"),
    ("/v1/%00", 400, "-"),
    ("/v1/%zz", 400, "-"),
    ("/v1/x;jsessionid=1", 400, "-"),
    ("/v1/..;/admin", 400, "-"),
    ("/../admin", 400, "-"),
]


@pytest.mark.parametrize(("path", "status", "rule"), HOSTILE_PATHS)
async def test_hostile_path_gets_the_exact_status_and_never_reaches_the_app(
    sandbox: Any,
    app: RecordingApp,
    tokens: TokenFactory,
    path: str,
    status: int,
    rule: str,
) -> None:
    # A raw socket, so that no client library normalises the path for us.
    host, port = sandbox.ingress_urls[0].removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    token = tokens.clinician()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    response = await reader.read()
    writer.close()

    assert response.startswith(f"HTTP/1.1 {status} ".encode()), response[:80]
    assert app.seen == []
    assert last_decision(sandbox)["rule"] == rule


async def test_normalised_path_is_what_the_app_receives(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp
) -> None:
    host, port = sandbox.ingress_urls[0].removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /v1//a/./b/../%7ec?q=%2f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    response = await reader.read()
    writer.close()

    assert response.startswith(b"HTTP/1.1 200 ")
    assert app.seen[-1].path == "/v1/a/~c?q=%2f"
    assert last_decision(sandbox)["path"] == "/v1/a/~c"


async def test_hop_by_hop_headers_are_stripped_both_ways(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp
) -> None:
    headers = {
        "Connection": "keep-alive, X-Private",
        "X-Private": "secret",
        "Keep-Alive": "5",
        "Proxy-Authorization": "Basic eDp5",
        "X-Kept": "yes",
    }

    status, response_headers, _ = await call(
        client, sandbox, "GET", "/v1/thing", headers=headers
    )

    assert status == 200
    seen = app.seen[-1].headers
    assert "X-Private" not in seen and "Keep-Alive" not in seen
    assert "Proxy-Authorization" not in seen and seen["X-Kept"] == "yes"
    assert "X-Hop" not in response_headers and response_headers["X-App"] == "recording"


async def test_server_sent_events_arrive_one_by_one(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp
) -> None:
    async with client.get(sandbox.ingress_urls[0] + "/sse") as response:
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
        app.release_second_event.set()
        second = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)

    assert (first, second) == (b"data: first\n\n", b"data: second\n\n")
    assert response.headers["Content-Type"] == "text/event-stream"


async def test_upload_streams_to_the_app(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp, tokens: TokenFactory
) -> None:
    async def chunks() -> Any:
        for _ in range(64):
            yield b"u" * 65536

    status, _, body = await call(
        client,
        sandbox,
        "PUT",
        "/v1/uploads/big.bin",
        data=chunks(),
        headers=bearer(tokens.clinician()),
    )

    assert status == 200 and body["body_length"] == 64 * 65536
    assert last_decision(sandbox)["bytes_in"] == 64 * 65536


async def test_upstream_connections_are_kept_alive(
    sandbox: Any, client: aiohttp.ClientSession, app: RecordingApp
) -> None:
    for _ in range(3):
        await call(client, sandbox, "GET", "/v1/ping")

    peers = {seen.peer for seen in app.seen}
    assert len(peers) == 1


async def test_app_down_is_502(
    policy: Policy, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with running_sandbox(
        policy, "http://127.0.0.1:9", tmp_path / "a.jsonl"
    ) as sandbox:
        status, _, body = await call(client, sandbox, "GET", "/v1/thing")

    assert status == 502 and body["error"] == "bad_gateway"
    record = audit_records(tmp_path / "a.jsonl")[-1]
    assert (record["decision"], record["status"], record["rule"]) == (
        "allow",
        502,
        "events",
    )


async def test_slow_app_is_504(
    policy: Policy, app: RecordingApp, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    timeouts = UpstreamTimeouts(response=0.3)
    async with running_sandbox(
        policy, app.url, tmp_path / "a.jsonl", timeouts=timeouts
    ) as sandbox:
        status, _, body = await call(client, sandbox, "GET", "/slow?seconds=3")

    assert status == 504 and "did not answer in time" in body["reason"]


async def test_unwritable_audit_log_refuses_with_503(
    policy: Policy, app: RecordingApp, client: aiohttp.ClientSession
) -> None:
    # /dev/full accepts the open and fails every write with ENOSPC.
    async with running_sandbox(policy, app.url, Path("/dev/full")) as sandbox:
        status, _, body = await call(client, sandbox, "GET", "/healthz")
        async with client.get(sandbox.admin_urls[0] + "/readyz") as ready:
            readiness = await ready.json()

    assert status == 503 and body["error"] == "unavailable"
    assert "audit log cannot be written" in body["reason"]
    assert app.seen == []
    assert ready.status == 503 and "audit" in readiness["reason"]


async def test_report_mode_forwards_and_records_what_would_be_refused(
    policy_dir: Path,
    tokens: TokenFactory,
    app: RecordingApp,
    tmp_path: Path,
    client: aiohttp.ClientSession,
) -> None:
    policy = await asyncio.to_thread(
        write_policy, policy_dir, "mode: report\n" + POLICY, tokens.jwks
    )
    async with running_sandbox(policy, app.url, tmp_path / "a.jsonl") as sandbox:
        denied = await call(client, sandbox, "GET", "/admin/x")
        unauthenticated = await call(client, sandbox, "POST", "/v1/summarize")
        allowed = await call(client, sandbox, "GET", "/healthz")
        bad_path = await call(client, sandbox, "GET", "/v1/%2f")

    assert [denied[0], unauthenticated[0], allowed[0], bad_path[0]] == [
        200,
        200,
        200,
        400,
    ]
    assert [seen.path for seen in app.seen] == ["/admin/x", "/v1/summarize", "/healthz"]
    records = audit_records(tmp_path / "a.jsonl")
    assert [(r["decision"], r["enforced"], r["status"]) for r in records] == [
        ("deny", False, 200),
        ("deny", False, 200),
        ("allow", True, 200),
        ("deny", True, 400),
    ]
    assert records[0]["reason"].startswith(
        "report mode, would refuse with 403: rule 'no-admin'"
    )
    assert records[1]["reason"].startswith("report mode, would refuse with 401")


async def test_admin_listener_serves_health_readiness_and_metrics(
    sandbox: Any, client: aiohttp.ClientSession, tokens: TokenFactory
) -> None:
    await call(client, sandbox, "GET", "/admin/x")
    await call(
        client, sandbox, "POST", "/v1/summarize", headers=bearer(tokens.clinician())
    )
    admin = sandbox.admin_urls[0]

    async with (
        client.get(admin + "/healthz") as health,
        client.get(admin + "/readyz") as ready,
    ):
        assert (health.status, ready.status) == (200, 200)
    async with client.get(admin + "/metrics") as metrics:
        text = await metrics.text()
    denied = 'decision="deny",direction="ingress",rule="no-admin",status="403"} 1.0'
    assert "sandbox_requests_total{" + denied in text
    assert 'rule="clinicians-summarize",status="200"} 1.0' in text
    assert (
        "sandbox_decision_seconds_bucket" in text
        and "sandbox_upstream_seconds_bucket" in text
    )
    async with client.get(admin + "/audit/head") as head:
        assert (await head.json())["seq"] == 2


async def test_readiness_fails_when_the_app_is_down(
    policy: Policy, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with (
        running_sandbox(policy, "http://127.0.0.1:9", tmp_path / "a.jsonl") as sandbox,
        client.get(sandbox.admin_urls[0] + "/readyz") as ready,
    ):
        body = await ready.json()

    assert ready.status == 503 and "does not accept connections" in body["reason"]
