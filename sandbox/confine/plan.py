"""What confinement the runner asks of the launcher, and whether it can have it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from sandbox.confine import landlock, seccomp
from sandbox.errors import ConfinementError
from sandbox.users import UserIds

MODES = ("required", "auto", "off")


@dataclass(frozen=True, slots=True)
class ConfinePlan:
    connect_ports: frozenset[int]
    bind_ports: frozenset[int]
    user: UserIds | None = None


def unsupported_reason() -> str | None:
    """Why this kernel cannot confine the app, or None when it can."""
    if seccomp.native_architecture() is None:
        return "seccomp filters are built for x86_64 and aarch64 only"
    abi = landlock.abi_version()
    if abi < landlock.NET_ABI:
        found = f"ABI {abi}" if abi else "no Landlock"
        return (
            f"Landlock network rules need Linux 6.7 or newer with Landlock "
            f"enabled (ABI {landlock.NET_ABI}); this kernel has {found}"
        )
    return None


def launcher_command(plan: ConfinePlan, command: Sequence[str]) -> list[str]:
    """The command that runs ``command`` confined by ``plan``."""
    launcher = [sys.executable, "-m", "sandbox.confine"]
    for port in sorted(plan.connect_ports):
        launcher += ["--connect-port", str(port)]
    for port in sorted(plan.bind_ports):
        launcher += ["--bind-port", str(port)]
    if plan.user is not None:
        launcher += ["--user", str(plan.user)]
    return [*launcher, "--", *command]


@dataclass(frozen=True, slots=True)
class ConfineOptions:
    """What the operator asked: ``mode`` is one of MODES."""

    mode: str = "auto"
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


def plan_for(
    options: ConfineOptions, egress_port: int, app_port: int | None
) -> ConfinePlan:
    bind = set(options.extra_bind_ports)
    if app_port is not None:
        bind.add(app_port)
    return ConfinePlan(
        connect_ports=frozenset({egress_port, *options.extra_connect_ports}),
        bind_ports=frozenset(bind),
        user=options.user,
    )
