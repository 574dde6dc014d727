"""``python -m sandbox.confine [OPTIONS] -- COMMAND...``: confine, then exec.

Exit status 126 (the shell's "cannot execute") when a step fails: the
command is never run less confined than asked.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from collections.abc import Sequence

from sandbox.cli import arguments
from sandbox.confine import landlock, seccomp
from sandbox.confine.plan import ConfinePlan
from sandbox.users import switch_to

CANNOT_CONFINE = 126
_PR_SET_PDEATHSIG = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.confine",
        description="Run COMMAND confined: only the listed TCP ports, only "
        "unix, netlink-route and TCP sockets, no signals to the outside.",
    )
    parser.add_argument(
        "--connect-port",
        type=arguments.port,
        action="append",
        default=[],
        metavar="PORT",
    )
    parser.add_argument(
        "--bind-port", type=arguments.port, action="append", default=[], metavar="PORT"
    )
    parser.add_argument("--user", type=arguments.user, metavar="UID:GID")
    parser.add_argument(
        "--netns-fd",
        type=int,
        metavar="FD",
        help="enter the network namespace this inherited descriptor names",
    )
    parser.add_argument(
        "--without-landlock",
        action="store_true",
        help="skip Landlock (a kernel without its network rules); only with "
        "--netns-fd, whose namespace then bounds the app's TCP",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("sandbox confine: no command to run", file=sys.stderr)
        return 2
    if args.without_landlock and args.netns_fd is None:
        print(
            "sandbox confine: --without-landlock needs --netns-fd: without "
            "either, nothing would bound the app's TCP connects",
            file=sys.stderr,
        )
        return 2
    plan = ConfinePlan(
        connect_ports=frozenset(args.connect_port),
        bind_ports=frozenset(args.bind_port),
        user=args.user,
        netns_fd=args.netns_fd,
        landlock=not args.without_landlock,
    )
    try:
        confine(plan)
    except OSError as exc:
        print(f"sandbox confine: {exc}; {command[0]!r} not started", file=sys.stderr)
        return CANNOT_CONFINE
    try:
        # The operator's own command, as `sandbox run -- COMMAND` was given it.
        os.execvp(command[0], command)  # noqa: S606
    except OSError as exc:
        print(f"sandbox confine: cannot execute {command[0]!r}: {exc}", file=sys.stderr)
        return CANNOT_CONFINE


def confine(plan: ConfinePlan) -> None:
    """Apply ``plan`` to this process, all of it or raise OSError."""
    arch = seccomp.native_architecture()
    if arch is None:
        raise OSError("seccomp filters are built for x86_64 and aarch64 only")
    parent = os.getppid()
    # Entering a namespace needs the privileges the user change gives up.
    if plan.netns_fd is not None:
        _enter_network(plan.netns_fd)
    if plan.user is not None:
        switch_to(plan.user)
    # After the user change, which clears it: the app must not outlive the
    # sandbox that mediates its traffic. The signal follows the thread that
    # forked us, the sandbox's event-loop thread, which lives as long as it.
    _die_with_parent(parent)
    seccomp.set_no_new_privs()
    if plan.landlock:
        rules = landlock.NetworkRules(plan.connect_ports, plan.bind_ports)
        landlock.restrict_self(rules, landlock.abi_version())
    seccomp.install(seccomp.socket_filter(arch))


def _enter_network(fd: int) -> None:
    try:
        os.setns(fd, os.CLONE_NEWNET)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot enter the app's network namespace: {exc.strerror}"
        ) from exc
    finally:
        os.close(fd)


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL)) != 0:
        raise OSError(ctypes.get_errno(), "cannot set the parent-death signal")
    if os.getppid() != parent:
        raise OSError("the sandbox exited while the app was being started")
