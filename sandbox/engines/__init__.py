"""Decision engines: the YAML rules, embedded Rego (regopy), or OPA.

``build_engine`` picks, per direction, the engine the policy asks for:
Rego where ``rego.decides`` names the direction (embedded, or the OPA
server at ``opa_url``), the YAML rules elsewhere. Where Rego decides egress,
the sandbox still refuses private and special addresses before Rego is
asked, unless the policy sets ``egress.block_private_networks: false`` or
the operator declared the address (``destination.declared``).
"""

from __future__ import annotations

from typing import Any

from sandbox.engines.base import DecisionEngine
from sandbox.engines.yaml_engine import YamlEngine, egress_target
from sandbox.policy.decision import Decision
from sandbox.policy.egress_decision import address_refusal
from sandbox.policy.input_document import EGRESS, INGRESS
from sandbox.policy.inputs import IngressRequest
from sandbox.policy.model import EgressSection, Policy

__all__ = ["DecisionEngine", "SplitEngine", "build_engine"]


class SplitEngine:
    """One engine for ingress and another for egress (they may be the same).

    With ``guard``, an egress document naming an address the section blocks
    is refused here, and the egress engine is never asked.
    """

    def __init__(
        self,
        ingress: DecisionEngine,
        egress: DecisionEngine,
        guard: EgressSection | None = None,
    ) -> None:
        self.ingress = ingress
        self.egress = egress
        self.guard = guard
        self.name = (
            ingress.name if ingress is egress else f"{ingress.name}+{egress.name}"
        )

    async def start(self) -> None:
        await self.ingress.start()
        if self.egress is not self.ingress:
            await self.egress.start()

    async def close(self) -> None:
        await self.ingress.close()
        if self.egress is not self.ingress:
            await self.egress.close()

    async def decide_ingress(self, request: IngressRequest) -> Decision:
        return await self.ingress.decide_ingress(request)

    async def decide_egress(self, document: dict[str, Any]) -> Decision:
        if self.guard is not None:
            refusal = address_refusal(self.guard, *egress_target(document))
            if refusal is not None:
                return Decision(False, refusal.rule, refusal.reason)
        return await self.egress.decide_egress(document)


def build_engine(
    policy: Policy, *, opa_url: str | None = None, opa_timeout: float | None = None
) -> DecisionEngine:
    """The engine enforcing ``policy``; call ``start`` before deciding."""
    yaml = YamlEngine(policy)
    if policy.rego is None:
        return yaml
    rego = _rego_engine(policy, opa_url, opa_timeout)
    rego_egress = EGRESS in policy.rego.decides
    return SplitEngine(
        rego if INGRESS in policy.rego.decides else yaml,
        rego if rego_egress else yaml,
        guard=policy.egress if rego_egress else None,
    )


def _rego_engine(
    policy: Policy, opa_url: str | None, opa_timeout: float | None
) -> DecisionEngine:
    assert policy.rego is not None
    if opa_url is None:
        from sandbox.engines.embedded import EmbeddedRegoEngine

        return EmbeddedRegoEngine(policy.rego)
    from sandbox.engines.opa import DEFAULT_TIMEOUT, OpaEngine

    return OpaEngine(policy.rego, opa_url, opa_timeout or DEFAULT_TIMEOUT)
