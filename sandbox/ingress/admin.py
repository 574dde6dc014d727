"""The operator's listener: liveness, readiness, metrics, audit head."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from sandbox.audit.log import AuditLog
from sandbox.metrics import Metrics

ReadinessProbe = Callable[[], Awaitable[str | None]]


def admin_app(
    metrics: Metrics, audit: AuditLog, probe_app: ReadinessProbe
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        problem = "audit log is failing" if not audit.healthy else await probe_app()
        if problem:
            return web.json_response(
                {"status": "not ready", "reason": problem}, status=503
            )
        return web.json_response({"status": "ready"})

    async def metrics_page(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def audit_head(_: web.Request) -> web.Response:
        seq, digest = audit.head
        return web.json_response({"seq": seq, "sha256": digest})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/audit/head", audit_head)
    return app
