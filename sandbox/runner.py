"""``sandbox run``: one event loop serving ingress, egress and admin, beside
the app.

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
from typing import Any

from aiohttp import web

from sandbox.attestation.provider import make_provider
from sandbox.audit.log import AuditLog
from sandbox.bridge.endpoints import BridgePair, TcpEndpoint
from sandbox.bridge.relay import Relay, RelayOptions
from sandbox.confine.netns import AppNetwork
from sandbox.confine.plan import (
    ConfineOptions,
    ConfinePlan,
    check_boundary,
    check_supported,
    launcher_command,
    plan_for,
    shared_network_reason,
)
from sandbox.egress.proxy import EgressConfig, EgressProxy
from sandbox.engines import DecisionEngine, build_engine
from sandbox.errors import ConfinementError
from sandbox.identity.verifier import TokenVerifier
from sandbox.ingress.admin import ReadinessProbe, admin_app
from sandbox.ingress.proxy import IngressProxy
from sandbox.ingress.tls import ChannelKey, ephemeral_channel_key
from sandbox.ingress.upstream import UpstreamTimeouts, open_session, parse_upstream
from sandbox.ingress.wellknown import WellKnown
from sandbox.metrics import Metrics
from sandbox.netaddr import format_url
from sandbox.policy.model import Policy
from sandbox.policy.served import read_bundle

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
    # None: no egress proxy (the app's outbound traffic is not mediated).
    egress: EgressConfig | None = None
    # Rego directions: None evaluates them embedded, else this OPA server.
    opa_url: str | None = None
    opa_timeout: float = 1.0
    # An attestation provider name: serves TLS with a key made at start and
    # the /.well-known/sandbox/ documents; None serves plain HTTP.
    attestation: str | None = None
    attestation_options: dict[str, Any] = field(default_factory=dict)
    confinement: ConfineOptions = field(default_factory=ConfineOptions)


class Sandbox:
    """Ingress and admin listeners with everything they share, started once."""

    def __init__(self, policy: Policy, options: RunOptions) -> None:
        self.policy = policy
        self.options = options
        self.audit_path = Path(options.audit_path or policy.audit.path)
        self.metrics = Metrics()
        self.ingress_urls: list[str] = []
        self.admin_urls: list[str] = []
        self.egress: EgressProxy | None = None
        self.engine: DecisionEngine = build_engine(
            policy, opa_url=options.opa_url, opa_timeout=options.opa_timeout
        )
        self._runners: list[web.BaseRunner] = []
        self._app_port: int | None = None
        self._unconfined_reason: str | None = None
        self._network: AppNetwork | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        base_url, socket_path = parse_upstream(self.options.upstream)
        self._app_port = None if socket_path else base_url.port
        # Settled before anything listens: a required confinement that this
        # machine cannot give stops the start here.
        network = self._network = await self._settle_confinement(
            None if socket_path else base_url.host
        )
        audit = await AuditLog.open(
            self.audit_path, policy_hash=self.policy.hash, fsync=self.policy.audit.fsync
        )
        self.audit = audit
        self._closers.append(audit.close)
        session = open_session(
            socket_path,
            self.options.timeouts,
            make_socket=network.open_socket if network else None,
        )
        self._closers.insert(0, session.close)
        verifier = TokenVerifier(self.policy.identity)
        await self.engine.start()
        self._closers.insert(0, self.engine.close)
        # Bound to the measurement before anything is served.
        channel, well_known = await self._start_attestation()
        proxy = IngressProxy(
            self.policy,
            verifier,
            audit,
            session,
            base_url,
            self.metrics,
            scheme="https" if channel else "http",
            engine=self.engine,
            well_known=well_known,
        )
        ingress = web.ServerRunner(
            web.Server(
                proxy.handle,
                max_field_size=MAX_HEADER_FIELD,
                # The decision line is the one line per request; no access log.
                access_log=None,
            ),
            shutdown_timeout=self.options.drain_seconds,
        )
        probe = app_probe(base_url.host, base_url.port, socket_path, network)
        admin = web.AppRunner(admin_app(self.metrics, audit, probe))
        await self._start_egress(audit)
        if network is not None:
            await self._connect_app_network(network)
        self.ingress_urls = await self._listen(
            ingress, self.options.listen, "ingress", channel
        )
        self.admin_urls = await self._listen(admin, self.options.admin_listen, "admin")
        log.info(
            "policy %s %s (%s mode), audit log %s",
            self.policy.name,
            self.policy.hash,
            self.policy.mode,
            self.audit_path,
        )

    async def _settle_confinement(self, upstream_host: str | None) -> AppNetwork | None:
        """The app's own network, if it gets one; records why the app would
        run unconfined, or raises ConfinementError where that is refused."""
        options = self.options.confinement
        self._unconfined_reason = check_supported(
            options, self.options.egress is not None
        )
        network = await self._app_network(upstream_host)
        if self._unconfined_reason is None and self.options.app_command:
            self._unconfined_reason = check_boundary(
                options, isolated=network is not None
            )
        return network

    async def _app_network(self, upstream_host: str | None) -> AppNetwork | None:
        """The app's own network namespace; None where it shares the sandbox's
        (logged why). Raises ConfinementError when isolation is required."""
        options = self.options.confinement
        if not self.options.app_command or self._unconfined_reason is not None:
            return None
        reason = shared_network_reason(options, upstream_host)
        if reason is None:
            try:
                network = await asyncio.to_thread(AppNetwork.create)
            except ConfinementError as exc:
                if options.network == "isolated":
                    raise ConfinementError(
                        f"{exc}; pass --app-network shared to let the app share "
                        "the sandbox's network"
                    ) from exc
                reason = str(exc)
            else:
                self._closers.append(_closing(network))
                return network
        level = logging.INFO if options.network == "shared" else logging.WARNING
        log.log(
            level,
            "the app shares the sandbox's network (%s): its TCP connects are "
            "limited by port, to any address it can route to",
            reason,
        )
        return None

    async def _connect_app_network(self, network: AppNetwork) -> None:
        """Put in the app's namespace what it may reach: the egress proxy, and
        a relay to the sandbox's loopback for each --app-connect-port."""
        assert self.egress is not None  # the app is confined only with egress
        await self.egress.listen_in(network)
        for port in sorted(self.options.confinement.extra_connect_ports):
            loopback = TcpEndpoint("127.0.0.1", port)
            relay = Relay(
                BridgePair(loopback, loopback),
                RelayOptions(),
                listener=network.listener("127.0.0.1", port),
            )
            await relay.bind()
            self._closers.insert(0, relay.stop)
            await relay.serve()

    async def _start_attestation(self) -> tuple[ChannelKey | None, WellKnown | None]:
        if self.options.attestation is None:
            return None, None
        provider = make_provider(
            self.options.attestation, **self.options.attestation_options
        )
        await provider.start(self.policy.hash)
        channel = await asyncio.to_thread(ephemeral_channel_key)
        bundle = await asyncio.to_thread(read_bundle, self.policy)
        root = (
            getattr(provider, "root_pem", None)
            if provider.name == "simulated"
            else None
        )
        log.info(
            "attestation: %s provider bound to %s; TLS key sha256:%s",
            provider.name,
            self.policy.hash,
            channel.public_key_sha256,
        )
        return channel, WellKnown(provider, channel, bundle, root)

    async def _start_egress(self, audit: AuditLog) -> None:
        if self.options.egress is None:
            return
        egress = EgressProxy(
            self.policy, self.options.egress, audit, self.metrics, self.engine
        )
        # Stopped before the audit log closes: its last records go there.
        self._closers.insert(0, egress.stop)
        await egress.start()
        self.egress = egress

    def confine_plan(self) -> ConfinePlan | None:
        """How to confine the app; None when it runs unconfined (logged why)."""
        if self._unconfined_reason is not None or self.egress is None:
            level = logging.INFO if self._off() else logging.WARNING
            log.log(level, "the app runs unconfined: %s", self._unconfined_reason)
            return None
        confinement = self.options.confinement
        if confinement.user is not None and self.egress.files is not None:
            # Traverse only: the app's user may read the trust bundle it is
            # pointed at, not list the directory or read the 0600 CA key.
            os.chmod(self.egress.files.directory, 0o711)  # noqa: S103
        network = self._network.fd if self._network else None
        plan = plan_for(confinement, self.egress.port, self._app_port, network)
        if not plan.landlock:
            log.info(
                "this kernel has no Landlock network rules: the app's own "
                "network namespace and seccomp are its boundary"
            )
        return plan

    def _off(self) -> bool:
        return self.options.confinement.mode == "off"

    def app_environment(self) -> dict[str, str]:
        """The environment for the app: ours, plus the egress proxy settings."""
        env = dict(os.environ)
        if self.egress is not None:
            env.update(self.egress.app_environment())
        return env

    async def _listen(
        self,
        runner: web.BaseRunner,
        address: tuple[str, int],
        name: str,
        channel: ChannelKey | None = None,
    ) -> list[str]:
        await runner.setup()
        self._runners.append(runner)
        context = channel.context if channel else None
        site = web.TCPSite(
            runner, address[0], address[1], reuse_address=True, ssl_context=context
        )
        await site.start()
        scheme = "https" if channel else "http"
        urls = [format_url(scheme, bound[0], bound[1]) for bound in runner.addresses]
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
            app = await _start_app(
                options.app_command, sandbox.app_environment(), sandbox.confine_plan()
            )
        return await _wait_for_stop(app)
    finally:
        # Drain first: in-flight requests still need the app.
        await sandbox.drain()
        if app is not None:
            await _stop_app(app, options.app_stop_seconds)
        await sandbox.stop()


