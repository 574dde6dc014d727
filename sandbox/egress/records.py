"""What one egress exchange gathers, and how it is audited, counted and logged.

Two records per allowed exchange: the decision, written before anything
leaves for the outside (if it cannot be written, nothing leaves), and an
``egress_end`` record with the bytes that went each way once the exchange
or tunnel is over. A refusal has its decision record only.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sandbox import logfields as f
from sandbox.audit.chain import utc_timestamp
from sandbox.audit.log import AuditLog
from sandbox.errors import AuditError
from sandbox.metrics import Metrics
from sandbox.policy.addresses import IPAddress
from sandbox.policy.model import EgressRule

decision_log = logging.getLogger("sandbox.decision")
log = logging.getLogger(__name__)

NO_RULE = "-"


@dataclass
class Exchange:
    """One CONNECT tunnel or one HTTP request of the app, start to end."""

    source: str
    host: str
    port: int
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    scheme: str | None = None
    method: str | None = None
    path: str | None = None
    address: IPAddress | None = None
    # How the address is found: declared, resolved or literal (see the gate).
    address_source: str | None = None
    allowed: bool = False
    rule: str = NO_RULE
    reason: str = ""
    status: int | None = None
    # The allowing rule, for its body limit and byte budget.
    limits: EgressRule | None = None
    # An allowed tunnel whose requests must be seen (TLS intercepted).
    intercept: bool = False
    bytes_out: int = 0
    bytes_in: int = 0
    # Why the sandbox cut the exchange short, if it did.
    cut: str | None = None
    ended: bool = False

    @property
    def destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Recorder:
    def __init__(self, audit: AuditLog, metrics: Metrics) -> None:
        self.audit = audit
        self.metrics = metrics

    async def decision(self, exchange: Exchange) -> bool:
        """Audit, count and log a decision. False when the audit log failed."""
        latency_ms = round((time.perf_counter() - exchange.started) * 1000, 3)
        decision = f.ALLOW if exchange.allowed else f.DENY
        record = _decision_fields(exchange, decision, latency_ms)
        if not await self._append(record, exchange):
            return False
        status = str(exchange.status) if exchange.status is not None else NO_RULE
        self.metrics.requests.labels(
            f.DIRECTION_EGRESS, decision, exchange.rule, status
        ).inc()
        decision_log.info(
            "decision request_id=%s direction=%s host=%s port=%s address=%s "
            "address_source=%s method=%s path=%s decision=%s rule=%s status=%s "
            "latency_ms=%s reason=%r",
            exchange.request_id,
            f.DIRECTION_EGRESS,
            exchange.host,
            exchange.port,
            exchange.address,
            exchange.address_source,
            exchange.method,
            exchange.path,
            decision,
            exchange.rule,
            status,
            latency_ms,
            exchange.reason,
            extra={"sandbox": record},
        )
        return True

    async def end(self, exchange: Exchange) -> None:
        """Record the bytes of a finished exchange, once."""
        if exchange.ended or not exchange.allowed:
            return
        exchange.ended = True
        self.metrics.egress_bytes.labels(exchange.rule, "out").inc(exchange.bytes_out)
        self.metrics.egress_bytes.labels(exchange.rule, "in").inc(exchange.bytes_in)
        await self._append(_end_fields(exchange), exchange)

    async def _append(self, record: dict[str, Any], exchange: Exchange) -> bool:
        try:
            await self.audit.append(record)
        except AuditError as exc:
            self.metrics.audit_failures.inc()
            log.error("audit log unwritable, egress %s: %s", exchange.request_id, exc)
            return False
        return True

    def observe_decision(self, started: float) -> None:
        self.metrics.decision_seconds.labels(f.DIRECTION_EGRESS).observe(
            time.perf_counter() - started
        )


def _decision_fields(
    exchange: Exchange, decision: str, latency_ms: float
) -> dict[str, Any]:
    return {
        f.EVENT: f.EVENT_DECISION,
        f.TIME: utc_timestamp(),
        f.REQUEST_ID: exchange.request_id,
        f.DIRECTION: f.DIRECTION_EGRESS,
        f.SOURCE: exchange.source,
        f.HOST: exchange.host,
        f.PORT: exchange.port,
        f.ADDRESS: str(exchange.address) if exchange.address else None,
        f.ADDRESS_SOURCE: exchange.address_source,
        f.SCHEME: exchange.scheme,
        f.METHOD: exchange.method,
        f.PATH: exchange.path,
        f.DECISION: decision,
        # Egress has no report mode: what is refused never leaves.
        f.ENFORCED: True,
        f.RULE: exchange.rule,
        f.REASON: exchange.reason,
        f.STATUS: exchange.status,
        f.LATENCY_MS: latency_ms,
        f.BYTES_OUT: exchange.bytes_out,
        f.BYTES_IN: exchange.bytes_in,
    }


def _end_fields(exchange: Exchange) -> dict[str, Any]:
    duration_ms = round((time.perf_counter() - exchange.started) * 1000, 3)
    return {
        f.EVENT: f.EVENT_EGRESS_END,
        f.TIME: utc_timestamp(),
        f.REQUEST_ID: exchange.request_id,
        f.DIRECTION: f.DIRECTION_EGRESS,
        f.HOST: exchange.host,
        f.PORT: exchange.port,
        f.ADDRESS: str(exchange.address) if exchange.address else None,
        f.RULE: exchange.rule,
        f.STATUS: exchange.status,
        f.BYTES_OUT: exchange.bytes_out,
        f.BYTES_IN: exchange.bytes_in,
        f.DURATION_MS: duration_ms,
        f.CUT: exchange.cut,
    }
