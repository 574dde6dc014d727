"""The Rego example behind ``sandbox run``, embedded and on OPA (the fake
server of tests/fake_opa.py): same decisions end to end; OPA slow, failing
or down is a 503 the app never sees; OPA gets exactly the bundle."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandbox.engines import build_engine
from sandbox.engines.base import EngineStartError
from sandbox.policy.loader import load_policy
from sandbox.policy.model import Policy
from tests.fake_opa import FakeOpa
from tests.support import (
    AUDIENCE,
    ISSUER,
    RecordingApp,
    TokenFactory,
    audit_records,
    running_sandbox,
)

ROOT = Path(__file__).resolve().parent.parent
TWIN = ROOT / "policies/acme-clinical-notes-rego"


def twin_with_test_issuer(folder: Path, tokens: TokenFactory) -> Policy:
    """The Rego example, trusting the test issuer instead of the hospital's."""
    shutil.copytree(TWIN, folder)
    (folder / "keys/acme.jwks.json").write_text(json.dumps(tokens.jwks))
    text = (folder / "policy.yaml").read_text()
    text = text.replace("https://login.acme-hospital.example", ISSUER)
    (folder / "policy.yaml").write_text(text.replace("notes-summarizer", AUDIENCE))
    return load_policy(folder)


@pytest.fixture
def policy(tmp_path: Path, tokens: TokenFactory) -> Policy:
    return twin_with_test_issuer(tmp_path / "twin", tokens)


async def call(url: str, method: str, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, url + path, headers=headers) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize("engine", ["embedded", "opa"])
async def test_rego_example_is_enforced_end_to_end(
    policy: Policy,
    app: RecordingApp,
    tokens: TokenFactory,
    opa: FakeOpa,
    tmp_path: Path,
    engine: str,
) -> None:
    options = {"opa_url": opa.url} if engine == "opa" else {}
    audit = tmp_path / "audit.jsonl"
    async with running_sandbox(policy, app.url, audit, **options) as sandbox:
        url = sandbox.ingress_urls[0]
        allowed = await call(url, "POST", "/v1/summarize", tokens.clinician())
        no_token = await call(url, "POST", "/v1/summarize")
        intern = await call(
            url, "POST", "/v1/summarize", tokens.issue(role="intern", groups=[])
        )
        admin = await call(url, "GET", "/v1/%2e%2e/admin/users", tokens.clinician())

    assert allowed[0] == 200 and allowed[1]["app"] == "yes"
    assert [no_token[0], intern[0], admin[0]] == [401, 403, 403]
    assert "'role' to be one of ['clinician', 'researcher']" in intern[1]["reason"]
    assert [seen.path for seen in app.seen] == ["/v1/summarize"]
    rules = [record["rule"] for record in audit_records(audit)]
    assert rules == ["clinicians-summarize"] * 3 + ["no-admin"]
    assert bool(opa.queries) is (engine == "opa")


@pytest.mark.parametrize("trouble", ["slow", "failing", "down"])
async def test_opa_trouble_is_a_503_the_app_never_sees(
    policy: Policy,
    app: RecordingApp,
    tokens: TokenFactory,
    opa: FakeOpa,
    tmp_path: Path,
    trouble: str,
) -> None:
    audit = tmp_path / "audit.jsonl"
    async with running_sandbox(
        policy, app.url, audit, opa_url=opa.url, opa_timeout=0.3
    ) as sandbox:
        opa.delay = 2.0 if trouble == "slow" else 0.0
        opa.fail = trouble == "failing"
        if trouble == "down":
            await opa.stop()
        status, body = await call(
            sandbox.ingress_urls[0], "POST", "/v1/summarize", tokens.clinician()
        )

    assert status == 503 and app.seen == []
    expected = {"slow": "did not answer in 0.3s", "failing": "failed (500)"}
    assert expected.get(trouble, "is unreachable") in body["reason"]
    record = audit_records(audit)[-1]
    assert (record["decision"], record["status"], record["rule"]) == (
        "deny",
        503,
        "engine",
    )


async def test_opa_start_puts_exactly_the_bundle_modules_and_data(
    policy: Policy, opa: FakeOpa
) -> None:
    opa.policies["sandbox/stale.rego"] = "package stale\n"
    engine = build_engine(policy, opa_url=opa.url)

    await engine.start()
    await engine.close()

    assert policy.rego is not None
    assert opa.policies == {
        f"sandbox/{module.path}": module.source for module in policy.rego.modules
    }
    folder = Path(policy.root)
    rules = await asyncio.to_thread((folder / "rules.json").read_text)
    assert opa.data == json.loads(rules)


async def test_opa_holding_foreign_modules_stops_the_start(
    policy: Policy, opa: FakeOpa
) -> None:
    opa.policies["someone-else"] = "package sandbox.ingress\n"
    engine = build_engine(policy, opa_url=opa.url)

    with pytest.raises(EngineStartError, match="someone-else"):
        await engine.start()
    await engine.close()


async def test_unreachable_opa_at_start_stops_the_start(
    policy: Policy, opa: FakeOpa
) -> None:
    await opa.stop()
    engine = build_engine(policy, opa_url=opa.url)

    with pytest.raises(EngineStartError, match="refused the bundle"):
        await engine.start()
    await engine.close()
