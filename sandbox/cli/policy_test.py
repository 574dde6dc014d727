"""``sandbox policy test PATH``: run the cases in the policy's tests.yaml."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from sandbox.engines import DecisionEngine, build_engine
from sandbox.engines.base import EngineStartError
from sandbox.engines.yaml_engine import YamlEngine
from sandbox.errors import PolicyError
from sandbox.policy.loader import load_policy
from sandbox.policy.model import Policy
from sandbox.policy.policy_tests import CaseResult, TestCase, load_cases, run_cases

ENGINES = ("yaml", "rego", "opa")
_PASS, _FAIL = "✓", "✗"


def register(actions: Any) -> None:
    test = actions.add_parser(
        "test",
        help="run the cases in the policy folder's tests.yaml; exit 1 on a failure",
    )
    test.add_argument("path", help="a policy file, or the folder holding policy.yaml")
    test.add_argument(
        "--engine",
        choices=ENGINES,
        help="yaml: the YAML rules only; rego: embedded Rego where the policy's "
        "rego section says so; opa: the same, on the OPA server at --opa-url "
        "(default: rego when the policy has a rego section, else yaml)",
    )
    test.add_argument("--opa-url", help="the OPA server for --engine opa")
    test.add_argument(
        "--opa-timeout", type=float, default=1.0, help="seconds (default 1)"
    )
    test.set_defaults(handler=test_command)


def test_command(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.path)
        cases = load_cases(policy)
        engine = _engine(policy, args)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"sandbox policy test: {exc}", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(_run(engine, cases))
    except EngineStartError as exc:
        print(f"sandbox policy test: {exc}", file=sys.stderr)
        return 2
    return _report(results, engine.name)


def _engine(policy: Policy, args: argparse.Namespace) -> DecisionEngine:
    if args.engine == "opa" and not args.opa_url:
        raise ValueError("--engine opa needs --opa-url")
    if args.engine != "opa" and args.opa_url:
        raise ValueError("--opa-url goes with --engine opa")
    if args.engine in ("rego", "opa") and policy.rego is None:
        raise ValueError(f"policy {policy.name!r} has no rego section to evaluate")
    if args.engine == "yaml":
        if policy.rego is not None and policy.rego.decides:
            decided = ", ".join(sorted(policy.rego.decides))
            raise ValueError(f"--engine yaml: Rego decides {decided} in this policy")
        return YamlEngine(policy)
    return build_engine(policy, opa_url=args.opa_url, opa_timeout=args.opa_timeout)


async def _run(engine: DecisionEngine, cases: Sequence[TestCase]) -> list[CaseResult]:
    await engine.start()
    try:
        return await run_cases(engine, cases)
    finally:
        await engine.close()


def _report(results: Sequence[CaseResult], engine: str) -> int:
    width = max((len(result.case.name) for result in results), default=0)
    failed = [result for result in results if result.mismatch]
    for result in results:
        print(_row(result, width))
        if result.mismatch:
            line = f"line {result.case.line}: " if result.case.line else ""
            print(f"    {line}{result.mismatch}")
    count = len(results)
    print(
        f"{count} case{'s' if count != 1 else ''}, {len(failed)} failed "
        f"(engine {engine})"
    )
    return 1 if failed else 0


def _row(result: CaseResult, width: int) -> str:
    mark = _FAIL if result.mismatch else _PASS
    decision = result.decision
    outcome = "allow" if decision.allow else f"deny {result.status}"
    return f"{mark} {result.case.name:<{width}}  {outcome:<8}  {decision.rule}"
