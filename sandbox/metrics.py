"""Prometheus metrics of one sandbox process, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sandbox_requests",
            "Requests decided, by direction, decision, rule and status.",
            ["direction", "decision", "rule", "status"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "sandbox_decision_seconds",
            "Time to authenticate and decide one request.",
            ["direction"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "sandbox_upstream_seconds",
            "Time from forwarding a request to the app's response headers.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audit_failures = Counter(
            "sandbox_audit_failures",
            "Decisions refused because the audit log could not be written.",
            registry=self.registry,
        )
        self.egress_bytes = Counter(
            "sandbox_egress_bytes",
            "Bytes through the egress proxy, by rule and way (out: app to world).",
            ["rule", "way"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
