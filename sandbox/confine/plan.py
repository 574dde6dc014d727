"""What confinement the runner asks of the launcher, and whether it can have it.

The app is confined when the seccomp filter applies and at least one of two
boundaries holds its TCP: Landlock's network rules (its connects limited to
the egress port, Linux 6.7+) or a network namespace of its own (nothing to
connect to but what the sandbox put there). Both apply wherever they can;
either alone keeps the app behind the egress proxy on a machine whose only
route is loopback, and only the namespace does on a machine with a network.
AWS's own Nitro enclave kernels have no Landlock: there the namespace and
the seccomp filter are the boundary.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from sandbox.confine import landlock, seccomp
from sandbox.errors import ConfinementError
from sandbox.users import UserIds

MODES = ("required", "auto", "off")
NETWORK_MODES = ("isolated", "auto", "shared")


@dataclass(frozen=True, slots=True)
class ConfinePlan:
    connect_ports: frozenset[int]
    bind_ports: frozenset[int]
    user: UserIds | None = None
    # A descriptor of the app's own network namespace (sandbox.confine.netns),
    # which the launcher enters first; None: the app shares the sandbox's.
    netns_fd: int | None = None
    # False only where the kernel has no Landlock network rules and the app's
    # own network namespace is its boundary instead.
    landlock: bool = True


def unsupported_reason() -> str | None:
    """Why this machine cannot confine the app at all, or None when it can."""
    if seccomp.native_architecture() is None:
        return "seccomp filters are built for x86_64 and aarch64 only"
    return None


def landlock_reason() -> str | None:
    """Why Landlock cannot limit the app's TCP ports here, or None when it can."""
    abi = landlock.abi_version()
    if abi >= landlock.NET_ABI:
        return None
    found = f"ABI {abi}" if abi else "no Landlock"
    return (
        f"Landlock network rules need Linux 6.7 or newer with Landlock "
        f"enabled (ABI {landlock.NET_ABI}); this kernel has {found}"
    )


def launcher_command(plan: ConfinePlan, command: Sequence[str]) -> list[str]:
    """The command that runs ``command`` confined by ``plan``."""
    launcher = [sys.executable, "-m", "sandbox.confine"]
    for port in sorted(plan.connect_ports):
        launcher += ["--connect-port", str(port)]
    for port in sorted(plan.bind_ports):
        launcher += ["--bind-port", str(port)]
    if plan.user is not None:
        launcher += ["--user", str(plan.user)]
    if plan.netns_fd is not None:
        launcher += ["--netns-fd", str(plan.netns_fd)]
    if not plan.landlock:
        launcher.append("--without-landlock")
    return [*launcher, "--", *command]


@dataclass(frozen=True, slots=True)
class ConfineOptions:
    """What the operator asked: ``mode`` is one of MODES, ``network`` one of
    NETWORK_MODES."""

    mode: str = "auto"
    network: str = "auto"
    user: UserIds | None = None
    extra_connect_ports: frozenset[int] = frozenset()
    extra_bind_ports: frozenset[int] = frozenset()


def check_supported(options: ConfineOptions, has_egress: bool) -> str | None:
    """None when the plan can be honoured, else why the app would run unconfined.

    Raises ConfinementError when confinement is required and impossible.
    """
    reason: str | None
    if options.mode == "off":
        reason = "confinement is off (--confine-app off)"
    elif not has_egress:
        reason = "there is no egress proxy to confine the app to (--no-egress)"
    else:
        reason = unsupported_reason()
    _refused_if_required(options, reason)
    if reason is not None and options.network == "isolated":
        raise ConfinementError(
            f"--app-network isolated is applied by the confinement, but {reason}"
        )
    return reason


def check_boundary(options: ConfineOptions, isolated: bool) -> str | None:
    """None when the app's TCP has a boundary (Landlock, or its own network);
    else why it would run unconfined. Raises ConfinementError where
    confinement is required."""
    missing = landlock_reason()
    if missing is None or isolated:
        return None
    return _refused_if_required(
        options, f"{missing}, and the app has no network namespace of its own"
    )


def _refused_if_required(options: ConfineOptions, reason: str | None) -> str | None:
    if reason is not None and options.mode == "required":
        raise ConfinementError(
            f"the app must be confined (--confine-app required) but {reason}; "
            "pass --confine-app auto to run it unconfined"
        )
    if reason is not None and options.user is not None:
        raise ConfinementError(
            f"--app-user {options.user} is applied by the confinement, but {reason}"
        )
    return reason


def shared_network_reason(
    options: ConfineOptions, upstream_host: str | None
) -> str | None:
    """Why the confined app cannot have a network of its own, or None when it
    may (whether this process can make one is known only by trying).

    ``upstream_host`` is None for a unix-socket upstream, reachable from any
    namespace. Raises ConfinementError when isolation is required.
    """
    reason: str | None = None
    if options.network == "shared":
        reason = "--app-network shared"
    elif upstream_host is not None and not _is_loopback(upstream_host):
        reason = (
            f"--upstream names {upstream_host!r}, but in a namespace of its own "
            "the app is reached on loopback only"
        )
    if reason is not None and options.network == "isolated":
        raise ConfinementError(
            f"the app must have a network of its own (--app-network isolated), "
            f"but {reason}; expected --upstream http://127.0.0.1:PORT or "
            "unix:/PATH"
        )
    return reason


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plan_for(
    options: ConfineOptions,
    egress_port: int,
    app_port: int | None,
    netns_fd: int | None = None,
) -> ConfinePlan:
    """Everything the kernel offers: Landlock wherever it has network rules."""
    bind = set(options.extra_bind_ports)
    if app_port is not None:
        bind.add(app_port)
    return ConfinePlan(
        connect_ports=frozenset({egress_port, *options.extra_connect_ports}),
        bind_ports=frozenset(bind),
        user=options.user,
        netns_fd=netns_fd,
        landlock=landlock_reason() is None,
    )
