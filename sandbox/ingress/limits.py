"""Per-caller rate and quota limits of the ingress rules, counted in memory.

Each process counts on its own (replicas do not share counts), and forgets
the least recently seen callers past ``MAX_CALLERS`` per rule so that memory
stays bounded however many callers there are. Quotas use fixed windows
aligned to the clock (a ``1d`` quota resets at midnight UTC).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sandbox.policy.inputs import Identity
from sandbox.policy.model import CallerKey, IngressRule, Quota, RateLimit
from sandbox.ratelimit import TokenBucket

MAX_CALLERS = 100_000


@dataclass(frozen=True, slots=True)
class OverLimit:
    retry_after: int  # whole seconds, at least 1
    reason: str


@dataclass
class _Window:
    index: int
    used: int = 0


class CallerLimits:
    def __init__(
        self,
        rules: Iterable[IngressRule],
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._rules = {rule.name: rule for rule in rules if rule.rate or rule.quota}
        self._monotonic = monotonic
        self._wall = wall
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def admit(
        self,
        rule_name: str,
        identity: Identity | None,
        source: str,
        announced: int | None,
    ) -> OverLimit | None:
        """Count one request against the rule's limits, or say why it is over."""
        rule = self._rules.get(rule_name)
        if rule is None:
            return None
        if rule.rate is not None:
            over = self._take(
                rule.name, rule.rate, _caller(rule.rate.key, identity, source)
            )
            if over:
                return over
        if rule.quota is not None:
            caller = _caller(rule.quota.key, identity, source)
            return self._spend(rule.name, rule.quota, caller, announced or 0)
        return None

    def charge(
        self, rule_name: str, identity: Identity | None, source: str, sent: int
    ) -> None:
        """Add the bytes a request actually sent to a byte quota."""
        rule = self._rules.get(rule_name)
        if rule is None or rule.quota is None or rule.quota.unit != "bytes":
            return
        caller = _caller(rule.quota.key, identity, source)
        self._window(rule.name, rule.quota, caller).used += sent

    def _take(self, rule: str, rate: RateLimit, caller: str) -> OverLimit | None:
        bucket = _recent(self._buckets, (rule, caller))
        if bucket is None:
            bucket = TokenBucket(rate.per_second, rate.burst, self._monotonic)
            _remember(self._buckets, (rule, caller), bucket)
        wait = bucket.take()
        if not wait:
            return None
        return OverLimit(
            math.ceil(wait),
            f"rule {rule!r} allows {rate.per_second:g} requests a second (burst "
            f"{rate.burst:g}) per {rate.key.describe()}; {caller} is over it",
        )

    def _spend(
        self, rule: str, quota: Quota, caller: str, announced: int
    ) -> OverLimit | None:
        window = self._window(rule, quota, caller)
        cost = 1 if quota.unit == "requests" else announced
        if window.used + cost > quota.limit or (
            cost == 0 and window.used >= quota.limit
        ):
            ends = (window.index + 1) * quota.window - self._wall()
            return OverLimit(
                max(1, math.ceil(ends)),
                f"rule {rule!r} allows {quota.limit} {quota.unit} per "
                f"{_duration(quota.window)} per {quota.key.describe()}; {caller} "
                f"has used {window.used}",
            )
        if quota.unit == "requests":
            window.used += 1
        return None

    def _window(self, rule: str, quota: Quota, caller: str) -> _Window:
        index = int(self._wall() // quota.window)
        window = _recent(self._windows, (rule, caller))
        if window is None or window.index != index:
            window = _Window(index)
            _remember(self._windows, (rule, caller), window)
        return window


def _caller(key: CallerKey, identity: Identity | None, source: str) -> str:
    if key.kind == "source" or identity is None:
        return f"source {source}"
    if key.kind == "subject":
        return f"subject {identity.subject!r} of {identity.issuer}"
    value = identity.claims.get(key.claim)
    return f"claim {key.claim}={json.dumps(value, sort_keys=True, default=str)}"


def _recent[V](
    entries: OrderedDict[tuple[str, str], V], key: tuple[str, str]
) -> V | None:
    value = entries.get(key)
    if value is not None:
        entries.move_to_end(key)
    return value


def _remember[V](
    entries: OrderedDict[tuple[str, str], V], key: tuple[str, str], value: V
) -> None:
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > MAX_CALLERS:
        entries.popitem(last=False)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
