"""``sandbox run``: one event loop serving ingress and admin, beside the app.

Stops on SIGTERM or SIGINT by draining in-flight requests (exit 0), and when
the app it started dies (exit non-zero: the app's status, or 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from sandbox.audit.log import AuditLog
from sandbox.identity.verifier import TokenVerifier
from sandbox.ingress.admin import ReadinessProbe, admin_app
from sandbox.ingress.proxy import IngressProxy
from sandbox.ingress.upstream import UpstreamTimeouts, open_session, parse_upstream
from sandbox.metrics import Metrics
from sandbox.netaddr import format_url
from sandbox.policy.model import Policy

log = logging.getLogger("sandbox.run")

# Large enough for real tokens and cookies, small enough to bound memory.
MAX_HEADER_FIELD = 16 * 1024


@dataclass
class RunOptions:
    upstream: str
    listen: tuple[str, int] = ("127.0.0.1", 8000)
    admin_listen: tuple[str, int] = ("127.0.0.1", 9901)
    app_command: Sequence[str] = ()
    timeouts: UpstreamTimeouts = field(default_factory=UpstreamTimeouts)
    drain_seconds: float = 15.0
    app_stop_seconds: float = 10.0
    audit_path: str | None = None


class Sandbox:
    """Ingress and admin listeners with everything they share, started once."""

    def __init__(self, policy: Policy, options: RunOptions) -> None:
        self.policy = policy
        self.options = options
        self.audit_path = Path(options.audit_path or policy.audit.path)
        self.metrics = Metrics()
        self.ingress_urls: list[str] = []
        self.admin_urls: list[str] = []
        self._runners: list[web.BaseRunner] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        base_url, socket_path = parse_upstream(self.options.upstream)
        audit = await AuditLog.open(
            self.audit_path, policy_hash=self.policy.hash, fsync=self.policy.audit.fsync
        )
        self.audit = audit
        self._closers.append(audit.close)
        session = open_session(socket_path, self.options.timeouts)
        self._closers.insert(0, session.close)
        verifier = TokenVerifier(self.policy.identity)
        proxy = IngressProxy(
            self.policy, verifier, audit, session, base_url, self.metrics
        )
        ingress = web.ServerRunner(
            web.Server(proxy.handle, max_field_size=MAX_HEADER_FIELD),
            shutdown_timeout=self.options.drain_seconds,
        )
        probe = app_probe(base_url.host, base_url.port, socket_path)
        admin = web.AppRunner(admin_app(self.metrics, audit, probe))
        self.ingress_urls = await self._listen(ingress, self.options.listen, "ingress")
        self.admin_urls = await self._listen(admin, self.options.admin_listen, "admin")
        log.info(
            "policy %s %s (%s mode), audit log %s",
            self.policy.name,
            self.policy.hash,
            self.policy.mode,
            self.audit_path,
        )

    async def _listen(
        self, runner: web.BaseRunner, address: tuple[str, int], name: str
    ) -> list[str]:
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, address[0], address[1], reuse_address=True).start()
        urls = [format_url("http", bound[0], bound[1]) for bound in runner.addresses]
        for url in urls:
            log.info("%s listening on %s", name, url)
        return urls

    async def drain(self) -> None:
        """Stop accepting; wait for in-flight requests (up to drain_seconds)."""
        if self._runners:
            # The ingress runner is started first, so it is the first entry.
            await self._runners.pop(0).cleanup()

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for close in self._closers:
            await close()
        self._closers.clear()


async def run(policy: Policy, options: RunOptions) -> int:
    sandbox = Sandbox(policy, options)
    app: asyncio.subprocess.Process | None = None
    try:
        await sandbox.start()
        if options.app_command:
            app = await _start_app(options.app_command)
        return await _wait_for_stop(app)
    finally:
        # Drain first: in-flight requests still need the app.
        await sandbox.drain()
        if app is not None:
            await _stop_app(app, options.app_stop_seconds)
        await sandbox.stop()


async def _start_app(command: Sequence[str]) -> asyncio.subprocess.Process:
    app = await asyncio.create_subprocess_exec(*command, env=dict(os.environ))
    log.info("started app (pid %s): %s", app.pid, " ".join(command))
    return app


async def _wait_for_stop(app: asyncio.subprocess.Process | None) -> int:
    """0 after SIGTERM or SIGINT; non-zero when the app died first."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    waiters: set[asyncio.Task[object]] = {asyncio.create_task(stopping.wait())}
    if app is not None:
        waiters.add(asyncio.create_task(app.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if app is not None and app.returncode is not None and not stopping.is_set():
        log.error("the app exited with status %s; stopping the sandbox", app.returncode)
        return app.returncode if app.returncode > 0 else 1
    log.info("stopping: draining in-flight requests")
    return 0


async def _stop_app(app: asyncio.subprocess.Process, grace: float) -> None:
    if app.returncode is not None:
        return
    app.terminate()
    try:
        await asyncio.wait_for(app.wait(), grace)
    except TimeoutError:
        log.warning("the app ignored SIGTERM for %ss; killing it", grace)
        app.kill()
        await app.wait()


def app_probe(
    host: str | None, port: int | None, socket_path: str | None
) -> ReadinessProbe:
    """Readiness: does the app accept connections right now?"""

    async def probe() -> str | None:
        try:
            if socket_path is not None:
                connecting = asyncio.open_unix_connection(socket_path)
            else:
                connecting = asyncio.open_connection(
                    host, port, family=socket.AF_UNSPEC
                )
            _, writer = await asyncio.wait_for(connecting, 1.0)
        except (OSError, TimeoutError) as exc:
            return f"the app does not accept connections: {exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    return probe
