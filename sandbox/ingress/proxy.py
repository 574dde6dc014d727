"""The ingress adapter: aiohttp requests in, policy decisions, the app behind.

Per request: normalise the target, authenticate the bearer token, decide,
write the audit record, and only then release a response, either the
sandbox's own refusal or the app's answer, streamed both ways.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from sandbox import logfields as f
from sandbox.audit.chain import utc_timestamp
from sandbox.audit.log import AuditLog
from sandbox.engines import DecisionEngine
from sandbox.engines.yaml_engine import YamlEngine
from sandbox.errors import AuditError, AuthenticationError, RequestPathError
from sandbox.identity.verifier import TokenVerifier
from sandbox.ingress.body import CountingBody
from sandbox.ingress.headers import (
    REQUEST_ID_HEADER,
    end_to_end,
    upstream_request_headers,
)
from sandbox.ingress.limits import CallerLimits
from sandbox.ingress.refusals import refusal_response
from sandbox.ingress.wellknown import PREFIX as WELL_KNOWN_PREFIX
from sandbox.ingress.wellknown import WellKnown
from sandbox.metrics import Metrics
from sandbox.policy.decision import Decision
from sandbox.policy.inputs import Identity, IngressRequest
from sandbox.policy.model import Policy
from sandbox.policy.normalize import RequestTarget, normalize_target

decision_log = logging.getLogger("sandbox.decision")
log = logging.getLogger(__name__)

_NO_RULE = "-"
# The rule named in audit records of the sandbox's own well-known documents.
WELL_KNOWN_RULE = "well-known"


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A response the sandbox gives itself instead of the app's."""

    status: int
    reason: str
    bearer_error: str | None = None
    retry_after: int | None = None


@dataclass
class _Exchange:
    """What one request has gathered on its way through the proxy."""

    request_id: str
    method: str
    source: str
    started: float
    path: str = ""
    identity: Identity | None = None
    rule: str = _NO_RULE
    reason: str = ""
    # Set in report mode: the refusal that enforce mode would have sent.
    would_refuse: int | None = None
    body: CountingBody | None = field(default=None, repr=False)