async def _start_app(
    command: Sequence[str], env: dict[str, str], plan: ConfinePlan | None
) -> asyncio.subprocess.Process:
    launched = list(command) if plan is None else launcher_command(plan, command)
    inherited = () if plan is None or plan.netns_fd is None else (plan.netns_fd,)
    app = await asyncio.create_subprocess_exec(*launched, env=env, pass_fds=inherited)
    log.info("started app (pid %s): %s", app.pid, " ".join(command))
    if plan is not None:
        log.info(
            "app confined: TCP connect to ports %s, bind to ports %s%s, user %s, "
            "network %s",
            _ports(plan.connect_ports),
            _ports(plan.bind_ports),
            "" if plan.landlock else " (no Landlock: not enforced by port)",
            plan.user or "unchanged",
            "of its own (loopback only)" if inherited else "shared",
        )
    return app


def _closing(network: AppNetwork) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        network.close()

    return close


def _ports(ports: frozenset[int]) -> str:
    return ", ".join(str(port) for port in sorted(ports)) or "none"


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
    host: str | None,
    port: int | None,
    socket_path: str | None,
    network: AppNetwork | None = None,
) -> ReadinessProbe:
    """Readiness: does the app accept connections right now?"""

    async def connect() -> None:
        if socket_path is not None:
            _, writer = await asyncio.open_unix_connection(socket_path)
        elif network is not None:
            writer = await _connect_in(network, host, port)
        else:
            _, writer = await asyncio.open_connection(
                host, port, family=socket.AF_UNSPEC
            )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def probe() -> str | None:
        try:
            await asyncio.wait_for(connect(), 1.0)
        except (OSError, TimeoutError) as exc:
            return f"the app does not accept connections: {exc}"
        return None

    return probe


async def _connect_in(
    network: AppNetwork, host: str | None, port: int | None
) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    family, kind, proto, _, address = (
        await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    )[0]
    sock = network.open_socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    _, writer = await asyncio.open_connection(sock=sock)
    return writer
