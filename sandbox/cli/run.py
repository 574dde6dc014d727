"""``sandbox run``: serve the policy in front of the app (and start the app)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from sandbox.attestation.provider import PROVIDER_NAMES
from sandbox.cli import arguments
from sandbox.confine.plan import MODES, NETWORK_MODES, ConfineOptions
from sandbox.egress.declared import declared_hosts, parse_declared_host
from sandbox.egress.proxy import EgressConfig
from sandbox.engines.base import EngineStartError
from sandbox.errors import (
    AttestationError,
    AuditError,
    ConfinementError,
    PolicyError,
)
from sandbox.ingress.upstream import UpstreamTimeouts, parse_upstream
from sandbox.netaddr import parse_host_port
from sandbox.policy.loader import load_policy
from sandbox.runner import RunOptions, run

# Where the enclave is real, the app must not have another way out.
HARDWARE_PROVIDERS = ("nitro", "sev-snp")
_address = arguments.argument_type(parse_host_port)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="enforce a policy in front of an app",
        description="Serve the policy in front of the app at --upstream. With "
        "'-- APP COMMAND...', start the app too, and stop when it stops.",
    )
    parser.add_argument("--policy", required=True, help="policy file or folder")
    parser.add_argument(
        "--upstream", required=True, help="the app: http://HOST:PORT or unix:/PATH"
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8000", type=_address, help="default %(default)s"
    )
    parser.add_argument(
        "--admin-listen",
        default="127.0.0.1:9901",
        type=_address,
        help="healthz, readyz, metrics (default %(default)s)",
    )
    parser.add_argument("--audit-log", help="audit log path (overrides audit.path)")
    parser.add_argument(
        "--upstream-timeout",
        default="30s",
        type=arguments.duration,
        help="504 when the app is slower than this to answer (default %(default)s)",
    )
    parser.add_argument(
        "--drain-timeout",
        default="15s",
        type=arguments.duration,
        help="on SIGTERM, wait this long for in-flight requests (default %(default)s)",
    )
    _register_egress(parser)
    _register_opa(parser)
    _register_attestation(parser)
    _register_confinement(parser)
    parser.add_argument(
        "app_command", nargs=argparse.REMAINDER, help="-- APP COMMAND..."
    )
    parser.set_defaults(handler=run_command)


def _register_egress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--egress-listen",
        default="127.0.0.1:3128",
        type=_address,
        help="egress proxy the app is pointed at (default %(default)s)",
    )
    parser.add_argument(
        "--no-egress",
        action="store_true",
        help="run without the egress proxy: the app's outbound traffic is "
        "then neither checked nor audited",
    )
    parser.add_argument(
        "--state-dir",
        help="private directory for the egress CA (default: a fresh temporary "
        "directory, removed on exit)",
    )
    parser.add_argument(
        "--egress-upstream-ca",
        metavar="PEM",
        help="also trust this CA for origins, beside the system roots (a "
        "private PKI; origins are never left unverified)",
    )
    parser.add_argument(
        "--egress-app-bundle",
        metavar="PATH",
        help="also write the trust bundle the app is told to use (system "
        "roots and the egress CA) here, for an app that runs elsewhere, such "
        "as its own container",
    )
    parser.add_argument(
        "--egress-host",
        action=_DeclareHost,
        dest="egress_hosts",
        metavar="NAME=IP",
        type=arguments.argument_type(parse_declared_host),
        help="the egress proxy connects to IP for NAME without resolving it, "
        "still deciding by NAME and verifying TLS for NAME; IP is not refused "
        "as a private address; meant for bridged destinations such as a "
        "Nitro enclave's vsock bridges on loopback (repeatable)",
    )


def _register_attestation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attestation",
        choices=PROVIDER_NAMES,
        help="bind the policy hash into this provider's measurement, serve "
        "ingress over TLS with a key made at start, and answer "
        "/.well-known/sandbox/attestation and /policy (simulated: development "
        "only; clients must opt in to trust it)",
    )


def _register_confinement(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--confine-app",
        choices=MODES,
        help="confine the started app so the egress proxy is its only way out "
        "(Landlock and seccomp: TCP connect only to the egress port, bind only "
        "to the app's port, no UDP, vsock or raw sockets, no signals to the "
        "sandbox); required: refuse to start where the kernel cannot; auto: "
        "warn and run unconfined there. Default: required with nitro or "
        "sev-snp attestation, else auto",
    )
    parser.add_argument(
        "--app-network",
        choices=NETWORK_MODES,
        help="isolated: the confined app gets a network namespace of its own, "
        "holding only loopback, where the sandbox puts the egress proxy's "
        "listener and reaches the app's port (needs root); shared: the app "
        "uses the sandbox's network, limited by port only; auto: isolated "
        "where possible. Default: isolated with nitro or sev-snp attestation, "
        "else auto",
    )
    parser.add_argument(
        "--app-user",
        type=arguments.user,
        metavar="UID:GID",
        help="run the app as this user and group (the sandbox must be root), "
        "so it cannot read or change the sandbox's files",
    )
    parser.add_argument(
        "--app-connect-port",
        type=arguments.port,
        action="append",
        default=[],
        metavar="PORT",
        help="also let the confined app make TCP connections to this port "
        "(any address; with a network of its own, 127.0.0.1:PORT there is "
        "relayed to the sandbox's 127.0.0.1:PORT; repeatable)",
    )
    parser.add_argument(
        "--app-bind-port",
        type=arguments.port,
        action="append",
        default=[],
        metavar="PORT",
        help="also let the confined app listen on this TCP port (repeatable)",
    )


def _confinement(args: argparse.Namespace) -> ConfineOptions:
    hardware = args.attestation in HARDWARE_PROVIDERS
    return ConfineOptions(
        mode=args.confine_app or ("required" if hardware else "auto"),
        network=args.app_network or ("isolated" if hardware else "auto"),
        user=args.app_user,
        extra_connect_ports=frozenset(args.app_connect_port),
        extra_bind_ports=frozenset(args.app_bind_port),
    )


def _register_opa(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--opa-url",
        help="decide the policy's Rego directions with this OPA server "
        "(http://HOST:PORT), which is given the bundle's modules and data at "
        "start; default: the embedded engine",
    )
    parser.add_argument(
        "--opa-timeout",
        default="1s",
        type=arguments.duration,
        help="refuse with 503 when OPA is slower than this (default %(default)s)",
    )


def _egress_config(args: argparse.Namespace) -> EgressConfig | None:
    if args.no_egress:
        return None
    return EgressConfig(
        listen=args.egress_listen,
        state_dir=args.state_dir,
        upstream_ca_file=args.egress_upstream_ca,
        app_bundle_copy=args.egress_app_bundle,
        hosts=args.egress_hosts or {},
    )


class _DeclareHost(argparse.Action):
    """Gathers --egress-host into one mapping; a name given twice is an error
    here, where argparse still exits 2 with the message."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        hosts = dict(getattr(namespace, self.dest, None) or {})
        try:
            hosts = declared_hosts([*hosts.items(), values])
        except ValueError as exc:
            parser.error(f"argument {option_string}: {exc}")
        setattr(namespace, self.dest, hosts)


