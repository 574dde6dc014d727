"""Microseconds per ingress decision: YAML rules, embedded Rego, and OPA
(the fake server of tests/fake_opa.py, over loopback).

    .venv/bin/python bench/decision_bench.py [--decisions 2000]

Decides the example's test cases (policies/acme-clinical-notes and its Rego
twin) round-robin, one at a time, and prints the median and 90th percentile
of each engine's await, plus the raw rego-cpp evaluation without the thread
hop. Bounded by --decisions per engine. The machine is shared and noisy:
compare figures from one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.engines import build_engine  # noqa: E402
from sandbox.engines.embedded import CompiledRego  # noqa: E402
from sandbox.engines.yaml_engine import YamlEngine  # noqa: E402
from sandbox.policy.input_document import ingress_request  # noqa: E402
from sandbox.policy.inputs import IngressRequest  # noqa: E402
from sandbox.policy.loader import load_policy  # noqa: E402
from sandbox.policy.policy_tests import load_cases  # noqa: E402
from tests.fake_opa import FakeOpa  # noqa: E402

Decide = Callable[[IngressRequest], Awaitable[object]]


async def timed(decide: Decide, requests: list[IngressRequest], n: int) -> list[float]:
    samples = []
    for index in range(n):
        started = time.perf_counter()
        await decide(requests[index % len(requests)])
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def timed_sync(
    compiled: CompiledRego, documents: list[dict[str, Any]], n: int
) -> list[float]:
    texts = [json.dumps(document) for document in documents]
    samples = []
    for index in range(n):
        started = time.perf_counter()
        compiled.evaluate("ingress", texts[index % len(texts)])
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def show(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    print(f"{name:<34} median {statistics.median(ordered):9.1f} us   p90 {p90:9.1f} us")


async def main(decisions: int) -> None:
    yaml_policy = load_policy(ROOT / "policies/acme-clinical-notes")
    rego_policy = load_policy(ROOT / "policies/acme-clinical-notes-rego")
    documents = [c.document for c in load_cases(yaml_policy) if c.document]
    requests = [ingress_request(document) for document in documents]
    assert rego_policy.rego is not None

    show(
        "yaml (pure functions)",
        await timed(YamlEngine(yaml_policy).decide_ingress, requests, decisions),
    )
    show(
        "rego-cpp evaluate (no thread hop)",
        timed_sync(CompiledRego(rego_policy.rego), documents, decisions),
    )
    embedded = build_engine(rego_policy)
    await embedded.start()
    show(
        "embedded rego (worker thread)",
        await timed(embedded.decide_ingress, requests, decisions),
    )
    await embedded.close()
    opa = FakeOpa()
    await opa.start()
    remote = build_engine(rego_policy, opa_url=opa.url)
    await remote.start()
    show(
        "opa (fake server, loopback)",
        await timed(remote.decide_ingress, requests, decisions),
    )
    await remote.close()
    await opa.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    asyncio.run(main(parser.parse_args().decisions))
