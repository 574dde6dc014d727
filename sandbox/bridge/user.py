"""Dropping root once the listeners are bound.

The bridge starts as root to bring ``lo`` up and to bind ports below 1024,
then relays as an unprivileged user: a bug in the copy loop then holds no
more power than that user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    uid: int
    gid: int


def parse_user(text: str) -> User:
    """``UID:GID``, both numbers (the enclave image has no user database)."""
    uid, sep, gid = text.partition(":")
    if not sep or not uid.isdigit() or not gid.isdigit():
        raise ValueError(f"expected UID:GID as numbers, e.g. 65534:65534, got {text!r}")
    return User(int(uid), int(gid))


def drop_to(user: User) -> None:
    """Become ``user`` for good: no supplementary groups, no way back."""
    if os.geteuid() != 0:
        raise PermissionError(
            f"cannot switch to {user.uid}:{user.gid}: expected to run as root, "
            f"running as uid {os.geteuid()}"
        )
    # Groups first: once the uid is dropped, changing them is refused.
    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