def _refuse_a_root_app(args: argparse.Namespace, command: list[str]) -> None:
    """Where the enclave is real, the app must not start as root: no
    confinement holds a process that may load kernel modules."""
    hardware = args.attestation in HARDWARE_PROVIDERS
    if command and hardware and args.app_user is None and os.geteuid() == 0:
        raise ValueError(
            "the sandbox runs as root, so the app would too, and a root app "
            "can undo its confinement (load a kernel module, rewrite the "
            "audit log); expected --app-user UID:GID"
        )


def run_command(args: argparse.Namespace) -> int:
    command = list(args.app_command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        parse_upstream(args.upstream)
        _refuse_a_root_app(args, command)
        policy = load_policy(args.policy)
    except (PolicyError, ValueError) as exc:
        print(f"sandbox run: {exc}", file=sys.stderr)
        return 2
    options = RunOptions(
        upstream=args.upstream,
        listen=args.listen,
        admin_listen=args.admin_listen,
        app_command=command,
        timeouts=UpstreamTimeouts(response=args.upstream_timeout),
        drain_seconds=args.drain_timeout,
        audit_path=args.audit_log,
        egress=_egress_config(args),
        opa_url=args.opa_url,
        opa_timeout=args.opa_timeout,
        attestation=args.attestation,
        confinement=_confinement(args),
    )
    try:
        return asyncio.run(run(policy, options))
    except AuditError as exc:
        print(f"sandbox run: {exc}", file=sys.stderr)
        return 2
    except (EngineStartError, AttestationError, ConfinementError) as exc:
        print(f"sandbox run: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sandbox run: cannot serve: {exc}", file=sys.stderr)
        return 2
