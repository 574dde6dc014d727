"""The app's own network namespace: only ``lo``, and what the sandbox puts there.

Landlock's rules are ports, not addresses: on a machine with a network (an
SEV-SNP guest, any host) a confined app could still reach the egress port of
every address it can route to. In a namespace of its own the app can route
nowhere. The sandbox keeps a handle on the namespace and makes the few
sockets that cross into it: the egress proxy's listener at 127.0.0.1:PORT,
the connections ingress opens to the app, and the relays of
``--app-connect-port``.

A socket stays in the namespace of the thread that created it. The
sandbox's own thread steps into the app's namespace for the one system call
that creates a socket and straight back out, with no await in between, so
nothing else of the sandbox ever runs there.

Making and entering a namespace needs CAP_SYS_ADMIN, which in practice means
the sandbox runs as root (as it must anyway to run the app as another user).
"""

from __future__ import annotations

import os
import socket
import threading

from sandbox.errors import ConfinementError
from sandbox.loopback import bring_up

_THIS_THREAD = "/proc/thread-self/ns/net"


class AppNetwork:
    """A network namespace holding only loopback, kept open by its descriptor."""

    def __init__(self, namespace: int, home: int) -> None:
        self._namespace = namespace
        self._home = home

    @classmethod
    def create(cls) -> AppNetwork:
        """A new namespace with ``lo`` up; blocking, so call it from a thread.

        Sockets are later made from threads in the caller's namespace, which
        is where each one returns. Raises ConfinementError saying why not.
        """
        home = os.open(_THIS_THREAD, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls(_new_namespace(), home)
        except BaseException:
            os.close(home)
            raise

    @property
    def fd(self) -> int:
        """For the launcher, which moves the app here before it drops root."""
        return self._namespace

    def open_socket(
        self,
        family: int = socket.AF_INET,
        kind: int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """A socket in the app's namespace, made without leaving this thread there."""
        os.setns(self._namespace, os.CLONE_NEWNET)
        try:
            return socket.socket(family, kind, proto)
        finally:
            # Failing here would leave the sandbox's thread inside the app's
            # namespace; the error propagates and the sandbox stops.
            os.setns(self._home, os.CLONE_NEWNET)

    def listener(self, host: str, port: int) -> socket.socket:
        """A non-blocking TCP listener on ``host:port`` inside the namespace."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self.open_socket(family)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """The namespace lives on while the app or a socket is still in it."""
        for fd in (self._namespace, self._home):
            os.close(fd)


def _new_namespace() -> int:
    """Unshare in a thread of its own: only that thread moves, and it ends."""
    made: list[int] = []
    failed: list[BaseException] = []

    def make() -> None:
        try:
            try:
                os.unshare(os.CLONE_NEWNET)
            except PermissionError as exc:
                raise PermissionError(
                    "expected CAP_SYS_ADMIN (run the sandbox as root, with "
                    f"--app-user for the app), got {exc.strerror}"
                ) from exc
            made.append(os.open(_THIS_THREAD, os.O_RDONLY | os.O_CLOEXEC))
            bring_up("lo")
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=make, name="sandbox-app-netns")
    thread.start()
    thread.join()
    if not failed:
        return made[0]
    for fd in made:
        os.close(fd)
    if not isinstance(failed[0], OSError):
        raise failed[0]
    raise ConfinementError(
        f"cannot give the app a network namespace of its own: {failed[0]}"
    ) from failed[0]
