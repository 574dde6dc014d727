"""Per-caller rate and quota limits: loading, counting, and 429 end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandbox.errors import PolicyError
from sandbox.ingress.limits import CallerLimits
from sandbox.policy.inputs import Identity
from sandbox.policy.model import Policy
from tests.support import (
    RecordingApp,
    TokenFactory,
    audit_records,
    running_sandbox,
    write_policy,
)

POLICY = """\
ingress:
  rules:
    - name: summarize
      methods: [POST]
      paths: [/v1/summarize]
      rate: {per_second: 1, burst: 2}
    - name: uploads
      methods: [PUT]
      paths: [/v1/uploads/**]
      quota: {bytes: 1KiB, per: 1h, key: "claim:tenant"}
    - name: health
      methods: [GET]
      paths: [/healthz]
      anonymous: true
      quota: {requests: 3, per: 1d}
"""


@pytest.fixture
def policy(policy_dir: Path, tokens: TokenFactory) -> Policy:
    return write_policy(policy_dir, POLICY, tokens.jwks)


def rules(policy: Policy) -> dict[str, Any]:
    return {rule.name: rule for rule in policy.ingress.rules}


def test_limits_load_with_their_defaults(policy: Policy) -> None:
    summarize, uploads, health = (
        rules(policy)[n] for n in ("summarize", "uploads", "health")
    )

    assert (summarize.rate.per_second, summarize.rate.burst) == (1.0, 2.0)
    assert summarize.rate.key.kind == "subject"
    assert (uploads.quota.limit, uploads.quota.unit, uploads.quota.window) == (
        1024,
        "bytes",
        3600.0,
    )
    assert (uploads.quota.key.kind, uploads.quota.key.claim) == ("claim", "tenant")
    assert health.quota.key.kind == "source"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "anonymous: true\n      rate: {per_second: 1, key: subject}",
            "rate.key: an anonymous rule has no verified subject",
        ),
        (
            "quota: {requests: 5, bytes: 1MiB, per: 1h}",
            "quota: expected exactly one of 'requests' or 'bytes'",
        ),
        ("quota: {requests: 0, per: 1h}", "quota.requests: expected a whole number"),
        ("rate: {per_second: 0}", "rate.per_second: expected a number above zero"),
        (
            "rate: {per_second: 1, key: tenant}",
            "rate.key: expected 'subject', 'source' or 'claim:NAME'",
        ),
        (
            "effect: deny\n      rate: {per_second: 1}",
            "rate: applies to allow rules only",
        ),
        ("rate: {per_second: 1, burst: 2, window: 1s}", "rate.window: unknown field"),
    ],
)
def test_bad_limits_are_refused_at_load(
    policy_dir: Path, tokens: TokenFactory, rule: str, message: str
) -> None:
    body = f"ingress:\n  rules:\n    - name: r\n      paths: [/x]\n      {rule}\n"

    with pytest.raises(PolicyError) as caught:
        write_policy(policy_dir, body, tokens.jwks)

    assert message in str(caught.value)


ALICE = Identity("https://i", "alice", {"tenant": "t1"})
BOB = Identity("https://i", "bob", {"tenant": "t1"})


def test_rate_spends_the_burst_then_refills(policy: Policy) -> None:
    now = [0.0]
    limits = CallerLimits(policy.ingress.rules, monotonic=lambda: now[0])

    answers = [limits.admit("summarize", ALICE, "1.2.3.4", None) for _ in range(3)]
    other = limits.admit("summarize", BOB, "1.2.3.4", None)
    now[0] += 1.0
    later = limits.admit("summarize", ALICE, "1.2.3.4", None)

    assert answers[:2] == [None, None] and other is None and later is None
    assert answers[2] is not None and answers[2].retry_after == 1
    assert "allows 1 requests a second (burst 2) per subject" in answers[2].reason
    assert "'alice'" in answers[2].reason


def test_request_quota_resets_with_its_window(policy: Policy) -> None:
    wall = [86400.0 * 100 + 10]
    limits = CallerLimits(policy.ingress.rules, wall=lambda: wall[0])

    first = [limits.admit("health", None, "10.0.0.1", None) for _ in range(4)]
    elsewhere = limits.admit("health", None, "10.0.0.2", None)
    wall[0] += 86400
    next_day = limits.admit("health", None, "10.0.0.1", None)

    assert first[:3] == [None] * 3 and elsewhere is None and next_day is None
    assert first[3] is not None and first[3].retry_after == 86400 - 10
    assert "allows 3 requests per 1d per source; source 10.0.0.1 has used 3" in (
        first[3].reason
    )


def test_byte_quota_counts_what_was_sent_by_claim(policy: Policy) -> None:
    limits = CallerLimits(policy.ingress.rules)

    assert limits.admit("uploads", ALICE, "", 600) is None
    limits.charge("uploads", ALICE, "", 600)
    shared = limits.admit("uploads", BOB, "", 600)
    small = limits.admit("uploads", BOB, "", 400)

    assert shared is not None and 'claim tenant="t1" has used 600' in shared.reason
    assert small is None


async def test_over_the_rate_is_429_with_retry_after_and_audited(
    policy: Policy, app: RecordingApp, tokens: TokenFactory, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {tokens.issue('carol')}"}
    async with (
        running_sandbox(policy, app.url, tmp_path / "a.jsonl") as sandbox,
        aiohttp.ClientSession() as client,
    ):
        url = sandbox.ingress_urls[0] + "/v1/summarize"
        statuses = []
        for _ in range(3):
            async with client.post(url, headers=headers, data=b"x") as response:
                statuses.append(response.status)
                body = await response.json()
                retry_after = response.headers.get("Retry-After")

    assert statuses == [200, 200, 429]
    assert body["error"] == "too_many_requests" and "carol" in body["reason"]
    assert retry_after == "1"
    assert len(app.seen) == 2
    record = audit_records(tmp_path / "a.jsonl")[-1]
    assert (record["decision"], record["status"], record["rule"]) == (
        "deny",
        429,
        "summarize",
    )


async def test_report_mode_records_the_limit_and_lets_the_request_through(
    policy_dir: Path, tokens: TokenFactory, app: RecordingApp, tmp_path: Path
) -> None:
    policy = await asyncio.to_thread(
        write_policy, policy_dir, "mode: report\n" + POLICY, tokens.jwks
    )
    async with (
        running_sandbox(policy, app.url, tmp_path / "a.jsonl") as sandbox,
        aiohttp.ClientSession() as client,
    ):
        for _ in range(4):
            async with client.get(sandbox.ingress_urls[0] + "/healthz") as response:
                assert response.status == 200

    last = audit_records(tmp_path / "a.jsonl")[-1]
    assert len(app.seen) == 4
    assert (last["decision"], last["enforced"], last["status"]) == ("deny", False, 200)
    assert last["reason"].startswith(
        "report mode, would refuse with 429: rule 'health'"
    )
