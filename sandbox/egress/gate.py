"""The egress gate: decide, bound and audit what the app sends outward.

The mitmproxy addon translates connections and requests into calls here;
this module knows nothing of mitmproxy. Every question ends in exactly one
audited decision; an allowed exchange then has its bytes counted against
the rule's limits as they pass.

The YAML rules decide in two steps, so a name no rule allows is never looked
up. Where Rego decides egress (``engine``), the name is looked up once, a
blocked address is refused by the sandbox, and the engine is asked with the
addresses in the input document. An engine that failed, raised or did not
answer refuses with 503, never allows.

A name the operator declared (``hosts``) is never looked up: its declared
address is used, and private ranges are no reason to refuse it. The rules
or the engine still decide by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sandbox.egress.budget import ByteBudgets
from sandbox.egress.declared import DECLARED, LITERAL, RESOLVED
from sandbox.egress.records import Exchange, Recorder
from sandbox.egress.resolver import Resolver
from sandbox.engines.base import DecisionEngine, EgressAnswer, unavailable
from sandbox.policy.addresses import IPAddress, parse_ip_literal
from sandbox.policy.decision import Decision
from sandbox.policy.egress_decision import (
    EgressDecision,
    EgressTarget,
    address_refusal,
    check_addresses,
    select_rules,
)
from sandbox.policy.input_document import egress_document
from sandbox.policy.model import EgressSection

log = logging.getLogger(__name__)

AUDIT_DOWN = "the audit log cannot be written, so nothing leaves the sandbox"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


class EgressGate:
    def __init__(
        self,
        section: EgressSection,
        resolver: Resolver,
        recorder: Recorder,
        budgets: ByteBudgets,
        resolve_timeout: float = 5.0,
        engine: DecisionEngine | None = None,
        hosts: Mapping[str, IPAddress] | None = None,
    ) -> None:
        self.section = section
        # None: the section's YAML rules decide.
        self.engine = engine
        self.resolver = resolver
        self.recorder = recorder
        self.budgets = budgets
        self.resolve_timeout = resolve_timeout
        # Canonical name -> the address the operator declared for it.
        self.hosts = dict(hosts or {})

    async def admit(
        self,
        exchange: Exchange,
        target: EgressTarget,
        *,
        pinned: Sequence[IPAddress] = (),
        announced: int | None = None,
    ) -> Refusal | None:
        """Decide and audit; the refusal to send, or None to let it through.

        ``pinned`` are addresses already checked for this tunnel, so a
        request inside it is never looked up again.
        """
        started = time.perf_counter()
        exchange.bytes_out = announced or 0
        target = self._sourced(exchange, target)
        if self.recorder.audit.healthy:
            refusal = await self._decide(exchange, target, pinned, announced)
        else:
            refusal = self._refused(exchange, Refusal(503, AUDIT_DOWN))
        self.recorder.observe_decision(started)
        exchange.status = refusal.status if refusal else _status_when_allowed(target)
        if not await self.recorder.decision(exchange):
            exchange.allowed = False
            return Refusal(503, AUDIT_DOWN)
        exchange.bytes_out = 0
        return refusal

    def count_out(self, exchange: Exchange, size: int) -> str | None:
        """Count bytes about to leave; the reason to cut, when they may not."""
        limits = exchange.limits
        if limits is None:
            exchange.bytes_out += size
            return None
        body_limit = limits.max_request_body
        # A body limit bounds one request; a tunnel's bytes are no body.
        is_body = exchange.method is not None
        if (
            is_body
            and body_limit is not None
            and exchange.bytes_out + size > body_limit
        ):
            return f"body exceeds the {body_limit} bytes rule {limits.name!r} allows"
        if not self.budgets.spend(limits, exchange.destination, size):
            return self.budgets.spent_reason(limits, exchange.destination)
        exchange.bytes_out += size
        return None

    async def _decide(
        self,
        exchange: Exchange,
        target: EgressTarget,
        pinned: Sequence[IPAddress],
        announced: int | None,
    ) -> Refusal | None:
        if self.engine is not None:
            return await self._ask_engine(self.engine, exchange, target, pinned)
        selection = select_rules(self.section, target)
        if selection.refusal is not None:
            return self._apply(exchange, selection.refusal)
        try:
            addresses = list(pinned) or await self._addresses(target)
        except (OSError, TimeoutError) as exc:
            reason = f"cannot resolve {target.host!r}: {exc or 'timed out'}"
            return self._refused(exchange, Refusal(502, reason))
        decision = check_addresses(self.section, target, selection, addresses)
        return self._apply(exchange, decision) or self._limits(exchange, announced)

    async def _ask_engine(
        self,
        engine: DecisionEngine,
        exchange: Exchange,
        target: EgressTarget,
        pinned: Sequence[IPAddress],
    ) -> Refusal | None:
        try:
            addresses = list(pinned) or await self._addresses(target)
        except (OSError, TimeoutError) as exc:
            reason = f"cannot resolve {target.host!r}: {exc or 'timed out'}"
            return self._refused(exchange, Refusal(502, reason))
        refusal = address_refusal(self.section, target, addresses)
        if refusal is not None:
            return self._apply(exchange, refusal)
        answer = await _asked(engine, _document(target, addresses))
        if answer.unavailable:
            exchange.rule = answer.rule
            return self._refused(exchange, Refusal(503, answer.reason))
        return self._apply(exchange, _from_answer(answer, target, addresses[0]))

    def _sourced(self, exchange: Exchange, target: EgressTarget) -> EgressTarget:
        """``target``, marked when declared; the exchange told how its address
        is found."""
        if parse_ip_literal(target.host) is not None:
            # An address equal to a declared one is still only a literal.
            exchange.address_source = LITERAL
            return target
        if target.host in self.hosts:
            exchange.address_source = DECLARED
            return replace(target, declared=True)
        exchange.address_source = RESOLVED
        return target

    async def _addresses(self, target: EgressTarget) -> list[IPAddress]:
        literal = parse_ip_literal(target.host)
        if literal is not None:
            return [literal]
        if target.declared:
            return [self.hosts[target.host]]
        async with asyncio.timeout(self.resolve_timeout):
            return await self.resolver.resolve(target.host, target.port)

    def _apply(self, exchange: Exchange, decision: EgressDecision) -> Refusal | None:
        exchange.allowed = decision.allow
        exchange.rule = decision.rule
        exchange.reason = decision.reason
        exchange.address = decision.address
        exchange.limits = decision.allowed_by
        exchange.intercept = decision.intercept
        return None if decision.allow else Refusal(403, decision.reason)

    def _limits(self, exchange: Exchange, announced: int | None) -> Refusal | None:
        limits = exchange.limits
        if limits is None:
            return None
        body_limit = limits.max_request_body
        if announced is not None and body_limit is not None and announced > body_limit:
            reason = (
                f"body of {announced} bytes exceeds the {body_limit} bytes rule "
                f"{limits.name!r} allows"
            )
            return self._refused(exchange, Refusal(413, reason))
        remaining = self.budgets.remaining(limits, exchange.destination)
        if remaining is not None and (remaining <= 0 or (announced or 0) > remaining):
            reason = self.budgets.spent_reason(limits, exchange.destination)
            return self._refused(exchange, Refusal(403, reason))
        return None

    def _refused(self, exchange: Exchange, refusal: Refusal) -> Refusal:
        exchange.allowed = False
        exchange.reason = refusal.reason
        return refusal


async def _asked(engine: DecisionEngine, document: dict[str, Any]) -> Decision:
    """The engine's answer. Engines never raise, but mitmproxy would carry on
    past a hook that did, so anything raised is refused here."""
    try:
        return await engine.decide_egress(document)
    except Exception as exc:
        log.exception("the %s engine raised on an egress decision", engine.name)
        return unavailable(f"the {engine.name} engine failed: {exc!r}")


def _document(target: EgressTarget, addresses: Sequence[IPAddress]) -> dict[str, Any]:
    return egress_document(
        host=target.host,
        port=target.port,
        addresses=addresses,
        scheme=target.scheme,
        method=target.method,
        path=target.path,
        query=target.query,
        headers=target.headers,
        declared=target.declared,
    )


def _from_answer(
    answer: Decision, target: EgressTarget, address: IPAddress
) -> EgressDecision:
    """An engine's answer as the gate applies it: no rule limits, one address."""
    if not answer.allow:
        return EgressDecision(False, answer.rule, answer.reason)
    # Only a tunnel can be intercepted; a request is already seen.
    intercept = (
        isinstance(answer, EgressAnswer) and answer.intercept and not target.is_request
    )
    return EgressDecision(
        True, answer.rule, answer.reason, address=address, intercept=intercept
    )


def _status_when_allowed(target: EgressTarget) -> int | None:
    # A tunnel's answer is ours (200); a request's comes from the origin later.
    return None if target.is_request else 200
