"""``sandbox bridge``: relay TCP and vsock, the network of a Nitro enclave.

``sandbox bridge vsock:any:8443=tcp:127.0.0.1:8443`` accepts on the left
endpoint and connects each connection to the right one. Order of start:
bring ``lo`` up (``--loopback-up``), bind every listener, drop to ``--user``,
then accept until SIGTERM or SIGINT (exit 0). A bad pair, a listener that
cannot bind or a privilege that is missing exits 2, saying which.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from sandbox.bridge.endpoints import BridgePair, parse_pair
from sandbox.bridge.relay import Relay, RelayOptions
from sandbox.cli import arguments
from sandbox.loopback import bring_up
from sandbox.users import UserIds, switch_to

log = logging.getLogger("sandbox.bridge")
_pair = arguments.argument_type(parse_pair)

EXIT_STOPPED = 0
EXIT_REFUSED = 2


class _BridgeError(Exception):
    """A reason not to start, printed on one line; exits 2."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bridge = commands.add_parser(
        "bridge",
        help="relay TCP and vsock connections (AWS Nitro Enclaves)",
        description="Accept on LISTEN and relay each connection to CONNECT. "
        "Endpoints: tcp:HOST:PORT (IPv6 in brackets), vsock:CID:PORT (CID 'any' "
        "when listening). Example: vsock:any:8443=tcp:127.0.0.1:8443.",
    )
    bridge.add_argument(
        "pairs",
        metavar="PAIR",
        nargs="+",
        type=arguments.argument_type(parse_pair),
        help="LISTEN=CONNECT",
    )
    bridge.add_argument(
        "--loopback-up",
        action="store_true",
        help="bring the lo interface up first (it starts down in an enclave)",
    )
    bridge.add_argument(
        "--user",
        type=arguments.user,
        metavar="UID:GID",
        help="switch to this user once listening (needs root)",
    )
    bridge.add_argument(
        "--max-connections",
        type=arguments.count,
        default=256,
        metavar="N",
        help="per pair; more are closed at once (default 256)",
    )
    bridge.add_argument(
        "--connect-timeout",
        type=arguments.duration,
        default=5.0,
        metavar="DURATION",
        help="for each connection to CONNECT (default 5s)",
    )
    bridge.set_defaults(handler=bridge_command)


def bridge_command(args: argparse.Namespace) -> int:
    """Relay until signalled; 2 with one line on stderr when it cannot start."""
    try:
        _check_start(args.user, args.loopback_up)
        options = RelayOptions(args.max_connections, args.connect_timeout)
        return asyncio.run(_bridge(args.pairs, options, args.user))
    except _BridgeError as exc:
        print(f"sandbox bridge: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _check_start(user: UserIds | None, loopback_up: bool) -> None:
    if user is not None and os.geteuid() != 0:
        raise _BridgeError(
            f"--user {user} expects to start as root, started as uid {os.geteuid()}"
        )
    if not loopback_up:
        return
    try:
        if bring_up("lo"):
            log.info("brought the lo interface up")
    except OSError as exc:
        raise _BridgeError(f"--loopback-up: {exc}") from exc


async def _bridge(
    pairs: list[BridgePair], options: RelayOptions, user: UserIds | None
) -> int:
    relays = [Relay(pair, options) for pair in pairs]
    try:
        await _bind_all(relays)
        if user is not None:
            _become(user)
        for relay in relays:
            await relay.serve()
        await _until_signalled()
    finally:
        await asyncio.gather(*(relay.stop() for relay in relays))
    log.info("bridge stopped")
    return EXIT_STOPPED


async def _bind_all(relays: list[Relay]) -> None:
    for relay in relays:
        try:
            await relay.bind()
        except OSError as exc:
            raise _BridgeError(
                f"cannot listen on {relay.pair.listen}: {exc.strerror or exc}"
            ) from exc


def _become(user: UserIds) -> None:
    try:
        switch_to(user)
    except OSError as exc:
        raise _BridgeError(f"--user {user}: {exc}") from exc
    log.info("now running as uid %d gid %d", user.uid, user.gid)


async def _until_signalled() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopping: no new connections, open ones get a short grace")