class IngressProxy:
    def __init__(
        self,
        policy: Policy,
        verifier: TokenVerifier,
        audit: AuditLog,
        session: aiohttp.ClientSession,
        upstream: URL,
        metrics: Metrics,
        scheme: str = "http",
        engine: DecisionEngine | None = None,
        well_known: WellKnown | None = None,
    ) -> None:
        self.policy = policy
        self.well_known = well_known
        self.engine = engine or YamlEngine(policy)
        self.verifier = verifier
        self.audit = audit
        self.session = session
        self.upstream = upstream
        self.metrics = metrics
        self.scheme = scheme
        self.report_only = policy.mode == "report"
        self.limits = CallerLimits(policy.ingress.rules)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        exchange = _Exchange(
            request_id=uuid.uuid4().hex,
            method=request.method,
            source=request.remote or "",
            started=time.perf_counter(),
        )
        try:
            target = normalize_target(request.raw_path)
        except RequestPathError as exc:
            exchange.path = request.raw_path[:256]
            return await self._refuse(exchange, _Refusal(400, str(exc)))
        exchange.path = target.path
        if not self.audit.healthy:
            # Refuse before the app sees anything; recording this refusal is
            # also the write that tells us when the log works again.
            reason = "the audit log cannot be written, so no request is served"
            return await self._refuse(exchange, _Refusal(503, reason))
        if self.well_known is not None and target.path.startswith(WELL_KNOWN_PREFIX):
            return await self._answer_well_known(exchange, target)
        refused = await self._authenticate_and_decide(request, exchange, target)
        if refused is None:
            refused = await self._oversized_body_refusal(exchange)
        if refused is not None:
            return await self._refuse(exchange, refused)
        return await self._forward(request, exchange, target)

    async def _answer_well_known(
        self, exchange: _Exchange, target: RequestTarget
    ) -> web.Response:
        """The sandbox's own documents, before any rule: every client needs them."""
        assert self.well_known is not None
        answer = await self.well_known.answer(
            exchange.method, target.path, target.query
        )
        exchange.rule, exchange.reason = WELL_KNOWN_RULE, answer.reason
        if answer.response is None:
            refusal = _Refusal(
                answer.status, answer.reason, retry_after=answer.retry_after
            )
            return await self._refuse(exchange, refusal)
        if not await self._record(exchange, answer.status, allowed=True):
            return self._audit_unavailable(exchange)
        answer.response.headers[REQUEST_ID_HEADER] = exchange.request_id
        return answer.response

    async def _authenticate_and_decide(
        self, request: web.BaseRequest, exchange: _Exchange, target: RequestTarget
    ) -> _Refusal | None:
        """The refusal to send, or None when the request may go to the app."""
        decided = time.perf_counter()
        try:
            exchange.identity = self._authenticate(request)
        except AuthenticationError as exc:
            self._observe_decision(decided)
            return self._policy_refusal(exchange, _Refusal(401, exc.reason, exc.code))
        asked = IngressRequest(
            exchange.method,
            exchange.path,
            exchange.identity,
            exchange.source,
            query=target.query,
            # Copied into an input document only by engines that need one.
            headers=request.headers,
            body_length=request.content_length,
        )
        decision = await self.engine.decide_ingress(asked)
        self._observe_decision(decided)
        exchange.rule, exchange.reason = decision.rule, decision.reason
        if decision.unavailable:
            log.error("decision engine failed: %s", decision.reason)
            # Even in report mode: a decision nobody could make allows nothing.
            return _Refusal(503, decision.reason)
        if not decision.allow:
            status = 401 if decision.needs_identity else 403
            refusal = _Refusal(status, decision.reason, "invalid_request")
            return self._policy_refusal(exchange, refusal)
        over = self.limits.admit(
            decision.rule, exchange.identity, exchange.source, request.content_length
        )
        if over is not None:
            refusal = _Refusal(429, over.reason, retry_after=over.retry_after)
            return self._policy_refusal(exchange, refusal)
        return self._body_limit_refusal(request, exchange, decision)

    def _authenticate(self, request: web.BaseRequest) -> Identity | None:
        values = request.headers.getall("Authorization", [])
        if len(values) > 1:
            raise AuthenticationError(
                "more than one Authorization header", "invalid_request"
            )
        return self.verifier.authenticate(values[0] if values else None)

    def _observe_decision(self, started: float) -> None:
        self.metrics.decision_seconds.labels(f.DIRECTION_INGRESS).observe(
            time.perf_counter() - started
        )

    def _body_limit_refusal(
        self, request: web.BaseRequest, exchange: _Exchange, decision: Decision
    ) -> _Refusal | None:
        limit = decision.max_body
        # Report mode never cuts a body short; it records announced sizes only.
        enforced_limit = None if self.report_only else limit
        exchange.body = (
            CountingBody(request.content, enforced_limit)
            if request.body_exists
            else None
        )
        length = request.content_length
        if limit is not None and length is not None and length > limit:
            reason = (
                f"body of {length} bytes exceeds the {limit} bytes rule "
                f"{decision.rule!r} allows"
            )
            return self._policy_refusal(exchange, _Refusal(413, reason))
        return None

    async def _oversized_body_refusal(self, exchange: _Exchange) -> _Refusal | None:
        body = exchange.body
        if body is None or exchange.would_refuse is not None:
            return None
        await body.prebuffer()
        if not body.exceeded:
            return None
        reason = f"body exceeds the {body.limit} bytes rule {exchange.rule!r} allows"
        return self._policy_refusal(exchange, _Refusal(413, reason))

    def _policy_refusal(
        self, exchange: _Exchange, refusal: _Refusal
    ) -> _Refusal | None:
        """In report mode, remember the refusal and let the request through."""
        exchange.reason = refusal.reason
        if not self.report_only:
            return refusal
        exchange.would_refuse = refusal.status
        exchange.reason = (
            f"report mode, would refuse with {refusal.status}: {refusal.reason}"
        )
        return None

    async def _refuse(
        self, exchange: _Exchange, refusal: _Refusal, *, allowed: bool = False
    ) -> web.Response:
        """Answer for the app; ``allowed`` when the policy had let it through."""
        exchange.reason = refusal.reason
        if not await self._record(exchange, refusal.status, allowed=allowed):
            return self._audit_unavailable(exchange)
        response = refusal_response(
            refusal.status,
            refusal.reason,
            exchange.request_id,
            bearer_error=refusal.bearer_error,
        )
        if refusal.retry_after is not None:
            response.headers["Retry-After"] = str(refusal.retry_after)
        return response

    async def _forward(
        self, request: web.BaseRequest, exchange: _Exchange, target: RequestTarget
    ) -> web.StreamResponse:
        headers = upstream_request_headers(
            request.headers,
            peer=exchange.source,
            scheme=self.scheme,
            request_id=exchange.request_id,
            identity=exchange.identity,
            rule=exchange.rule,
            forward_token=self.policy.identity.forward_token,
        )
        sent = time.perf_counter()
        try:
            upstream = await self.session.request(
                request.method,
                # Exactly the normalised form that was decided on.
                URL(f"{self.upstream}{target.target}", encoded=True),
                headers=headers,
                data=exchange.body,
                allow_redirects=False,
            )
        except Exception as exc:
            return await self._upstream_failed(exchange, exc)
        self.metrics.upstream_seconds.observe(time.perf_counter() - sent)
        try:
            return await self._relay(request, exchange, upstream)
        finally:
            upstream.release()

    async def _upstream_failed(
        self, exchange: _Exchange, exc: Exception
    ) -> web.Response:
        if exchange.body is not None and exchange.body.exceeded:
            limit = exchange.body.limit
            reason = f"body exceeds the {limit} bytes rule {exchange.rule!r} allows"
            return await self._refuse(exchange, _Refusal(413, reason))
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            reason = f"{exchange.reason}; the app did not answer in time"
            return await self._refuse(exchange, _Refusal(504, reason), allowed=True)
        log.warning("upstream request %s failed: %r", exchange.request_id, exc)
        reason = f"{exchange.reason}; the app is unreachable ({type(exc).__name__})"
        return await self._refuse(exchange, _Refusal(502, reason), allowed=True)

    async def _relay(
        self,
        request: web.BaseRequest,
        exchange: _Exchange,
        upstream: aiohttp.ClientResponse,
    ) -> web.StreamResponse:
        if not await self._record(exchange, upstream.status, allowed=True):
            return self._audit_unavailable(exchange)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.update(end_to_end(upstream.headers))
        response.headers[REQUEST_ID_HEADER] = exchange.request_id
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientError) as exc:
            # The status is already on its way; all we can do is stop.
            log.info("stream %s ended early: %r", exchange.request_id, exc)
        return response

    async def _record(self, exchange: _Exchange, status: int, *, allowed: bool) -> bool:
        """Audit, count and log one decision. False when the audit log failed."""
        enforced = exchange.would_refuse is None
        decision = f.ALLOW if allowed and enforced else f.DENY
        latency_ms = round((time.perf_counter() - exchange.started) * 1000, 3)
        record = self._audit_fields(exchange, decision, enforced, status, latency_ms)
        if allowed and exchange.body is not None:
            self.limits.charge(
                exchange.rule, exchange.identity, exchange.source, exchange.body.count
            )
        try:
            await self.audit.append(record)
        except AuditError as exc:
            self.metrics.audit_failures.inc()
            log.error("audit log unwritable, refusing %s: %s", exchange.request_id, exc)
            return False
        self.metrics.requests.labels(
            f.DIRECTION_INGRESS, decision, exchange.rule, str(status)
        ).inc()
        decision_log.info(
            "decision request_id=%s direction=%s method=%s path=%s decision=%s "
            "enforced=%s rule=%s status=%s latency_ms=%s reason=%r",
            exchange.request_id,
            f.DIRECTION_INGRESS,
            exchange.method,
            exchange.path,
            decision,
            enforced,
            exchange.rule,
            status,
            latency_ms,
            exchange.reason,
            extra={"sandbox": record},
        )
        return True

    def _audit_fields(
        self,
        exchange: _Exchange,
        decision: str,
        enforced: bool,
        status: int,
        latency_ms: float,
    ) -> dict[str, Any]:
        identity = exchange.identity
        return {
            f.EVENT: f.EVENT_DECISION,
            f.TIME: utc_timestamp(),
            f.REQUEST_ID: exchange.request_id,
            f.DIRECTION: f.DIRECTION_INGRESS,
            f.SOURCE: exchange.source,
            f.ISSUER: identity.issuer if identity else None,
            f.SUBJECT: identity.subject if identity else None,
            f.METHOD: exchange.method,
            f.PATH: exchange.path,
            f.DECISION: decision,
            f.ENFORCED: enforced,
            f.RULE: exchange.rule,
            f.REASON: exchange.reason,
            f.STATUS: status,
            f.LATENCY_MS: latency_ms,
            f.BYTES_IN: exchange.body.count if exchange.body else 0,
        }

    def _audit_unavailable(self, exchange: _Exchange) -> web.Response:
        reason = "the audit log cannot be written, so no request is served"
        return refusal_response(503, reason, exchange.request_id)
