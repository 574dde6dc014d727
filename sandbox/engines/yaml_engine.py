"""The YAML rules as a decision engine: a thin adapter over the pure
functions of :mod:`sandbox.policy.decision` and
:mod:`sandbox.policy.egress_decision`."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from sandbox.policy.addresses import IPAddress
from sandbox.policy.decision import Decision, decide_ingress
from sandbox.policy.egress_decision import EgressTarget, decide_egress
from sandbox.policy.inputs import IngressRequest
from sandbox.policy.model import Policy


class YamlEngine:
    name = "yaml"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def decide_ingress(self, request: IngressRequest) -> Decision:
        return decide_ingress(self.policy.ingress, request)

    async def decide_egress(self, document: dict[str, Any]) -> Decision:
        target, addresses = egress_target(document)
        decided = decide_egress(self.policy.egress, target, addresses)
        return Decision(decided.allow, decided.rule, decided.reason)


def egress_target(
    document: Mapping[str, Any],
) -> tuple[EgressTarget, list[IPAddress]]:
    """The destination and resolved addresses an egress document describes."""
    destination = document["destination"]
    request = document.get("request") or {}
    target = EgressTarget(
        host=destination["host"],
        port=destination["port"],
        scheme=destination.get("scheme"),
        method=request.get("method"),
        path=request.get("path"),
        declared=destination.get("declared") is True,
    )
    addresses = [ipaddress.ip_address(a) for a in destination["addresses"]]
    return target, addresses
