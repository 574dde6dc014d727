"""The egress proxy: mitmproxy in this process, on this event loop.

Only the addons egress needs are loaded: ours (first, so it decides before
mitmproxy's own layer choice), the proxy server, layer selection and TLS.
``Master.run`` is not used: it would install its own task factory and
exception handler on the whole loop, which the ingress side shares. The
servers are brought up and down directly instead.

mitmproxy keeps its master in module globals, so one process holds at most
one egress proxy at a time.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

from mitmproxy import options

with warnings.catch_warnings():
    # Importing any addon imports them all, proxyauth among them, whose ldap3
    # uses names pyasn1 deprecates. We load no proxyauth; silence only this.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.addons import next_layer, proxyserver, tlsconfig
    from mitmproxy.master import Master

from sandbox.audit.log import AuditLog
from sandbox.confine.netns import AppNetwork
from sandbox.egress.addon import EgressAddon
from sandbox.egress.budget import ByteBudgets
from sandbox.egress.declared import normalised_hosts
from sandbox.egress.gate import EgressGate
from sandbox.egress.records import Recorder
from sandbox.egress.resolver import Resolver, SystemResolver
from sandbox.egress.state import (
    DEFAULT_SYSTEM_ROOTS,
    EgressFiles,
    prepare_state,
    publish_app_bundle,
)
from sandbox.engines.base import DecisionEngine
from sandbox.metrics import Metrics
from sandbox.netaddr import format_url
from sandbox.policy.addresses import IPAddress
from sandbox.policy.input_document import EGRESS
from sandbox.policy.model import Policy

log = logging.getLogger("sandbox.egress")

DEFAULT_LISTEN = ("127.0.0.1", 3128)


@dataclass
class EgressConfig:
    listen: tuple[str, int] = DEFAULT_LISTEN
    # Private directory for the CA; a fresh temporary one when None.
    state_dir: str | None = None
    # Roots origins are verified against, and the app is told to trust.
    system_ca_file: str = DEFAULT_SYSTEM_ROOTS
    # One more CA to trust for origins (a private PKI, or tests).
    upstream_ca_file: str | None = None
    # Where to publish the app's trust bundle too, for an app that runs
    # elsewhere (its own container); None: only in the state directory.
    app_bundle_copy: str | None = None
    resolver: Resolver | None = None
    # Name -> address to connect to without looking the name up (a bridge
    # where there is no DNS); see sandbox.egress.declared.
    hosts: Mapping[str, IPAddress] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Canonical names, so "Models.Example.COM." is the name rules see.
        self.hosts = normalised_hosts(self.hosts)


class EgressProxy:
    def __init__(
        self,
        policy: Policy,
        config: EgressConfig,
        audit: AuditLog,
        metrics: Metrics,
        engine: DecisionEngine | None = None,
    ) -> None:
        """``engine`` decides egress where the policy's Rego does (started
        by the caller); elsewhere the policy's YAML rules decide."""
        self.config = config
        rego = policy.rego is not None and EGRESS in policy.rego.decides
        if rego and engine is None:
            raise ValueError(
                f"policy {policy.name!r} decides egress with Rego, so the egress "
                "proxy needs its decision engine; none was given"
            )
        self.gate = EgressGate(
            policy.egress,
            config.resolver or SystemResolver(),
            Recorder(audit, metrics),
            ByteBudgets(),
            engine=engine if rego else None,
            hosts=config.hosts,
        )
        self.files: EgressFiles | None = None
        self.url = ""
        # The port the proxy listens on, once started: the app's only way out.
        self.port = 0
        # Where the app is pointed: ``url``, or its listener in the app's own
        # network namespace.
        self.app_url = ""
        self._app_listeners: list[asyncio.Server] = []
        self._master: Master | None = None

    async def start(self) -> None:
        config = self.config
        self.files = await asyncio.to_thread(
            prepare_state,
            config.state_dir,
            config.system_ca_file,
            config.upstream_ca_file,
        )
        if config.app_bundle_copy is not None:
            await asyncio.to_thread(
                publish_app_bundle, self.files, config.app_bundle_copy
            )
        loop = asyncio.get_running_loop()
        # Adding the TLS addon reads the CA from disk: off the loop.
        self._master = await asyncio.to_thread(self._build_master, loop, self.files)
        server = self._proxyserver()
        if not await server.setup_servers() or not server.listen_addrs():
            host, port = config.listen
            raise OSError(f"egress proxy cannot listen on {format_url('', host, port)}")
        bound = server.listen_addrs()[0]
        self.port = int(bound[1])
        self.url = self.app_url = format_url("http", str(bound[0]), self.port)
        log.info("egress listening on %s, CA %s", self.url, self.files.ca_cert)

    async def listen_in(self, network: AppNetwork) -> None:
        """Also take the app's connections inside its own network namespace,
        on 127.0.0.1 and the egress port, and point the app there."""
        assert self.port, "start() first"
        sock = network.listener("127.0.0.1", self.port)
        # The proxy server's own connection handler: a connection accepted
        # here is handled exactly as one accepted on its listener.
        (instance,) = self._proxyserver().servers
        try:
            listener = await asyncio.start_server(instance.handle_stream, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._app_listeners.append(listener)
        self.app_url = format_url("http", "127.0.0.1", self.port)
        log.info("egress listening on %s in the app's network", self.app_url)

    async def stop(self) -> None:
        for listener in self._app_listeners:
            listener.close()
        self._app_listeners.clear()
        master, self._master = self._master, None
        if master is not None:
            server = master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
            await server.servers.update([])
            await _close_connections(server)
            await master.done()
        files, self.files = self.files, None
        if files is not None and files.temporary:
            await asyncio.to_thread(shutil.rmtree, files.directory, True)

    def app_environment(self) -> dict[str, str]:
        """What the app is given so all its traffic goes through egress."""
        if self.files is None or not self.app_url:
            return {}
        bundle = str(self.files.app_bundle)
        env = {}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = self.app_url
        # Nothing bypasses the proxy, loopback included.
        env["NO_PROXY"] = env["no_proxy"] = ""
        for name in (
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
        ):
            env[name] = bundle
        return env

    def _build_master(
        self, loop: asyncio.AbstractEventLoop, files: EgressFiles
    ) -> Master:
        host, port = self.config.listen
        opts = options.Options(
            listen_host=host,
            listen_port=port,
            mode=["regular"],
            confdir=str(files.directory),
        )
        master = Master(opts, event_loop=loop)
        tls = tlsconfig.TlsConfig()
        master.addons.add(  # type: ignore[no-untyped-call]
            EgressAddon(self.gate),
            proxyserver.Proxyserver(),  # type: ignore[no-untyped-call]
            next_layer.NextLayer(),
            tls,
        )
        opts.update(  # type: ignore[no-untyped-call]
            connection_strategy="lazy",
            ssl_insecure=False,
            ssl_verify_upstream_trusted_ca=str(files.upstream_roots),
            http2=False,
            http3=False,
            rawtcp=False,
            websocket=True,
        )
        # mitmproxy loads its CA when it starts running, which we never ask it
        # to do (see the module docstring): load ours now.
        tls.configure({"confdir"})  # type: ignore[no-untyped-call]
        return master

    def _proxyserver(self) -> proxyserver.Proxyserver:
        assert self._master is not None
        server = self._master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
        assert isinstance(server, proxyserver.Proxyserver)
        return server


async def _close_connections(server: proxyserver.Proxyserver) -> None:
    """End the app's open tunnels and requests: egress is going away."""
    handlers = list(server.connections.values())
    for handler in handlers:
        for io in list(handler.transports.values()):
            if io.handler is not None:
                io.handler.cancel("egress proxy stopping")
    tasks = [
        io.handler
        for handler in handlers
        for io in handler.transports.values()
        if io.handler is not None
    ]
    if tasks:
        await asyncio.wait(tasks, timeout=5)
